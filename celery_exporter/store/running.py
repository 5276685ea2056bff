"""Tasks in flight: which task ids run on which worker, since when, under which label set.

A run starts at task-started and ends at the task's terminal event, its retry, or when its
worker leaves (worker-offline) or is lost. A run that is started again on another worker (a
redelivery: the broker gave the message to another consumer once the first one's
connection closed) is kept as *displaced* from the first worker, until that worker is known
alive (heartbeats long after) or lost. So a task that a dead worker took with it counts as
interrupted even when its redelivered copy already runs, or finished, elsewhere.

Every run belongs to a task id in the handler's uuid map (bounded by --max-tasks): the
handler ends the run of a record it evicts.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List, NamedTuple, Set, Tuple

TaskKey = Tuple[str, ...]  # as in store.tasks: (name, queue_name[, hostname])
Taken = Tuple[str, TaskKey]  # (task id, label set) of a run taken from a lost worker


class _Run:
    __slots__ = ("key", "start")

    def __init__(self, key: TaskKey, start: float):
        self.key, self.start = key, start


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
        # worker -> task id -> (label set, when it was displaced)
        self._displaced: Dict[str, Dict[str, Tuple[TaskKey, float]]] = {}

    def __len__(self) -> int:
        return len(self._where)

    # -- writers (take the lock) --------------------------------------------------------

    def start(self, uuid: str, host: str, key: TaskKey, now: float) -> None:
        with self._lock:
            old = self._where.get(uuid)
            if old is not None:
                run = self._pop_locked(uuid, old)
                if old != host:
                    self._displaced.setdefault(old, {})[uuid] = (run.key, now)
            self._hosts.setdefault(host, {})[uuid] = _Run(key, now)
            self._where[uuid] = host

    def end(self, uuid: str) -> None:
        with self._lock:
            host = self._where.get(uuid)
            if host is not None:
                self._pop_locked(uuid, host)

    def left(self, host: str) -> None:
        """The worker shut down gracefully: its runs end, none interrupted."""
        with self._lock:
            for uuid in self._hosts.pop(host, {}):
                del self._where[uuid]
            self._displaced.pop(host, None)

    # -- with the lock held -------------------------------------------------------------

    def _pop_locked(self, uuid: str, host: str) -> _Run:
        del self._where[uuid]
        runs = self._hosts[host]
        run = runs.pop(uuid)
        if not runs:
            del self._hosts[host]
        return run

    def hosts_locked(self) -> Set[str]:
        """Workers with runs or displaced runs."""
        return set(self._hosts) | set(self._displaced)

    def take_locked(self, host: str) -> List[Taken]:
        """Remove and return the runs and displaced runs of a lost worker."""
        runs = self._hosts.pop(host, {})
        for uuid in runs:
            del self._where[uuid]
        taken = [(uuid, run.key) for uuid, run in runs.items()]
        taken.extend((uuid, key) for uuid, (key, _) in self._displaced.pop(host, {}).items())
        return taken

    def forget_displaced_locked(self, host: str, before: float) -> None:
        """The worker is alive: forget the runs displaced from it before `before`."""
        displaced = self._displaced.get(host)
        if displaced:
            for uuid in [u for u, (_, when) in displaced.items() if when < before]:
                del displaced[uuid]
            if not displaced:
                del self._displaced[host]

    def drop_host_locked(self, host: str) -> None:
        """The worker's record was swept (past --worker-ttl): nothing about it stays."""
        for uuid in self._hosts.pop(host, {}):
            del self._where[uuid]
        self._displaced.pop(host, None)

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
