"""What is misconfigured, judged from the event stream: the per-worker signs (task events off,
clock skew, a heartbeat interval that does not fit --worker-timeout), task names received
without a task-sent, and events refused for their content type; and, from a snapshot, the
list of problems with their fix that the status page, the log and `celery-exporter check`
show.

Pure: every function takes the time it needs (the exporter's clock at an event's arrival)
and does no I/O. The signs of a worker live on its record in the worker store, so they
expire with it (--worker-ttl); the task names with --series-ttl (store/diagnosis.py).

Task events off: a worker's heartbeats carry `processed`, the number of tasks it accepted.
When two heartbeats in a row show it above the count of the last heartbeat before them, and
no task event (task-received, task-started) came from that worker in between, the worker
runs tasks without sending their events: diagnosed on the second heartbeat after its first
such task, so within two heartbeat intervals. The first heartbeat after a rise is a grace:
the worker sends its task events in batches, which may come just after that heartbeat. Any
task event from the worker clears the diagnosis.

Clock skew: a heartbeat's timestamp is the worker's clock when it sent it; the exporter's
clock at its arrival is later by the delivery delay d >= 0. `timestamp - arrival` is the skew
less d, so the largest of the last SKEW_WINDOW heartbeats is the estimate least spoiled by
delay (a backlog read late lowers a sample, never raises it).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import TYPE_CHECKING, Deque, Dict, List, Optional, Sequence, Set, Tuple

from celery_exporter.liveness import HEARTBEAT_MISSES

if TYPE_CHECKING:
    from celery_exporter.settings import Settings
    from celery_exporter.store import Snapshot

SKEW_WINDOW = 8  # heartbeats: 16 s at Celery's default interval
# A skew beyond this is reported as a problem: the queue wait crosses hosts (task-sent on the
# publisher, task-started on the worker) and is off by the skew.
SKEW_TOLERANCE = 1.0
# Names of tasks received without a task-sent, held at most (hostile names cannot grow it).
MAX_SENT_MISSING = 200
# Content types of refused events, as the label of celery_exporter_events_undecodable_total:
# a fixed set, so a hostile publisher cannot grow it.
CONTENT_TYPES = {
    "application/json": "json",
    "": "json",
    "application/x-python-serialize": "pickle",
    "application/x-yaml": "yaml",
    "application/x-msgpack": "msgpack",
}
CONTENT_TYPE_LABELS = ("json", "pickle", "yaml", "msgpack", "other")


TASK_EVENTS_OFF = "task_events_off"
SENT_MISSING = "task_sent_missing"
CLOCK_SKEW = "clock_skew"
UNDECODABLE = "undecodable_events"
HEARTBEAT_MISFIT = "heartbeat_interval"
NO_WORKERS = "no_workers"
NOT_CONNECTED = "broker_unreachable"


def content_type_label(content_type: Optional[str]) -> str:
    """The bounded label of a message's content type ("other" for anything unknown)."""
    if content_type is None:
        return "other"
    return CONTENT_TYPES.get(content_type.strip().lower(), "other")


class WorkerSigns:
    """What a worker's events tell about its configuration. Written by the event thread
    under the store's lock (it lives on the worker's record)."""

    __slots__ = ("task_events", "_base", "_rise_at", "_offsets", "skew", "_reported")

    def __init__(self) -> None:
        self.task_events: Optional[bool] = None  # None: not known yet (no task since heard)
        self._base: Optional[int] = None  # `processed` when task events were last accounted for
        self._rise_at: Optional[float] = None  # first heartbeat above _base with no task event since
        self._offsets: Deque[float] = deque(maxlen=SKEW_WINDOW)
        self.skew: Optional[float] = None  # worker clock minus exporter clock, seconds
        self._reported: Set[str] = set()  # CLOCK_SKEW, HEARTBEAT_MISFIT: logged once per record

    def heartbeat(
        self, processed: Optional[int], sender_timestamp: float, now: float, freq: Optional[float], timeout: float
    ) -> Tuple[str, ...]:
        """A worker-online or worker-heartbeat arrived at `now`. Returns the problems it
        found that were not found before (TASK_EVENTS_OFF each time it turns off; CLOCK_SKEW
        and HEARTBEAT_MISFIT once), for the one log line each."""
        self._offsets.append(sender_timestamp - now)
        self.skew = max(self._offsets)
        found: Tuple[str, ...] = ()
        if abs(self.skew) > SKEW_TOLERANCE and CLOCK_SKEW not in self._reported:
            self._reported.add(CLOCK_SKEW)
            found += (CLOCK_SKEW,)
        if not heartbeat_fits(timeout, freq) and HEARTBEAT_MISFIT not in self._reported:
            self._reported.add(HEARTBEAT_MISFIT)
            found += (HEARTBEAT_MISFIT,)
        if processed is None:  # the on-demand heartbeat carries no counts
            return found
        if self._base is None or processed < self._base:  # first heard, or restarted
            self._base = processed
            self._rise_at = None
        elif processed > self._base:
            if self._rise_at is None:
                self._rise_at = now  # the grace: its task events may be on their way
            elif self.task_events is not False:
                self.task_events = False
                found += (TASK_EVENTS_OFF,)
        return found

    def task_event_noted(self) -> bool:
        """True when a task event would change nothing: task events known on, and nothing
        counted since the last one (the common case, once per task-received)."""
        return self.task_events is True and self._base is None and self._rise_at is None

    def task_event(self) -> Optional[bool]:
        """A task event from the worker: its task events are on. Returns what they were."""
        self._base = None  # the next heartbeat's count is the new base
        self._rise_at = None
        before, self.task_events = self.task_events, True
        return before


def heartbeat_fits(worker_timeout: float, freq: Optional[float]) -> bool:
    """Whether a worker's heartbeat interval fits --worker-timeout: it does when
    HEARTBEAT_MISSES of them fit in it; else the liveness rule stretches the timeout to
    HEARTBEAT_MISSES intervals, and the worker is declared down later than configured."""
    return freq is None or HEARTBEAT_MISSES * freq <= worker_timeout


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing found wrong: what (`kind`), about whom (`subject`: a worker's hostname, a
    content type, task names, or "" for the whole setup), what was seen and the fix."""

    kind: str
    subject: str
    seen: str
    fix: str

    def line(self) -> str:
        who = f" ({self.subject})" if self.subject else ""
        return f"{self.kind}{who}: {self.seen}. Fix: {self.fix}"


TASK_EVENTS_FIX = (
    "start the worker with -E (or set worker_send_task_events=True), run "
    "`celery -A <app> control enable_events`, or run the exporter with --enable-events"
)
SENT_FIX = (
    "set task_send_sent_event=True in the config of every process that publishes these tasks "
    "(clients, beat, and workers for retries and chains)"
)
SKEW_FIX = "synchronise the worker's clock (NTP/chrony); queue waits across hosts are off by the skew"
NO_WORKERS_FIX = (
    "check that the workers use the same broker URL, virtual host / Redis DB and transport options "
    "(global_keyprefix, fanout_prefix) as the exporter"
)


def undecodable_fix(label: str, accept: Sequence[str]) -> str:
    if label in ("pickle", "yaml", "msgpack"):
        wanted = ",".join([*accept, label]) if label not in accept else ",".join(accept)
        return (
            f"the workers send events serialized as {label}: give the exporter --accept-content {wanted} "
            f"(or set event_serializer='json' on the workers)"
        )
    return "these messages on the event exchange are not Celery events the exporter can read (see the log)"


def events_off_problem(hostname: str) -> Problem:
    seen = "its heartbeats show tasks processed but no task event came from it"
    return Problem(TASK_EVENTS_OFF, hostname, seen, TASK_EVENTS_FIX)


def skew_problem(hostname: str, skew: float) -> Problem:
    where = "ahead of" if skew > 0 else "behind"
    return Problem(CLOCK_SKEW, hostname, f"its clock is {abs(skew):.1f} s {where} the exporter's", SKEW_FIX)


def misfit_problem(hostname: str, freq: float, worker_timeout: float) -> Problem:
    return Problem(
        HEARTBEAT_MISFIT,
        hostname,
        f"its heartbeat interval ({freq:g} s) times {HEARTBEAT_MISSES} exceeds --worker-timeout "
        f"({worker_timeout:g} s): it is declared down only after {HEARTBEAT_MISSES * freq:g} s of silence",
        f"start the worker with --heartbeat-interval {math.floor(worker_timeout / HEARTBEAT_MISSES * 10) / 10:g} "
        "or less, "
        f"or give the exporter --worker-timeout {HEARTBEAT_MISSES * freq:g}s or more",
    )


def sent_missing_problem(names: Sequence[str]) -> Problem:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    seen = "tasks received with no task-sent event, so their queue_name label falls back"
    return Problem(SENT_MISSING, shown, seen, SENT_FIX)


def undecodable_problem(label: str, n: int, accept: Sequence[str]) -> Problem:
    return Problem(
        UNDECODABLE,
        label,
        f"{n} event message(s) of content type {label} could not be decoded (counted as dropped)",
        undecodable_fix(label, accept),
    )


def problems(snap: Snapshot, settings: Settings) -> List[Problem]:
    """Everything found wrong in a snapshot, workers in hostname order."""
    found: List[Problem] = []
    if not snap.exporter.connected:
        found.append(Problem(NOT_CONNECTED, "", "not connected to the broker", "check --broker-url (and credentials)"))
    elif not snap.workers.workers:
        found.append(Problem(NO_WORKERS, "", "no worker events heard", NO_WORKERS_FIX))
    for w in sorted(snap.workers.workers, key=lambda w: w.hostname):
        if w.task_events is False:
            found.append(events_off_problem(w.hostname))
        if w.skew is not None and abs(w.skew) > SKEW_TOLERANCE:
            found.append(skew_problem(w.hostname, w.skew))
        if w.freq is not None and not heartbeat_fits(settings.worker_timeout, w.freq):
            found.append(misfit_problem(w.hostname, w.freq, settings.worker_timeout))
    names = sorted(snap.diagnosis.sent_missing)
    if names:
        found.append(sent_missing_problem(names))
    for label, n in sorted(snap.diagnosis.undecodable.items()):
        if n:
            found.append(undecodable_problem(label, n, settings.accept_content))
    return found


def by_kind(found: Sequence[Problem]) -> Dict[str, List[Problem]]:
    out: Dict[str, List[Problem]] = {}
    for problem in found:
        out.setdefault(problem.kind, []).append(problem)
    return out
