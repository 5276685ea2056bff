"""Pure event handling: one raw event in, store calls out. No threads, no I/O.

The receiver calls handle(event, now) for every event, with `now` read from the clock when
the message arrived, and tick(now) about every half second. An event goes through:

1. events.Validator: raw dict -> TaskEvent / WorkerEvent, or refused and counted;
2. for task events: the uuid map (tasks.py) and attempts.learn (what the event tells about
   the task's attempt, and what it found out about the event: a redelivery, a late start);
3. labels.LabelResolver: count it under its (name, queue_name) now, or hold it for the
   task-sent that carries the queue (it returns what to count once the labels are fixed);
4. lifecycle: the event's kind and the transition table's row for the task's state; the
   handler applies the row: the task's next state, the counts and observations, the run
   started or ended in the store's running set.

Handling is order-independent per task uuid: events that arrive before the task's name
(and, when task-sent events are flowing, before its queue) are held on the task's record.

The rules of a task's run (running, interrupted, redelivered, duplicate terminal events)
are written in lifecycle.py. The handler feeds it the events that are not task events too:
task-cancelled ends a run; on the tick, the runs of workers declared lost (liveness.verdict,
through store.take_lost_runs) and, at a worker-online, those of a worker that restarted
under its name, are counted as interrupted; an evicted record forgets its run. A worker's
reservations (tasks received, not started) go at its worker-offline and worker-online. A heartbeat
that says nothing runs ends its worker's runs in the store (their end events were lost), and
a worker-offline starts the warm shutdown, in which the worker's runs drain by their own
events.

On the tick, too, what the inspector learned from `inspect active` and `inspect reserved`
(learned.py) is applied through the same records and table: runs of tasks started before
the exporter listened, and the names and queues of tasks their events do not name.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Optional, Set

from celery_exporter import attempts, catalogue, diagnosis, lifecycle
from celery_exporter.drops import Drops
from celery_exporter.events import TaskCancelled, TaskEvent, Validator, WorkerEvent
from celery_exporter.labels import LabelResolver
from celery_exporter.learned import Learned, LearnedTask
from celery_exporter.lifecycle import Effect, Found, Kind
from celery_exporter.liveness import Listening
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.store.running import Taken
from celery_exporter.store.tasks import TaskKey
from celery_exporter.streams import UndecodableMessage
from celery_exporter.tasks import Held, TaskRecord, TaskTracker

log = logging.getLogger(__name__)

# the lifecycle's effects and table, as plain ints and tuples (read on every task event)
STEPS, DIRECT = lifecycle.STEPS, lifecycle.DIRECT
FINISH, START_RUN, END_RUN = Effect.FINISH, Effect.START_RUN, Effect.END_RUN
REDELIVERED, DUPLICATE, INTERRUPTED, FORGET = Effect.REDELIVERED, Effect.DUPLICATE, Effect.INTERRUPTED, Effect.FORGET
RESERVE, UNRESERVE = Effect.RESERVE, Effect.UNRESERVE
# (one test for the events that have none of them; a start's UNRESERVE is done by its
# START_RUN, so a row with both needs no step before the count for it)
BEFORE_COUNT = DUPLICATE | FINISH | END_RUN | UNRESERVE
_EVERY_EFFECT = sum(bit for name, bit in vars(Effect).items() if name.isupper())
BEFORE_COUNT_OF = tuple(  # by effects: whether _duplicate_or_ends has anything to do
    bool(e & (BEFORE_COUNT & ~UNRESERVE) or (e & UNRESERVE and not e & START_RUN)) for e in range(_EVERY_EFFECT + 1)
)
AFTER_COUNT = START_RUN | REDELIVERED | RESERVE
RUN_END_HISTOGRAM = catalogue.RUN_END_HISTOGRAM
SERIES_LIMIT_DETAIL = "a new label set was refused: --max-series reached"
# Tasks received this soon after the first task event are not diagnosed as missing their
# task-sent: they may have been published before the exporter listened.
SENT_MISSING_GRACE = 10.0
# Workers logged per kind of problem (diagnosis.WorkerSigns); the rest are on the status page.
LOGGED_WORKERS = 5

log = logging.getLogger(__name__)


class Handler:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.drop = Drops(store.exporter)
        self.validator = Validator(store.exporter, self.drop, settings.task_hostname_label)
        self.tracker = TaskTracker(settings.max_tasks, settings.finished_grace_seconds)
        self.labels = LabelResolver(self.tracker, store.queues, settings, self.drop)
        self.with_hostname = settings.task_hostname_label
        self.listening = Listening()
        self.accept_content = settings.accept_content
        self.sent_missing_grace = SENT_MISSING_GRACE  # (`celery-exporter check` listens briefly: shorter)
        self._undecodable_logged: Set[str] = set()
        self._workers_logged: Dict[str, int] = {}  # kind of problem -> workers found with it

    # -- entry points -------------------------------------------------------------------

    def handle(self, raw: Any, now: float) -> None:
        event = self.validator.parse(raw, now)
        if isinstance(event, TaskEvent):
            self._task_event(event, now)
        elif isinstance(event, WorkerEvent):
            self._worker_event(event, now)
        elif isinstance(event, TaskCancelled):
            self._cancelled(event.uuid)

    def undecodable(self, exc: UndecodableMessage) -> None:
        """A message that could not be decoded: dropped, and counted by its content type,
        with one log line per content type naming the fix (diagnosis.undecodable_fix)."""
        label = diagnosis.content_type_label(exc.content_type)
        self.store.diagnosis.undecodable(label)
        self.drop("undecodable", str(exc))
        if label not in self._undecodable_logged:
            self._undecodable_logged.add(label)
            log.warning(
                "undecodable events of content type %s (%s); fix: %s",
                label,
                exc,
                diagnosis.undecodable_fix(label, self.accept_content),
            )

    def tick(self, now: float) -> None:
        """Count held events whose wait ran out; forget finished tasks; count the runs of
        workers declared lost as interrupted."""
        for record, held in self.labels.release_due(now):
            self._emit_held(record, held)
        self.tracker.forget_finished(now)
        listening = self.listening.tick(now, self.store.exporter.connected_since)
        self._interrupted(self.store.take_lost_runs(now, listening, self.store.exporter.heard_at), now)
        learned = self.store.running.take_learned()
        if learned is not None:
            self.learn(learned, now)
        self.store.exporter.set_tracker_stats(len(self.tracker), self.tracker.evicted)

    # -- tasks --------------------------------------------------------------------------

    def _task_event(self, event: TaskEvent, now: float) -> None:
        if event.type == "task-sent" or self.labels.first_task_event is None:
            self.labels.saw(event, now)  # (all it notes of the other events is the first one)
        if event.type == "task-received":  # one per task: the worker sends task events
            if event.hostname is not None and self.store.workers.task_event(event.hostname):
                log.info("worker %s sends task events again", event.hostname)
        elif event.type == "task-sent" and event.name is not None:
            self.store.diagnosis.sent_seen(event.name)
        record = self.tracker.get(event.uuid)
        if record is None:
            record, evicted = self.tracker.create(event.uuid)
            if evicted is not None:
                self._evicted(evicted)
        found = attempts.learn(record, event)
        if record.labels is None:
            held = self.labels.resolve(record, event, found, now)
            if held is None:  # held for its labels, or dropped
                return
            if held:
                self._emit_held(record, held)
        self._emit(record, event, found, now)

    def _cancelled(self, uuid: str) -> None:
        """task-cancelled: counted as an event only; it ends the task's run (its redelivery
        will start it again)."""
        record = self.tracker.peek(uuid)
        if record is not None:
            record.state, effects = STEPS[Kind.CANCELLED][record.state]
            if effects & END_RUN:
                self.store.running.end(uuid)

    def _evicted(self, record: TaskRecord) -> None:
        """A record evicted from the full uuid map: counted as evicted by the tracker, never as
        interrupted."""
        if record.pending:
            self.drop("unknown_task", "task id evicted from a full uuid map", len(record.pending))
        if STEPS[Kind.EVICTED][record.state][1] & FORGET:
            self.store.running.forget(record.uuid)

    def _emit_held(self, record: TaskRecord, held: Iterable[Held]) -> None:
        for event, found, arrived in held:
            self._emit(record, event, found, arrived)

    def _emit(self, record: TaskRecord, event: TaskEvent, found: Optional[Found], now: float) -> None:
        """Apply the lifecycle's row for one event of a task whose labels are fixed, as of `now`."""
        rows = DIRECT[event.state]  # the rows of its event type, if that alone tells its kind
        if rows is None or found is not None:
            rows = STEPS[lifecycle.classify(record, event, found)]
        next_state, effects = rows[record.state]
        if BEFORE_COUNT_OF[effects] and self._duplicate_or_ends(record, event, effects, now):
            return
        if record.sent_ts is None and event.type == "task-received":
            self._sent_missing(record, now)
        if not effects & START_RUN:  # (a run starts, and the state moves, once the label set is admitted)
            record.state = next_state
        # COUNT: every row of a task event has it but a duplicate's (test_lifecycle checks)
        # a failure or retry that ends the run: its run time, on the exporter's clock
        ran = now - record.run_start if effects & END_RUN and event.state in RUN_END_HISTOGRAM else None
        key = self._count_event(record, event, now, ran)
        if key is None:
            if effects & START_RUN:  # refused: no run starts, and the task is no longer reserved
                self.store.running.unreserve(record.uuid)
            return
        if not effects & AFTER_COUNT:
            return
        if effects & START_RUN:
            record.state = next_state
            record.run_attempt = record.attempt
            record.run_start = now
            self.store.running.start(record.uuid, event.hostname or record.worker or "", key, now, event.timestamp)
        if effects & REDELIVERED:
            self._count(key, catalogue.REDELIVERED, now)
        if effects & RESERVE and event.eta is None and event.hostname is not None:
            self.store.running.reserve(record.uuid, event.hostname)

    def _sent_missing(self, record: TaskRecord, now: float) -> None:
        """A task received, its labels fixed, and no task-sent came for it (after the first
        sent_missing_grace seconds of task events: before, it may have been published unheard)."""
        first = self.labels.first_task_event
        if record.name is None or first is None or now - first < self.sent_missing_grace:
            return
        if self.store.diagnosis.sent_missing(record.name, now):
            log.warning("%s", diagnosis.sent_missing_problem([record.name]).line())

    def _duplicate_or_ends(self, record: TaskRecord, event: TaskEvent, effects: int, now: float) -> bool:
        """The effects before the count: True for a duplicate (dropped, nothing else happens);
        else the task's end (FINISH), its run's (END_RUN) and its reservation's (UNRESERVE:
        a start's is done by its START_RUN)."""
        if effects & DUPLICATE:
            self.drop("duplicate", f"a second {event.type} for one task id")
            return True
        if effects & FINISH:
            self.tracker.finish(record, now)
        if effects & END_RUN:
            self.store.running.end(record.uuid, bool(effects & UNRESERVE))
        elif effects & UNRESERVE and not effects & START_RUN:
            self.store.running.unreserve(record.uuid)
        return False

    def _count_event(
        self, record: TaskRecord, event: TaskEvent, now: float, ran: Optional[float] = None
    ) -> Optional[TaskKey]:
        """Count the event under its label set, with the observations it completes (the task
        id as their exemplar; `ran`: the run time of a failed or retried run) and its
        exception; the label set, or None (a drop) when --max-series refused it."""
        assert record.labels is not None  # LabelResolver fixed them before emitting
        key: TaskKey = record.labels
        if self.with_hostname:
            key = key + ("" if event.type == "task-sent" else (event.hostname or ""),)
        observations = attempts.observations(record, event)
        if ran is not None:
            observations = [*observations, (RUN_END_HISTOGRAM[event.state], max(ran, 0.0))]
        trace = (record.uuid, event.hostname or record.worker or "") if observations else None
        if not self.store.tasks.observe(key, event.state, now, observations, trace):
            self.drop("series_limit", SERIES_LIMIT_DETAIL)
            return None
        if event.exception is not None:  # task-failed, task-retried
            self.store.tasks.exception(key, event.exception, now)
        return key

    def _count(self, key: TaskKey, counter: int, now: float) -> None:
        """Count `counter` for the label set, or a drop when --max-series refused the label set."""
        if not self.store.tasks.observe(key, counter, now, (), None):
            self.drop("series_limit", SERIES_LIMIT_DETAIL)

    def _interrupted(self, taken: Iterable[Taken], now: float) -> None:
        """Count runs cut off by their worker's loss, once per task id (lifecycle.lost)."""
        for uuid, key in taken:
            if lifecycle.lost(self.tracker.peek(uuid)) & INTERRUPTED:
                self._count(key, catalogue.INTERRUPTED, now)

    # -- what inspect reported ----------------------------------------------------------

    def learn(self, learned: Learned, now: float) -> None:
        """Apply what `inspect active` and `inspect reserved` reported (asked while the event
        stream was connected, so every end after the replies comes as an event): the runs
        of the workers that answered that they no longer list end; each running task gets
        a run from its worker's start time unless its record is finished or the store holds
        its run already (lifecycle.learned); every task listed gets its name and queue."""
        if learned.listening_since != self.store.exporter.connected_since:
            return  # asked for a connection lost since: the next one is learned anew
        listed: Dict[str, Set[str]] = {host: set() for host in learned.answered}
        for task in learned.running:
            listed[task.host].add(task.uuid)
        ended = sum(self.store.running.reconcile(host, uuids, learned.asked_at) for host, uuids in listed.items())
        new: Dict[str, int] = {}
        known = 0
        for task in learned.running:
            if self._learn_run(task, now):
                new[task.host] = new.get(task.host, 0) + 1
            else:
                known += 1
        for task in learned.reserved:
            if lifecycle.learned_reserved(self._learn_task(task)) & RESERVE:
                self.store.running.reserve(task.uuid, task.host)
        summary = (
            f"learned {sum(new.values())} running tasks from inspect active"
            f" ({', '.join(f'{host}: {n}' for host, n in sorted(new.items())) or 'none new'};"
            f" {known} already known, {ended} ended unseen), {len(learned.reserved)} reserved;"
            f" {len(learned.answered)} workers answered"
            + (f", {learned.refused} malformed entries left out" if learned.refused else "")
        )
        if learned.first:
            log.info("%s", summary)
            self.store.exporter.set_learned(now, summary)
        else:
            log.debug("%s", summary)

    def _learn_task(self, task: LearnedTask) -> TaskRecord:
        """The task's record (made if new), with its name and queue; the events held for
        them are counted now."""
        record = self.tracker.get(task.uuid)
        if record is None:
            record, evicted = self.tracker.create(task.uuid)
            if evicted is not None:
                self._evicted(evicted)
        held = self.labels.learn(record, task)
        if held:
            self._emit_held(record, held)
        return record

    def _learn_run(self, task: LearnedTask, now: float) -> bool:
        """A task `inspect active` reported running: True if a run was added for it. Its
        start moves onto the exporter's clock by its worker's clock offset (when a worker
        event told it), and is never later than now."""
        assert task.started is not None  # learned.parse: every running entry has its start
        record = self._learn_task(task)
        assert record.labels is not None  # LabelResolver.learn fixed them
        key: TaskKey = record.labels + ((task.host,) if self.with_hostname else ())
        if not self.store.tasks.admit(key, now):
            self.drop("series_limit", SERIES_LIMIT_DETAIL)
            return False
        if not lifecycle.learned(record) & START_RUN:
            return False  # it finished after the reply was made
        offset = self.store.workers.clock_offset(task.host) or 0.0
        start = min(task.started + offset, now)
        return self.store.running.learn(task.uuid, task.host, key, start, task.started, now)

    # -- workers ------------------------------------------------------------------------

    def _worker_event(self, event: WorkerEvent, now: float) -> None:
        if event.type == "worker-offline":
            processed = self.store.workers.offline(event.hostname)
            self.store.running.left(event.hostname, now, processed)  # a warm shutdown begins: its runs drain
            return
        if event.type == "worker-online":
            self._interrupted(self.store.take_restarted_runs(event.hostname, event.processed), now)
            self.store.running.drop_reserved(event.hostname)  # a consumer that (re)starts holds no prefetched task
        if event.active == 0:  # nothing runs there: end runs whose end events were lost
            self.store.running.idle(event.hostname, event.timestamp)
        found = self.store.workers.heartbeat(
            event.hostname,
            now,
            event.timestamp,
            freq=event.freq,
            active=event.active,
            processed=event.processed,
            software=event.software,
        )
        if found:
            self._log_worker_problems(event.hostname, found)

    def _log_worker_problems(self, hostname: str, found: Iterable[str]) -> None:
        """One line per problem a heartbeat found first (diagnosis.WorkerSigns), for the first
        LOGGED_WORKERS workers of each kind; then one line saying where the rest are shown
        (pods renamed by every deployment must not fill the log)."""
        skew, freq = self.store.workers.skew_and_freq(hostname)
        timeout = self.store.liveness.worker_timeout
        for kind in found:
            logged = self._workers_logged[kind] = self._workers_logged.get(kind, 0) + 1
            if logged > LOGGED_WORKERS + 1:
                continue
            if logged == LOGGED_WORKERS + 1:
                log.warning("more workers with %s: see the status page (/) and the metrics; not logged again", kind)
            elif kind == diagnosis.TASK_EVENTS_OFF:
                log.warning("%s", diagnosis.events_off_problem(hostname).line())
            elif kind == diagnosis.CLOCK_SKEW and skew is not None:
                log.warning("%s", diagnosis.skew_problem(hostname, skew).line())
            elif kind == diagnosis.HEARTBEAT_MISFIT and freq is not None:
                log.warning("%s", diagnosis.misfit_problem(hostname, freq, timeout).line())
