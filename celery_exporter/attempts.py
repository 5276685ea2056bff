"""Attempt bookkeeping: what each event tells about a task's current attempt (or the one
before a retry), and the runtime and wait observations an event completes.

A retry keeps the task id and publishes a new attempt (task-sent/-received with a higher
`retries`); what the old attempt still misses (its task-started can arrive late) is kept as
the record's `previous` attempt, so its waits are observed once, against its own times.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from celery_exporter import catalogue
from celery_exporter.events import TaskEvent
from celery_exporter.lifecycle import Found
from celery_exporter.store.tasks import Observation
from celery_exporter.tasks import Attempt, TaskRecord

QUEUE_WAIT_BIT, PREFETCH_WAIT_BIT = 1, 2
BOTH_WAITS = QUEUE_WAIT_BIT | PREFETCH_WAIT_BIT  # nothing left to observe
NONE: Sequence[Observation] = ()


def learn(record: TaskRecord, event: TaskEvent) -> Optional[Found]:
    """Take what this event tells about the task into its record; return what it found out
    about the event itself (None: nothing), for the lifecycle to classify it by."""
    etype, ts = event.type, event.timestamp
    found = None
    if etype == "task-sent" or etype == "task-received":
        if event.retries > record.attempt:  # a retry: same uuid, new attempt
            record.attempt = event.retries
            record.previous = Attempt(
                record.sent_ts, record.received_ts, record.eta_ts, record.waits_observed, record.started_ts
            )
            record.sent_ts = record.received_ts = record.started_ts = record.eta_ts = None
            record.waits_observed = 0
        if event.eta is not None:
            record.eta_ts = event.eta
        if etype == "task-sent":
            record.sent_ts = ts
            if record.name is None:
                record.name = event.name
            if record.queue is None:
                record.queue = event.queue
        else:
            if record.received_ts is not None and event.retries == record.attempt:
                # Received again for the same attempt: a new attempt under the same retries,
                # with its own start and prefetch wait; the queue wait (publish -> first
                # start) is observed once, whichever start. Under the same task name it is
                # the broker redelivering the message; under another, Task.replace(), which
                # publishes the replacement under the replaced task's id.
                if event.name == record.name:
                    found = Found.REDELIVERY
                record.started_ts = None
                record.waits_observed &= QUEUE_WAIT_BIT
            record.received_ts = ts
            record.worker = event.hostname
            if record.labels is None:
                record.name = event.name  # the worker's view wins (shadow names)
    elif etype == "task-started":
        previous = record.previous
        if previous is not None and _late_start_of_previous_attempt(record, previous, ts):
            previous.started_ts = ts
            found = Found.PREVIOUS_ATTEMPT
        else:
            record.started_ts = ts
        if record.worker is None:
            record.worker = event.hostname
    return found


def _late_start_of_previous_attempt(record: TaskRecord, previous: Attempt, ts: float) -> bool:
    """A task-started older than the current attempt's task-sent or task-received
    belongs to the attempt before the retry: the worker's pool child publishes the
    retry (task-sent) while the old task-started can still sit in the main process's
    event buffer. Both timestamps come from the worker's host, so they compare."""
    if previous.started_ts is not None or record.started_ts is not None:
        return False
    return (record.sent_ts is not None and ts < record.sent_ts) or (
        record.received_ts is not None and ts < record.received_ts
    )


def observations(record: TaskRecord, event: TaskEvent) -> Sequence[Observation]:
    """The histogram observations this event completes: the runtime of a success, and
    each attempt's queue and prefetch waits once its start is known."""
    etype = event.type
    if etype == "task-sent":  # with the hostname label, task-sent has none: keep waits per worker
        return NONE
    out: List[Observation] = []
    if etype == "task-succeeded":
        runtime = event.runtime
        if runtime is None and record.started_ts is not None:
            runtime = event.timestamp - record.started_ts  # 5.7 can send runtime=None
        if runtime is not None:
            out.append((catalogue.RUNTIME, max(runtime, 0.0)))
    previous = record.previous
    if previous is not None and previous.started_ts is not None and previous.waits_observed != BOTH_WAITS:
        previous.waits_observed = _observe_waits(
            out,
            previous.started_ts,
            previous.sent_ts,
            previous.received_ts,
            previous.eta_ts,
            previous.waits_observed,
        )
    if record.started_ts is not None and record.waits_observed != BOTH_WAITS:
        record.waits_observed = _observe_waits(
            out, record.started_ts, record.sent_ts, record.received_ts, record.eta_ts, record.waits_observed
        )
    return out


def _observe_waits(
    out: List[Observation],
    started: float,
    sent: Optional[float],
    received: Optional[float],
    eta: Optional[float],
    observed: int,
) -> int:
    """Queue wait (publish -> start) and prefetch wait (receipt -> start) of one attempt,
    each at most once, less any ETA; returns the updated observed bits."""
    not_before = eta if eta is not None else -math.inf
    if sent is not None and not observed & QUEUE_WAIT_BIT:
        observed |= QUEUE_WAIT_BIT
        out.append((catalogue.QUEUE_WAIT, max(started - max(sent, not_before), 0.0)))
    if received is not None and not observed & PREFETCH_WAIT_BIT:
        observed |= PREFETCH_WAIT_BIT
        out.append((catalogue.PREFETCH_WAIT, max(started - max(received, not_before), 0.0)))
    return observed
