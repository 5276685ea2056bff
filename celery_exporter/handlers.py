"""Pure event handling: one event dict in, store calls out. No threads, no I/O.

The receiver calls handle(event, now) for every event, with `now` read from the clock when
the message arrived, and tick(now) about every half second. Handling is order-independent
per task uuid: events that arrive before the task's name (and, when task-sent events are
flowing, before its queue) are held on the task's record and counted once the labels are
known, or dropped as `unknown_task` when the name never comes.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timezone
from typing import Any, List, Optional, Tuple

from celery_exporter import catalogue
from celery_exporter.store import Store
from celery_exporter.settings import Settings
from celery_exporter.tasks import Attempt, TaskRecord, TaskTracker

log = logging.getLogger(__name__)

MAX_LABEL_LENGTH = 256
MAX_PENDING_PER_TASK = 16
# task-sent events count as "flowing" if one arrived this recently, or, before the first
# one, during this long after the first task event: only then are the other events of a
# task held back (for sent_hold_seconds) to wait for its task-sent. Real task-sent events
# can arrive after the worker's task-received (and even task-succeeded), so the very first
# tasks after a start would otherwise be labelled by the fallback queue.
SENT_RECENT_SECONDS = 600.0
UNKNOWN_QUEUE = "unknown"
UNKNOWN_EXCEPTION = "unknown"
# Native delayed delivery (Celery >= 5.5 with quorum queues) publishes countdown tasks to
# celery_delayed_N exchanges with 28 delay bits in front of the real routing key.
DELAYED_EXCHANGE = re.compile(r"(?:.+_)?celery_delayed_\d+$")
DELAY_BITS = 28
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)\(")

TERMINAL = catalogue.TERMINAL_EVENTS
UNKNOWN_TASK_DETAIL = ("task events for a task id whose name never arrived "
                       "(normal for tasks already running when the exporter started)")
QUEUE_WAIT_BIT, PREFETCH_WAIT_BIT = 1, 2


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _label(value: Any) -> Optional[str]:
    """A string usable as a label value: non-empty, bounded, no control characters."""
    if isinstance(value, str) and 0 < len(value) <= MAX_LABEL_LENGTH and not _CONTROL.search(value):
        return value
    return None


def parse_eta(value: Any) -> Optional[float]:
    """ETA/expires as sent in events: ISO-8601 strings, usually with an offset. A naive
    value is taken as UTC (Celery's default `enable_utc`)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def queue_from_sent(event: dict) -> Optional[str]:
    """The queue a task-sent event was published to."""
    queue = _label(event.get("queue"))
    if queue is not None:
        return queue
    routing_key = event.get("routing_key")
    exchange = event.get("exchange")
    if not isinstance(routing_key, str) or not isinstance(exchange, str):
        return None
    if DELAYED_EXCHANGE.match(exchange):
        parts = routing_key.split(".", DELAY_BITS)
        return _label(parts[DELAY_BITS]) if len(parts) > DELAY_BITS else None
    if exchange == "":
        return _label(routing_key)  # the default exchange routes by queue name
    return None


def _class_name(token: str) -> Optional[str]:
    """`mymod.errors.Custom` -> `Custom`, if it is a plausible class name."""
    name = token.strip().rsplit(".", 1)[-1]
    if len(name) <= 128 and _CLASS_NAME.match(name):
        return name
    return None


def exception_class(event: dict) -> str:
    """Class name of a task's exception, from the repr in `exception` ("ValueError('boom')").

    When that repr names no class, the traceback's last line does: pool-side failures (hard
    time limit, a killed child) report `ExceptionWithTraceback()` and their real class only as
    `billiard.exceptions.TimeLimitExceeded: ...`, and exceptions with a custom repr (Celery's
    Reject: `reject requeue=False: reason`) put theirs there as `celery.exceptions.Reject: ...`."""
    text = event.get("exception")
    if isinstance(text, str):
        name = _class_name(text.split("(", 1)[0])
        if name == "Retry":  # the solo/threads pools report the Retry itself: Retry(Retry(...), KeyError('x'), 0.5)
            inner = [c for c in _CALL.findall(text[:2048]) if c.rsplit(".", 1)[-1] != "Retry"]
            inner_name = _class_name(inner[0]) if inner else None
            if inner_name is not None:
                return inner_name
        if name is not None and name != "ExceptionWithTraceback":
            return name
    traceback = event.get("traceback")
    if isinstance(traceback, str):
        lines = [line for line in traceback[-4096:].splitlines() if line.strip()]
        if lines and ":" in lines[-1]:
            name = _class_name(lines[-1].split(":", 1)[0])
            if name is not None:
                return name
    if isinstance(text, str) and text.startswith("reject requeue="):
        return "Reject"  # Reject's repr, when the traceback is missing
    return UNKNOWN_EXCEPTION


class Handler:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.tracker = TaskTracker(settings.max_tasks, settings.finished_grace_seconds)
        self.with_hostname = settings.task_hostname_label
        self.last_sent_seen: Optional[float] = None
        self.first_task_event: Optional[float] = None
        self._labels: dict = {}  # (name, queue) -> the same tuple, shared by all its tasks
        self._logged_drops: set = set()

    # -- entry points -------------------------------------------------------------------

    def handle(self, event: Any, now: float) -> None:
        if not isinstance(event, dict):
            self.drop("bad_message", f"event is a {type(event).__name__}, not a dict")
            return
        etype = event.get("type")
        if not isinstance(etype, str):
            self.drop("bad_field", "event without a string 'type'")
            return
        self.store.count_event(etype if etype in catalogue.KNOWN_EVENT_TYPES else "other", now)
        if etype.startswith("task-"):
            state = catalogue.EVENT_STATE.get(etype)
            if state is not None:  # task-cancelled and custom events are only counted
                self._task_event(event, etype, state, now)
        elif etype.startswith("worker-"):
            self._worker_event(event, etype, now)

    def tick(self, now: float) -> None:
        """Release held events whose wait ran out; forget finished tasks."""
        for record in self.tracker.due_holds(now):
            self._release(record, now)
        self.tracker.forget_finished(now)
        self.store.set_tracker_stats(len(self.tracker), self.tracker.evicted)

    # -- tasks --------------------------------------------------------------------------

    def _task_event(self, event: dict, etype: str, state: int, now: float) -> None:
        uuid = _label(event.get("uuid"))
        ts = _number(event.get("timestamp"))
        if uuid is None or ts is None:
            self.drop("bad_field", f"{etype} without a valid uuid or timestamp")
            return
        if self.first_task_event is None:
            self.first_task_event = now
        record = self.tracker.get(uuid)
        if record is None:
            record, evicted = self.tracker.create(uuid)
            if evicted is not None and evicted.pending:
                self.drop("unknown_task", "task id evicted from a full uuid map", len(evicted.pending))

        if not self._learn(record, event, etype, ts, now):
            return
        if record.labels is None:
            self._label_or_hold(record, (etype, state, event, now), now)
        else:
            self._emit(record, etype, state, event, now)

    def _learn(self, record: TaskRecord, event: dict, etype: str, ts: float, now: float) -> bool:
        """Take what this event tells about the task into its record."""
        if etype == "task-sent" or etype == "task-received":
            name = _label(event.get("name"))
            if name is None:
                self.drop("bad_field", f"{etype} without a valid task name")
                return False
            retries = _count(event.get("retries")) or 0
            if retries > record.attempt:  # a retry: same uuid, new attempt
                record.attempt = retries
                record.previous = Attempt(record.sent_ts, record.received_ts, record.eta_ts,
                                          record.waits_observed, record.started_ts)
                record.sent_ts = record.received_ts = record.started_ts = record.eta_ts = None
                record.waits_observed = 0
            eta = parse_eta(event.get("eta"))
            if eta is not None:
                record.eta_ts = eta
            if etype == "task-sent":
                self.last_sent_seen = now
                record.sent_ts = ts
                if record.name is None:
                    record.name = name
                if record.queue is None:
                    record.queue = queue_from_sent(event)
            else:
                record.received_ts = ts
                record.worker = _label(event.get("hostname"))
                if record.labels is None:
                    record.name = name  # the worker's view wins (shadow names)
        elif etype == "task-started":
            if self._late_start_of_previous_attempt(record, ts):
                record.previous.started_ts = ts
            else:
                record.started_ts = ts
            if record.worker is None:
                record.worker = _label(event.get("hostname"))
        return True

    def _label_or_hold(self, record: TaskRecord, held: tuple, now: float) -> None:
        """An event of a task without labels yet: count it (and what was held before it)
        if the labels can be known now, else hold it until they can or the hold runs out.
        `held` is (type, state index, event, arrival time)."""
        hold_over = record.hold_until is not None and now >= record.hold_until
        if record.name is None:
            if hold_over:  # the hold ran out before: its events were dropped, so is this one
                self.drop("unknown_task", UNKNOWN_TASK_DETAIL)
                return
        elif (record.queue is not None or hold_over or not self._sent_flowing(now)
              or self._single_queue(record.worker) is not None):  # that worker's queue is certain
            self._fix_labels(record, now)
            self._emit(record, *held)
            return
        if record.pending is None:
            record.pending = []
        elif len(record.pending) >= MAX_PENDING_PER_TASK:
            self.drop("bad_field", "too many events for one task id before its name arrived")
            return
        record.pending.append(held)
        self.tracker.hold(record, now + self.settings.sent_hold_seconds)

    def _release(self, record: TaskRecord, now: float) -> None:
        """A hold ran out: count the held events under the labels known now, or drop them."""
        if record.name is None:
            self.drop("unknown_task", UNKNOWN_TASK_DETAIL, len(record.pending or ()))
            record.pending = None
        else:
            self._fix_labels(record, now)

    def _sent_flowing(self, now: float) -> bool:
        """Whether a task's task-sent can be expected: one arrived lately, or none has yet
        but the exporter has not been listening long enough to know they are off."""
        since = self.last_sent_seen if self.last_sent_seen is not None else self.first_task_event
        return since is not None and now - since < SENT_RECENT_SECONDS

    def _fix_labels(self, record: TaskRecord, now: float) -> None:
        labels = (record.name, record.queue or self._fallback_queue(record.worker))
        if len(self._labels) > self.settings.max_series:
            self._labels.clear()  # only a memory saving: never let hostile names grow it
        record.labels = self._labels.setdefault(labels, labels)  # one tuple per label set, shared
        pending, record.pending = record.pending, None
        for etype, state, event, arrived in pending or ():  # counted as of when they arrived
            self._emit(record, etype, state, event, arrived)

    def _single_queue(self, worker: Optional[str]) -> Optional[str]:
        """The queue of a worker that consumes exactly one (per the poller's inspect)."""
        queues = self.store.worker_queues.get(worker) if worker else None
        return queues[0] if queues and len(queues) == 1 else None

    def _fallback_queue(self, worker: Optional[str]) -> str:
        return self._single_queue(worker) or UNKNOWN_QUEUE

    def _emit(self, record: TaskRecord, etype: str, state: int, event: dict, now: float) -> None:
        if etype in TERMINAL:
            bit = 1 << state
            if record.done & bit:
                self.drop("duplicate", f"a second {etype} for one task id")
                return
            record.done |= bit
            self.tracker.finish(record, now)
        key = record.labels
        if self.with_hostname:
            hostname = "" if etype == "task-sent" else (_label(event.get("hostname")) or "")
            key = key + (hostname,)
        observations: List[Tuple[int, float]] = []
        if etype == "task-succeeded":
            runtime = _number(event.get("runtime"))
            ts = _number(event.get("timestamp"))
            if runtime is None and record.started_ts is not None and ts is not None:
                runtime = ts - record.started_ts  # 5.7 can send runtime=None
            if runtime is not None:
                observations.append((catalogue.RUNTIME, max(runtime, 0.0)))
        if etype != "task-sent":  # with the hostname label, task-sent has none: keep waits per worker
            self._waits(record, observations)
        if not self.store.task_event(key, state, now, observations):
            return
        if etype == "task-failed" or etype == "task-retried":
            self.store.task_exception(key, exception_class(event), now)

    @staticmethod
    def _late_start_of_previous_attempt(record: TaskRecord, ts: float) -> bool:
        """A task-started older than the current attempt's task-sent or task-received
        belongs to the attempt before the retry: the worker's pool child publishes the
        retry (task-sent) while the old task-started can still sit in the main process's
        event buffer. Both timestamps come from the worker's host, so they compare."""
        previous = record.previous
        if previous is None or previous.started_ts is not None or record.started_ts is not None:
            return False
        return ((record.sent_ts is not None and ts < record.sent_ts)
                or (record.received_ts is not None and ts < record.received_ts))

    def _waits(self, record: TaskRecord, observations: List[Tuple[int, float]]) -> None:
        previous = record.previous
        if previous is not None and previous.started_ts is not None:
            previous.waits_observed = self._observe_waits(observations, previous.started_ts, previous.sent_ts,
                                                          previous.received_ts, previous.eta_ts,
                                                          previous.waits_observed)
        if record.started_ts is not None:
            record.waits_observed = self._observe_waits(observations, record.started_ts, record.sent_ts,
                                                        record.received_ts, record.eta_ts, record.waits_observed)

    @staticmethod
    def _observe_waits(observations: List[Tuple[int, float]], started: float, sent: Optional[float],
                       received: Optional[float], eta: Optional[float], observed: int) -> int:
        """Queue wait (publish -> start) and prefetch wait (receipt -> start) of one attempt,
        each at most once, less any ETA; returns the updated observed bits."""
        not_before = eta if eta is not None else -math.inf
        if sent is not None and not observed & QUEUE_WAIT_BIT:
            observed |= QUEUE_WAIT_BIT
            observations.append((catalogue.QUEUE_WAIT, max(started - max(sent, not_before), 0.0)))
        if received is not None and not observed & PREFETCH_WAIT_BIT:
            observed |= PREFETCH_WAIT_BIT
            observations.append((catalogue.PREFETCH_WAIT, max(started - max(received, not_before), 0.0)))
        return observed

    # -- workers ------------------------------------------------------------------------

    def _worker_event(self, event: dict, etype: str, now: float) -> None:
        if etype not in ("worker-online", "worker-heartbeat", "worker-offline"):
            return  # worker-elect and friends carry nothing for metrics
        hostname = _label(event.get("hostname"))
        ts = _number(event.get("timestamp"))
        if hostname is None or ts is None:
            self.drop("bad_field", f"{etype} without a valid hostname or timestamp")
            return
        if etype == "worker-offline":
            self.store.worker_offline(hostname)
            return
        # The on-demand heartbeat (remote control `heartbeat`, freq=5) has no `active`:
        # take neither its freq nor missing counts from it.
        periodic = "active" in event
        software = None
        if any(k in event for k in ("sw_ident", "sw_ver", "sw_sys")):
            software = tuple(
                (_label(event.get(k)) or "")[:64] for k in ("sw_ident", "sw_ver", "sw_sys")
            )
        freq = _number(event.get("freq")) if periodic else None
        self.store.worker_event(
            hostname,
            now,
            ts,
            freq=freq if freq is not None and freq > 0 else None,
            active=_count(event.get("active")),
            processed=_count(event.get("processed")),
            software=software,
        )

    # -- drops --------------------------------------------------------------------------

    def drop(self, reason: str, detail: str, n: int = 1) -> None:
        """Count events not turned into metrics; log the first of each reason."""
        if n <= 0:
            return
        self.store.count_dropped(reason, n)
        if reason not in self._logged_drops:
            self._logged_drops.add(reason)
            log.warning(
                "dropped event(s), reason=%s: %s (logged once per reason; "
                "see celery_exporter_events_dropped_total)", reason, detail,
            )
