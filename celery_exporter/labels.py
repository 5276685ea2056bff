"""Label resolution: which (name, queue_name) a task's events are counted under, and the
hold that waits for the task-sent that carries the queue.

Only task-sent and task-received carry a task's name, and only task-sent its queue. The
queue label is the task-sent's queue when one is seen; else, when the receiving worker
consumes exactly one queue (from `inspect`), that queue; else "unknown". When task-sent
events are flowing, a task's events are held on its record (up to sent_hold_seconds) for
its task-sent, which can arrive after the worker's task-received and even its
task-succeeded; a task of a worker that inspect has not reported yet is held a few seconds
more, for the poller's early re-inspect of that worker. Events of a task whose name never
arrives are dropped as unknown_task.

The resolver only decides: it returns the events to count once a task's labels are fixed
(those it held, in their order, each with its arrival time), and the handler counts them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from celery_exporter.drops import Drops
from celery_exporter.events import TaskEvent
from celery_exporter.learned import LearnedTask
from celery_exporter.lifecycle import Found
from celery_exporter.settings import Settings
from celery_exporter.store.queues import QueueStore
from celery_exporter.tasks import Held, TaskRecord, TaskTracker

MAX_PENDING_PER_TASK = 16
# task-sent events count as "flowing" if one arrived this recently, or, before the first
# one, during this long after the first task event: only then are the other events of a
# task held back (for sent_hold_seconds) to wait for its task-sent. Real task-sent events
# can arrive after the worker's task-received (and even task-succeeded), so the very first
# tasks after a start would otherwise be labelled by the fallback queue.
SENT_RECENT_SECONDS = 600.0
UNKNOWN_QUEUE = "unknown"
# A task of a worker that inspect has not reported yet (the exporter started before it
# answered, or it is new) waits this much longer than the hold, beyond --inspect-timeout,
# for the poller's early re-inspect (poller.INSPECT_RETRY after the last, checked every
# poller.INSPECT_CHECK) to tell that worker's queues; then it is "unknown" after all.
INSPECT_WAIT = 3.0
RECHECK = 0.5  # a hold kept for an inspect is looked at again this often (the receiver's tick)
UNKNOWN_TASK_DETAIL = (
    "task events for a task id whose name never arrived (tasks already running when the exporter started,"
    " on workers that did not answer inspect)"
)
NOTHING_HELD: Sequence[Held] = ()


class LabelResolver:
    def __init__(self, tracker: TaskTracker, queues: QueueStore, settings: Settings, drop: Drops):
        self._tracker = tracker
        self._queues = queues
        self._hold_seconds = settings.sent_hold_seconds
        # how long after its first event a task may wait for its worker's first inspect reply
        self._inspect_wait = settings.sent_hold_seconds + settings.inspect_timeout + INSPECT_WAIT
        self._inspect = settings.inspect
        self._max_series = settings.max_series
        self._drop = drop
        self.last_sent_seen: Optional[float] = None
        self.first_task_event: Optional[float] = None
        self._interned: Dict[Tuple[str, str], Tuple[str, str]] = {}  # one tuple per label set, shared

    def saw(self, event: TaskEvent, now: float) -> None:
        """Every valid task event passes here first: whether task-sent events flow."""
        if self.first_task_event is None:
            self.first_task_event = now
        if event.type == "task-sent":
            self.last_sent_seen = now

    def resolve(
        self, record: TaskRecord, event: TaskEvent, found: Optional[Found], now: float
    ) -> Optional[Sequence[Held]]:
        """An event of a task without labels yet. If the labels can be known now, fix them and
        return the events held before this one, to be counted first; else hold the event
        (until they can, or the hold runs out) or drop it, and return None."""
        hold_over = record.hold_until is not None and now >= record.hold_until
        if record.name is None:
            if hold_over:  # the hold ran out before: its events were dropped, so is this one
                self._drop("unknown_task", UNKNOWN_TASK_DETAIL)
                return None
        elif (
            record.queue is not None
            or hold_over
            or not self._sent_flowing(now)
            or self._single_queue(record.worker) is not None
        ):  # that worker's queue is certain
            return self._fix(record)
        if record.pending is None:
            record.pending = []
        elif len(record.pending) >= MAX_PENDING_PER_TASK:
            self._drop("bad_field", "too many events for one task id before its name arrived")
            return None
        record.pending.append((event, found, now))
        self._tracker.hold(record, now + self._hold_seconds)
        return None

    def learn(self, record: TaskRecord, task: LearnedTask) -> Sequence[Held]:
        """A task that `inspect active` or `inspect reserved` reported: its name, worker and
        queue (the one its delivery info names, else its routing key if that worker consumes
        a queue of that name) fill what the record lacks, and its labels are fixed if they
        were not. Returns the events held for them, to be counted first."""
        if record.name is None:
            record.name = task.name
        if record.worker is None:
            record.worker = task.host
        if record.queue is None:
            queue = task.queue
            if queue is None and task.routing_key is not None:
                if task.routing_key in self._queues.worker_queues.get(task.host, ()):
                    queue = task.routing_key
            record.queue = queue
        if record.labels is not None:
            return NOTHING_HELD
        return self._fix(record)

    def release_due(self, now: float) -> List[Tuple[TaskRecord, Sequence[Held]]]:
        """Holds that ran out: the records whose labels are fixed now, each with its held
        events to count; the events of those whose name never came are dropped."""
        released = []
        for record in self._tracker.due_holds(now):
            if record.name is None:
                self._drop("unknown_task", UNKNOWN_TASK_DETAIL, len(record.pending or ()))
                record.pending = None
            elif self._awaits_inspect(record, now):
                self._tracker.hold(record, now + RECHECK, again=True)
            else:
                released.append((record, self._fix(record)))
        return released

    def _awaits_inspect(self, record: TaskRecord, now: float) -> bool:
        """No task-sent came, and the worker that received the task has not been reported
        by inspect yet: its queues may be known in a moment (see INSPECT_WAIT)."""
        pending = record.pending
        return bool(
            self._inspect
            and record.queue is None
            and record.worker is not None
            and record.worker not in self._queues.worker_queues
            and pending
            and now - pending[0][2] < self._inspect_wait
        )

    def _sent_flowing(self, now: float) -> bool:
        """Whether a task's task-sent can be expected: one arrived lately, or none has yet
        but the exporter has not been listening long enough to know they are off."""
        since = self.last_sent_seen if self.last_sent_seen is not None else self.first_task_event
        return since is not None and now - since < SENT_RECENT_SECONDS

    def _fix(self, record: TaskRecord) -> Sequence[Held]:
        """Fix the record's labels; returns what was held, to be counted as of when each
        event arrived."""
        assert record.name is not None  # callers check
        labels = (record.name, record.queue or self._single_queue(record.worker) or UNKNOWN_QUEUE)
        if len(self._interned) > self._max_series:
            self._interned.clear()  # only a memory saving: never let hostile names grow it
        record.labels = self._interned.setdefault(labels, labels)
        pending, record.pending = record.pending, None
        return pending or NOTHING_HELD

    def _single_queue(self, worker: Optional[str]) -> Optional[str]:
        """The queue of a worker that consumes exactly one (per the poller's inspect)."""
        queues = self._queues.worker_queues.get(worker) if worker else None
        return queues[0] if queues and len(queues) == 1 else None
