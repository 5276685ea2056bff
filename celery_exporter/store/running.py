"""Tasks in flight: which task ids run on which worker, since when, under which label set.

A run starts at task-started and ends at the task's terminal event, its retry, a heartbeat
of its worker that says nothing runs (its end event was lost), or when its worker is lost.
A worker sends worker-offline when its warm shutdown *begins*, then finishes its tasks: its
runs stay, *draining*, until their end events come; if the same name comes back online
first, or --worker-ttl passes, the old process was killed before they ended.

A run that is started again on another worker (a redelivery: the broker gave the message to
another consumer once the first one's connection closed) is kept as *displaced* from the
first worker, once per task id, until that worker is known alive (heartbeats long after) or
lost. So a task that a dead worker took with it counts as
interrupted even when its redelivered copy already runs, or finished, elsewhere.

Runs are also *learned* from `inspect active` (at start and after a reconnect, learned.py):
such a run starts at the worker's own start time, is kept as it is if the task's
task-started came first, and is replaced by the run its task-started starts if that comes
after. A later inspect reply of the worker that no longer lists a run started before it was
asked ends the run, uncounted (`reconcile`): its end event was lost, or sent before the
exporter listened.

Every run and displaced run belongs to a task id in the handler's uuid map (bounded by
--max-tasks): the handler forgets both when it evicts the task's record; displaced runs are
also bounded in time.

Beside the runs, the *reservations*: tasks a worker received and has not started (its
prefetched tasks, waiting for a pool slot), one worker per task id. A reservation ends when
the task starts (in the same call that starts its run), ends, is rejected, or its record is
evicted; and with all of its worker's when the worker sends worker-offline (a warm shutdown
or a consumer restart releases the prefetched messages), restarts, or is lost or gone.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Collection, Dict, List, NamedTuple, Optional, Set, Tuple

if TYPE_CHECKING:
    from celery_exporter.learned import Learned

TaskKey = Tuple[str, ...]  # as in store.tasks: (name, queue_name[, hostname])
Taken = Tuple[str, TaskKey]  # (task id, label set) of a run cut off by a lost worker


class _Run:
    __slots__ = ("key", "start", "worker_ts", "learned")

    def __init__(self, key: TaskKey, start: float, worker_ts: float, learned: bool = False):
        self.key = key
        self.start = start  # exporter clock at task-started (learned: the worker's start, moved onto it)
        self.worker_ts = worker_ts  # the worker's own timestamp of task-started
        self.learned = learned  # from `inspect active`, no task-started seen


class Displaced(NamedTuple):
    host: str  # the worker the run was started on first
    key: TaskKey
    when: float  # exporter clock when it was started again elsewhere


class RunningRow(NamedTuple):
    key: TaskKey
    running: int
    oldest_start: float  # exporter clock at the oldest run's task-started


@dataclasses.dataclass(frozen=True)
class RunningSnapshot:
    rows: List[RunningRow]


class RunningStore:
    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self._hosts: Dict[str, Dict[str, _Run]] = {}  # worker -> task id -> run
        self._where: Dict[str, str] = {}  # task id -> worker of its run
        self._displaced: Dict[str, Displaced] = {}  # task id -> its first run's worker
        # worker that sent worker-offline with runs left -> (when, its last processed count)
        self._draining: Dict[str, Tuple[float, Optional[int]]] = {}
        self._reserved: Dict[str, Set[str]] = {}  # worker -> task ids received, not started
        self._reserved_on: Dict[str, str] = {}  # task id -> the worker that reserved it
        self._learned: Optional[Learned] = None  # handed from the inspector to the event thread

    def size(self) -> Tuple[int, int]:
        """(runs, displaced runs) held."""
        with self._lock:
            return len(self._where), len(self._displaced)

    # -- writers (take the lock) --------------------------------------------------------

    def start(self, uuid: str, host: str, key: TaskKey, now: float, worker_ts: float) -> None:
        """A run starts (and the task's reservation ends). Once per task: the steps of
        `_start_locked` written out, and acquire/release rather than `with`, which cost a
        fifth of this method on CPython 3.11."""
        run = _Run(key, now, worker_ts)
        lock = self._lock
        lock.acquire()
        try:
            reserver = self._reserved_on.pop(uuid, None)
            if reserver is not None:
                self._reserved[reserver].discard(uuid)
            old = self._where.get(uuid)
            if old is not None:
                self._moved_locked(uuid, old, host, now)
            runs = self._hosts.get(host)
            if runs is None:
                self._hosts[host] = {uuid: run}
            else:
                runs[uuid] = run
            self._where[uuid] = host
        finally:
            lock.release()

    def learn(self, uuid: str, host: str, key: TaskKey, start: float, worker_ts: float, now: float) -> bool:
        """`inspect active` says the task runs on `host` since `start` (exporter clock): a
        run, unless the store holds one of it there already. True if it added one."""
        with self._lock:
            if self._where.get(uuid) == host:
                return False
            self._start_locked(uuid, host, _Run(key, start, worker_ts, learned=True), now)
            return True

    def reconcile(self, host: str, running: Collection[str], before: float) -> int:
        """`host` answered `inspect active` with the task ids `running`, asked at `before`
        (exporter clock): its runs started before then that it no longer lists have ended
        unseen. They end, uncounted. Returns how many."""
        with self._lock:
            runs = self._hosts.get(host)
            if not runs:
                return 0
            gone = [u for u, run in runs.items() if run.start < before and u not in running]
            for uuid in gone:
                self._pop_locked(uuid, host)
            return len(gone)

    def learned_runs(self) -> int:
        """Runs learned from `inspect active` that no task-started has replaced yet."""
        with self._lock:
            return sum(1 for runs in self._hosts.values() for run in runs.values() if run.learned)

    def offer_learned(self, learned: Learned) -> None:
        """The inspector hands over what it learned (replacing what the event thread did not
        take yet: the newer reply says more)."""
        with self._lock:
            self._learned = learned

    def take_learned(self) -> Optional[Learned]:
        """What the inspector learned since the last call, for the event thread's tick."""
        with self._lock:
            learned, self._learned = self._learned, None
            return learned

    def end(self, uuid: str, unreserve: bool = False) -> None:
        """The task's run ends; with `unreserve`, its reservation too. (Once per task, as
        `start`.)"""
        lock = self._lock
        lock.acquire()
        try:
            host = self._where.pop(uuid, None)
            if host is not None:
                runs = self._hosts[host]
                del runs[uuid]
                if not runs:
                    del self._hosts[host]
                    self._draining.pop(host, None)
            if unreserve and self._reserved_on:
                reserver = self._reserved_on.pop(uuid, None)
                if reserver is not None:
                    self._reserved[reserver].discard(uuid)
        finally:
            lock.release()

    def forget(self, uuid: str) -> None:
        """The task's record was evicted: its run, displaced run and reservation go, uncounted."""
        with self._lock:
            host = self._where.get(uuid)
            if host is not None:
                self._pop_locked(uuid, host)
            self._displaced.pop(uuid, None)
            if uuid in self._reserved_on:
                self._unreserve_locked(uuid)

    def reserve(self, uuid: str, host: str) -> None:
        """The worker received the task and has not started it (on another worker before: a
        redelivery, which moves the reservation)."""
        lock = self._lock
        lock.acquire()  # (once per task, as `start`)
        try:
            old = self._reserved_on.get(uuid)
            if old == host:
                return
            if old is not None:
                self._reserved[old].discard(uuid)
            self._reserved_on[uuid] = host
            reserved = self._reserved.get(host)
            if reserved is None:
                self._reserved[host] = {uuid}
            else:
                reserved.add(uuid)
        finally:
            lock.release()

    def drop_reserved(self, host: str) -> None:
        """The worker's consumer (re)started: it holds none of the tasks it had reserved."""
        with self._lock:
            self.drop_reserved_locked(host)

    def unreserve(self, uuid: str) -> None:
        """The task is no longer reserved (it started, ended or was rejected)."""
        with self._lock:
            if uuid in self._reserved_on:
                self._unreserve_locked(uuid)

    def idle(self, host: str, worker_ts: float) -> None:
        """A heartbeat of `host`, sent at `worker_ts` (its clock), says no task runs: runs
        it started before then have ended, though their end events never came (lost while
        the exporter reconnected, or Celery <= 5.6 losing them after a broker reconnect)."""
        with self._lock:
            runs = self._hosts.get(host)
            if runs:
                for uuid in [u for u, run in runs.items() if run.worker_ts < worker_ts]:
                    self._pop_locked(uuid, host)

    def left(self, host: str, now: float, processed: Optional[int]) -> None:
        """The worker began a warm shutdown (`processed`: its last heartbeat's count): its
        runs drain (they end by their own events); runs displaced from it were not cut off
        by a death."""
        with self._lock:
            if host in self._hosts:
                self._draining[host] = (now, processed)
            self._pop_displaced_locked(host)
            self.drop_reserved_locked(host)

    # -- with the lock held -------------------------------------------------------------

    def _unreserve_locked(self, uuid: str) -> None:
        self._reserved[self._reserved_on.pop(uuid)].discard(uuid)

    def sweep_reserved_locked(self) -> None:
        """Forget the empty reservation sets (a worker's set is kept while it empties and
        fills again, task after task, rather than made anew for each)."""
        for host in [h for h, uuids in self._reserved.items() if not uuids]:
            del self._reserved[host]

    def drop_reserved_locked(self, host: str) -> None:
        """Forget the worker's reservations (it left, restarted, or was lost)."""
        for uuid in self._reserved.pop(host, ()):
            del self._reserved_on[uuid]

    def reserving_hosts_locked(self) -> List[str]:
        """Workers with reservations."""
        return list(self._reserved)

    def reserved_locked(self) -> Dict[str, int]:
        """Reservations per worker (those with none are left out)."""
        return {host: len(uuids) for host, uuids in self._reserved.items() if uuids}

    def _start_locked(self, uuid: str, host: str, run: _Run, now: float) -> None:
        if uuid in self._reserved_on:  # (a run that starts ends the task's reservation)
            self._unreserve_locked(uuid)
        old = self._where.get(uuid)
        if old is not None:
            self._moved_locked(uuid, old, host, now)
        self._hosts.setdefault(host, {})[uuid] = run
        self._where[uuid] = host

    def _moved_locked(self, uuid: str, old: str, host: str, now: float) -> None:
        """The task's run on `old` is replaced by one starting on `host`: on another worker,
        the first run is displaced from `old` (once per task id)."""
        was = self._pop_locked(uuid, old)
        if old != host and uuid not in self._displaced:
            self._displaced[uuid] = Displaced(old, was.key, now)

    def _pop_host_locked(self, host: str) -> Dict[str, _Run]:
        """Remove the worker's runs (and its drain); returns them."""
        self._draining.pop(host, None)
        runs = self._hosts.pop(host, {})
        for uuid in runs:
            del self._where[uuid]
        return runs

    def _pop_displaced_locked(self, host: str) -> List[Taken]:
        """Remove the runs displaced from the worker; returns them."""
        uuids = [u for u, d in self._displaced.items() if d.host == host]
        return [(uuid, self._displaced.pop(uuid).key) for uuid in uuids]

    def _pop_locked(self, uuid: str, host: str) -> _Run:
        del self._where[uuid]
        runs = self._hosts[host]
        run = runs.pop(uuid)
        if not runs:
            del self._hosts[host]
            self._draining.pop(host, None)
        return run

    def hosts_locked(self) -> List[str]:
        """Workers with runs, in the order their first run started: an order that does not
        depend on string hashing, so that which worker's label a task interrupted on two
        lost workers is counted under is the same in every process."""
        return list(self._hosts)

    def count_locked(self, host: str) -> int:
        """The worker's runs."""
        return len(self._hosts.get(host, ()))

    def draining_locked(self, host: str) -> Optional[Tuple[float, Optional[int]]]:
        """(when, processed) of the worker's worker-offline, if it had runs left then."""
        return self._draining.get(host)

    def displaced_locked(self) -> Dict[str, Displaced]:
        """Displaced runs by task id (the caller may delete entries)."""
        return self._displaced

    def take_locked(self, host: str) -> List[Taken]:
        """Remove and return the runs and displaced runs of a lost worker (its reservations go)."""
        self.drop_reserved_locked(host)
        taken = [(uuid, run.key) for uuid, run in self._pop_host_locked(host).items()]
        return taken + self._pop_displaced_locked(host)

    def drop_host_locked(self, host: str) -> None:
        """Forget the worker's runs, displaced runs and reservations, uncounted."""
        self._pop_host_locked(host)
        self._pop_displaced_locked(host)
        self.drop_reserved_locked(host)

    def snapshot_locked(self, down: Set[str]) -> RunningSnapshot:
        """Runs per label set on workers that are not down (unknown workers count as up:
        a worker without heartbeats cannot be told lost)."""
        totals: Dict[TaskKey, List[float]] = {}
        for host, runs in self._hosts.items():
            if host in down:
                continue
            for run in runs.values():
                entry = totals.get(run.key)
                if entry is None:
                    totals[run.key] = [1, run.start]
                else:
                    entry[0] += 1
                    if run.start < entry[1]:
                        entry[1] = run.start
        return RunningSnapshot([RunningRow(key, int(n), oldest) for key, (n, oldest) in totals.items()])
