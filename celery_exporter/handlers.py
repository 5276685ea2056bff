"""Pure event handling: one raw event in, store calls out. No threads, no I/O.

The receiver calls handle(event, now) for every event, with `now` read from the clock when
the message arrived, and tick(now) about every half second. An event goes through:

1. events.Validator: raw dict -> TaskEvent / WorkerEvent, or refused and counted;
2. for task events: the uuid map (tasks.py) and attempts.learn (what the event tells about
   the task's attempt);
3. labels.LabelResolver: count it under its (name, queue_name) now, or hold it for the
   task-sent that carries the queue (it returns what to count once the labels are fixed);
4. Handler._emit: terminal events de-duplicated per task id, observations, store calls.

Handling is order-independent per task uuid: events that arrive before the task's name
(and, when task-sent events are flowing, before its queue) are held on the task's record.

Tasks in flight: task-started starts a run in the store's running set (unless the task
already ended); its terminal event, task-retried and task-rejected end it, as does a
heartbeat of its worker that says nothing runs (its end event was lost). A worker-offline
starts the warm shutdown, in which the worker's runs drain by their own events. On the
tick, the runs of workers declared lost (liveness.verdict, through store.take_lost_runs) and, at a worker-online,
those of a worker that restarted under its name, are counted as interrupted, once per
task id. A task id received again for the same attempt is counted as
redelivered.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from celery_exporter import attempts, catalogue
from celery_exporter.drops import Drops
from celery_exporter.events import TaskCancelled, TaskEvent, Validator, WorkerEvent
from celery_exporter.labels import LabelResolver
from celery_exporter.liveness import Listening
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.store.running import Taken
from celery_exporter.store.tasks import Observation, TaskKey, Trace
from celery_exporter.tasks import Held, TaskRecord, TaskTracker

TERMINAL = catalogue.TERMINAL_EVENTS
# events after which a task is no longer running (a rejected task may be requeued: then a
# new receipt and start follow)
ENDS_RUN = TERMINAL | {"task-retried", "task-rejected"}


class Handler:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.drop = Drops(store.exporter)
        self.validator = Validator(store.exporter, self.drop, settings.task_hostname_label)
        self.tracker = TaskTracker(settings.max_tasks, settings.finished_grace_seconds)
        self.labels = LabelResolver(self.tracker, store.queues, settings, self.drop)
        self.with_hostname = settings.task_hostname_label
        self.listening = Listening()

    # -- entry points -------------------------------------------------------------------

    def handle(self, raw: Any, now: float) -> None:
        event = self.validator.parse(raw, now)
        if isinstance(event, TaskEvent):
            self._task_event(event, now)
        elif isinstance(event, WorkerEvent):
            self._worker_event(event, now)
        elif isinstance(event, TaskCancelled):
            record = self.tracker.peek(event.uuid)
            if record is not None and record.running:  # its redelivery will start it again
                record.running = False
                self.store.running.end(event.uuid)

    def tick(self, now: float) -> None:
        """Count held events whose wait ran out; forget finished tasks; count the runs of
        workers declared lost as interrupted."""
        for record, held in self.labels.release_due(now):
            self._emit_held(record, held)
        self.tracker.forget_finished(now)
        listening = self.listening.tick(now, self.store.exporter.connected_since)
        self._interrupted(self.store.take_lost_runs(now, listening, self.store.exporter.heard_at), now)
        self.store.exporter.set_tracker_stats(len(self.tracker), self.tracker.evicted)

    # -- tasks --------------------------------------------------------------------------

    def _task_event(self, event: TaskEvent, now: float) -> None:
        self.labels.saw(event, now)
        record = self.tracker.get(event.uuid)
        if record is None:
            record, evicted = self.tracker.create(event.uuid)
            if evicted is not None:
                if evicted.pending:
                    self.drop("unknown_task", "task id evicted from a full uuid map", len(evicted.pending))
                if evicted.ran:  # counted as evicted by the tracker, never as interrupted
                    self.store.running.forget(evicted.uuid)
        attempts.learn(record, event)
        if record.labels is None:
            held = self.labels.resolve(record, event, now)
            if held is None:  # held for its labels, or dropped
                return
            if held:
                self._emit_held(record, held)
        self._emit(record, event, now)

    def _emit_held(self, record: TaskRecord, held: Iterable[Held]) -> None:
        for event, arrived in held:
            self._emit(record, event, arrived)

    def _emit(self, record: TaskRecord, event: TaskEvent, now: float) -> None:
        """Count one event of a task whose labels are fixed, as of `now`."""
        etype = event.type
        if etype in TERMINAL:
            bit = 1 << event.state
            if record.done & bit:
                self.drop("duplicate", f"a second {etype} for one task id")
                return
            record.done |= bit
            self.tracker.finish(record, now)
        if record.running and etype in ENDS_RUN and self._ends_current_run(record, etype):
            record.running = False
            self.store.running.end(record.uuid)
        assert record.labels is not None  # LabelResolver fixed them before emitting
        key: TaskKey = record.labels
        if self.with_hostname:
            key = key + ("" if etype == "task-sent" else (event.hostname or ""),)
        observations = attempts.observations(record, event)
        trace = (record.uuid, event.hostname or record.worker or "") if observations else None
        if not self._count(key, event.state, now, observations, trace):
            return
        if event.exception is not None:  # task-failed, task-retried
            self.store.tasks.exception(key, event.exception, now)
        if etype == "task-started" and not record.done and not event.previous_attempt:
            # (not after a terminal event that came first, nor for a retried attempt's late start)
            record.running = record.ran = True
            record.run_attempt = record.attempt
            self.store.running.start(record.uuid, event.hostname or record.worker or "", key, now, event.timestamp)
        if event.redelivery:
            self._count(key, catalogue.REDELIVERED, now)

    @staticmethod
    def _ends_current_run(record: TaskRecord, etype: str) -> bool:
        """Whether this end event ends the running attempt. A task-retried is the end of
        attempt N when it is the (N+1)-th: a retried attempt's task-retried can come after the
        next attempt's task-started (the pool child publishes the retry at once, the worker
        sends task-retried from its buffer later), and must not end that one."""
        if etype != "task-retried":
            return True
        record.retried_seen += 1
        return record.retried_seen > record.run_attempt

    def _count(
        self,
        key: TaskKey,
        counter: int,
        now: float,
        observations: Sequence[Observation] = (),
        trace: Optional[Trace] = None,
    ) -> bool:
        """Count `counter` (and observe, `trace` as the exemplar) for the label set; False,
        counted as a drop, when --max-series refused the label set."""
        if self.store.tasks.observe(key, counter, now, observations, trace):
            return True
        self.drop("series_limit", "a new label set was refused: --max-series reached")
        return False

    def _interrupted(self, taken: Iterable[Taken], now: float) -> None:
        """Count runs cut off by their worker's loss, once per task id. (The record keeps
        `running` set: it may run again elsewhere, and ending a run that is gone is a no-op.)"""
        for uuid, key in taken:
            record = self.tracker.peek(uuid)
            if record is not None:
                if record.interrupted:
                    continue
                record.interrupted = True
            self._count(key, catalogue.INTERRUPTED, now)

    # -- workers ------------------------------------------------------------------------

    def _worker_event(self, event: WorkerEvent, now: float) -> None:
        if event.type == "worker-offline":
            processed = self.store.workers.offline(event.hostname)
            self.store.running.left(event.hostname, now, processed)  # a warm shutdown begins: its runs drain
            return
        if event.type == "worker-online":
            self._interrupted(self.store.take_restarted_runs(event.hostname, event.processed), now)
        if event.active == 0:  # nothing runs there: end runs whose end events were lost
            self.store.running.idle(event.hostname, event.timestamp)
        self.store.workers.heartbeat(
            event.hostname,
            now,
            event.timestamp,
            freq=event.freq,
            active=event.active,
            processed=event.processed,
            software=event.software,
        )
