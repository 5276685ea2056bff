"""What ran before the exporter listened: tasks learned from `inspect active` and `inspect
reserved`, parsed from the workers' replies (pure: no I/O, no clock).

The inspector asks when the event stream is (re)connected: at start, and after every
reconnect, since tasks may have started and ended unseen meanwhile. Then, while runs learned
that way have not been confirmed by an event of theirs, it asks again on each of its cycles,
so that one that ended unseen (its terminal event sent before the stream was bound) goes.
The event thread applies a `Learned` on its tick (handlers.Handler.learn), through the task
records and the lifecycle, so a learned task's own events later count once.

`time_start` in an `inspect active` entry (celery.worker.request.Request.info) is the
worker's *wall clock*, in epoch seconds, when the pool accepted the task: the pool reports
its `time.monotonic()` at acceptance, and Request.on_accepted converts it with
`time() - (monotonic() - time_accepted)` (Celery >= 4.0, celery/celery#3684; every Celery
this exporter supports). It is the moment the worker sends task-started, on the clock that
stamps that event's `timestamp`; the handler moves it onto the exporter's clock by the
worker's clock offset seen in its last heartbeat (arrival minus the worker's timestamp).

`inspect reserved` lists tasks the worker received (prefetched) and has not started: they
run nothing, but their name and queue let their task-started, which carries no name, be
counted at once instead of dropped as of an unknown task.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

from celery_exporter.events import label, number, queue_from_sent, repeated_label


@dataclasses.dataclass(frozen=True)
class LearnedTask:
    uuid: str
    host: str  # the worker that answered
    name: str
    queue: Optional[str]  # the queue its delivery info names, when that is certain
    routing_key: Optional[str]  # its delivery routing key (a queue of its worker, most often)
    started: Optional[float]  # the worker's wall clock at acceptance; None: reserved, not started


@dataclasses.dataclass(frozen=True)
class Learned:
    """One inspect's worth of learned tasks, handed from the inspector to the event thread."""

    asked_at: float  # exporter clock just before the broadcast was sent
    listening_since: float  # the event stream's connected_since that the learning was for
    first: bool  # the first for this connection (logged), else a follow-up on learned runs
    answered: Tuple[str, ...]  # workers that answered `inspect active`
    running: List[LearnedTask]
    reserved: List[LearnedTask]
    refused: int  # entries left out: not the shape Celery sends


def _entry(host: str, raw: Any, running: bool) -> Optional[LearnedTask]:
    """One entry of a reply, or None if it is not the shape Celery sends."""
    if not isinstance(raw, dict):
        return None
    uuid, name = label(raw.get("id")), repeated_label(raw.get("name"))
    if uuid is None or name is None:
        return None
    started: Optional[float] = None
    if running:
        started = number(raw.get("time_start"))
        if started is None or started <= 0 or not math.isfinite(started):
            return None  # (a reserved entry has time_start None)
    delivery = raw.get("delivery_info")
    queue = routing_key = None
    if isinstance(delivery, dict):
        queue = queue_from_sent(delivery)
        routing_key = repeated_label(delivery.get("routing_key"))
    return LearnedTask(uuid, host, name, queue, routing_key, started)


def parse(
    active: Dict[str, Any], reserved: Dict[str, Any]
) -> Tuple[Tuple[str, ...], List[LearnedTask], List[LearnedTask], int]:
    """(workers that answered `inspect active`, running tasks, reserved tasks, entries
    refused) from the two replies (worker -> list of Request.info() dicts)."""
    answered: List[str] = []
    running: List[LearnedTask] = []
    waiting: List[LearnedTask] = []
    refused = 0
    for reply, into in ((active, running), (reserved, waiting)):
        for raw_host, entries in reply.items():
            host = repeated_label(raw_host)
            if host is None or not isinstance(entries, list):
                refused += 1
                continue
            if into is running:
                answered.append(host)
            for raw in entries:
                task = _entry(host, raw, into is running)
                if task is None:
                    refused += 1
                else:
                    into.append(task)
    return tuple(answered), running, waiting, refused
