"""Bounded uuid -> task record map.

Only task-sent and task-received carry a task's name, and only task-sent its queue, so
the handler remembers per uuid what it learnt from earlier events. The map is bounded:
finished tasks are forgotten after a short grace period (long enough to recognise a
duplicate terminal event), and beyond `max_tasks` the least recently touched task is
evicted and counted.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Deque, List, Optional, Tuple

from celery_exporter import lifecycle
from celery_exporter.lifecycle import PENDING

if TYPE_CHECKING:
    from celery_exporter.events import TaskEvent

# an event held until its task's labels are fixed: (event, what attempts.learn found, arrival)
Held = Tuple["TaskEvent", Optional[lifecycle.Found], float]


# finished tasks are forgotten on this grid of times: at most this much after their grace
FINISHED_GRID = 0.125  # seconds (a power of two: exact in binary)


class Attempt:
    """What is kept of a task's attempt before a retry, to observe its waits late."""

    __slots__ = ("sent_ts", "received_ts", "eta_ts", "waits_observed", "started_ts")

    def __init__(
        self,
        sent_ts: Optional[float],
        received_ts: Optional[float],
        eta_ts: Optional[float],
        waits_observed: int,
        started_ts: Optional[float],
    ):
        self.sent_ts, self.received_ts, self.eta_ts = sent_ts, received_ts, eta_ts
        self.waits_observed, self.started_ts = waits_observed, started_ts


class TaskRecord:
    __slots__ = (
        "uuid",
        "name",
        "queue",
        "worker",
        "sent_ts",
        "received_ts",
        "started_ts",
        "eta_ts",
        "attempt",
        "waits_observed",
        "done",
        "labels",
        "pending",
        "hold_until",
        "previous",
        "state",
        "run_attempt",
        "run_start",
        "retried_seen",
        "interrupted",
    )

    def __init__(self, uuid: str):
        self.uuid = uuid
        self.name: Optional[str] = None
        self.queue: Optional[str] = None  # from task-sent
        self.worker: Optional[str] = None  # hostname of the worker that received it
        self.sent_ts: Optional[float] = None
        self.received_ts: Optional[float] = None
        self.started_ts: Optional[float] = None
        self.eta_ts: Optional[float] = None
        self.attempt = 0  # the `retries` field of the latest attempt
        self.waits_observed = 0  # bit 1: queue wait, bit 2: prefetch wait
        self.labels: Optional[Tuple[str, str]] = None  # (name, queue_name) once fixed
        # events held until the labels are fixed, with what attempts.learn found and their arrival times
        self.pending: Optional[List[Held]] = None
        self.hold_until: Optional[float] = None
        # the attempt before a retry, whose task-started can arrive after the next attempt's task-sent
        self.previous: Optional[Attempt] = None
        # what lifecycle.py reads and keeps: the run's state (a lifecycle.State value), and what
        # tells the events it classifies apart
        self.state = PENDING
        self.done = 0  # bit per terminal state (1 << state index) counted
        self.run_attempt = 0  # the attempt (retries) of the latest run
        self.run_start = 0.0  # exporter clock at the latest run's task-started
        self.retried_seen = 0  # task-retried events seen while a run was current
        self.interrupted = False  # counted as interrupted (once per task id)


class TaskTracker:
    def __init__(self, max_tasks: int, finished_grace: float):
        self.max_tasks = max_tasks
        self.finished_grace = finished_grace
        self._records: "OrderedDict[str, TaskRecord]" = OrderedDict()
        self._holds: Deque[Tuple[float, str]] = deque()
        # (forget at, uuids): finished tasks grouped by their deadline, rounded up to
        # FINISHED_GRID (a burst finishes thousands of tasks a second: one entry per group,
        # not a tuple and a float per task)
        self._finished: Deque[Tuple[float, List[str]]] = deque()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, uuid: str) -> Optional[TaskRecord]:
        record = self._records.get(uuid)
        if record is not None:
            self._records.move_to_end(uuid)
        return record

    def peek(self, uuid: str) -> Optional[TaskRecord]:
        """The record, without counting as a use (the eviction order stays)."""
        return self._records.get(uuid)

    def create(self, uuid: str) -> Tuple[TaskRecord, Optional[TaskRecord]]:
        """A new record; returns it and the record evicted to make room, if any."""
        record = self._records[uuid] = TaskRecord(uuid)
        evicted = None
        if len(self._records) > self.max_tasks:
            _, evicted = self._records.popitem(last=False)
            if evicted.state not in lifecycle.FINISHED_STATES:
                self.evicted += 1
        return record, evicted

    def hold(self, record: TaskRecord, until: float, again: bool = False) -> None:
        """Hold the record's events until `until` (the first hold only, unless `again`:
        a hold that ran out and is kept on)."""
        if record.hold_until is None or again:
            record.hold_until = until
            self._holds.append((until, record.uuid))

    def due_holds(self, now: float) -> List[TaskRecord]:
        """Records whose hold has run out and that still wait for their labels."""
        due = []
        while self._holds and self._holds[0][0] <= now:
            _, uuid = self._holds.popleft()
            record = self._records.get(uuid)
            if record is not None and record.labels is None:
                due.append(record)
        return due

    def finish(self, record: TaskRecord, now: float) -> None:
        """The task ended (the lifecycle's FINISH, once per record): forget it after the grace."""
        until = math.ceil((now + self.finished_grace) / FINISHED_GRID) * FINISHED_GRID
        finished = self._finished
        if finished and finished[-1][0] == until:
            finished[-1][1].append(record.uuid)
        else:
            finished.append((until, [record.uuid]))

    def forget_finished(self, now: float) -> None:
        records = self._records
        finished_states = lifecycle.FINISHED_STATES
        while self._finished and self._finished[0][0] <= now:
            _, uuids = self._finished.popleft()
            for uuid in uuids:
                record = records.get(uuid)
                if record is not None and record.state in finished_states:
                    del records[uuid]
