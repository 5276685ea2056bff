"""Workers: what their last worker-online / worker-heartbeat said, and when it arrived.

Whether a worker is up is the liveness rule's verdict on the age of that arrival, taken
once per snapshot; a worker past --worker-ttl is hidden at once and removed by the sweep.
Each record carries the worker's diagnosis signs (diagnosis.WorkerSigns), so they expire with it.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List, Mapping, Optional, Set, Tuple

from celery_exporter.diagnosis import WorkerSigns
from celery_exporter.liveness import Liveness, Verdict, verdict
from celery_exporter.store.budget import SeriesBudget

Software = Tuple[str, str, str]  # (sw_ident, sw_ver, sw_sys)


@dataclasses.dataclass
class WorkerRecord:
    hostname: str
    last_seen: float  # exporter clock when the last worker event arrived
    sender_timestamp: float  # the worker's own timestamp of that event
    freq: Optional[float] = None
    active: Optional[int] = None
    processed: Optional[int] = None
    sw_ident: str = ""
    sw_ver: str = ""
    sw_sys: str = ""
    signs: WorkerSigns = dataclasses.field(default_factory=WorkerSigns)


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """A worker as a scrape sees it, with the liveness verdict at the snapshot's time."""

    hostname: str
    up: bool
    last_seen: float
    freq: Optional[float]
    active: Optional[int]
    processed: Optional[int]
    sw_ident: str
    sw_ver: str
    sw_sys: str
    task_events: Optional[bool] = None  # diagnosis: None while not known
    skew: Optional[float] = None  # diagnosis: worker clock minus exporter clock


@dataclasses.dataclass(frozen=True)
class WorkerSnapshot:
    workers: List[WorkerView]
    # by hostname: pool sizes from inspect (store.queues), tasks reserved (store.running)
    pool_sizes: Dict[str, int] = dataclasses.field(default_factory=dict)
    reserved: Dict[str, int] = dataclasses.field(default_factory=dict)
    queues: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)  # from inspect

    @property
    def up_hosts(self) -> Set[str]:
        return {w.hostname for w in self.workers if w.up}

    @property
    def down_hosts(self) -> Set[str]:
        return {w.hostname for w in self.workers if not w.up}


class WorkerStore:
    def __init__(self, lock: threading.Lock, liveness: Liveness, budget: SeriesBudget):
        self._lock = lock
        self.liveness = liveness
        self._budget = budget
        self._workers: Dict[str, WorkerRecord] = {}

    # -- writers (take the lock) --------------------------------------------------------

    def heartbeat(
        self,
        hostname: str,
        now: float,
        sender_timestamp: float,
        freq: Optional[float] = None,
        active: Optional[int] = None,
        processed: Optional[int] = None,
        software: Optional[Software] = None,
    ) -> Tuple[str, ...]:
        """A worker-online or worker-heartbeat. Fields left None keep their last value
        (the on-demand 'wakeup' heartbeat carries no active/processed). Returns the problems
        it found first (diagnosis.WorkerSigns), for the one log line each; a worker refused
        by --max-series is not recorded (the budget counts it)."""
        with self._lock:
            record = self._workers.get(hostname)
            if record is None:
                if not self._budget.admit("worker"):
                    return ()
                record = self._workers[hostname] = WorkerRecord(hostname, now, sender_timestamp)
            record.last_seen = now
            record.sender_timestamp = sender_timestamp
            if freq is not None:
                record.freq = freq
            if active is not None:
                record.active = active
            if processed is not None:
                record.processed = processed
            if software is not None:
                record.sw_ident, record.sw_ver, record.sw_sys = software
            return record.signs.heartbeat(processed, sender_timestamp, now, record.freq, self.liveness.worker_timeout)

    def task_event(self, hostname: str) -> bool:
        """A task event from the worker: its task events are on. True when they had been
        diagnosed off (for the one log line)."""
        # (read without the lock: only the event thread writes the signs, so a task event
        # that changes nothing, the common case, takes no lock)
        record = self._workers.get(hostname)
        if record is None or record.signs.task_event_noted():
            return False
        with self._lock:
            record = self._workers.get(hostname)
            return record is not None and record.signs.task_event() is False

    def skew_and_freq(self, hostname: str) -> Tuple[Optional[float], Optional[float]]:
        """The worker's clock skew and heartbeat interval, for a diagnosis log line."""
        with self._lock:
            record = self._workers.get(hostname)
            return (record.signs.skew, record.freq) if record is not None else (None, None)

    def events_off_locked(self) -> Set[str]:
        """Workers whose task events are diagnosed off."""
        return {h for h, r in self._workers.items() if r.signs.task_events is False}

    def events_off(self, now: float) -> Set[str]:
        with self._lock:
            return self.events_off_locked() & self.up_hosts_locked(now)

    def offline(self, hostname: str) -> Optional[int]:
        """A graceful shutdown: the worker leaves at once, so nobody is paged. Returns its
        last `processed` count, if known."""
        with self._lock:
            record = self._workers.pop(hostname, None)
            if record is None:
                return None
            self._budget.release("worker")
            return record.processed

    def clock_offset(self, hostname: str) -> Optional[float]:
        """How far the exporter's clock is ahead of the worker's, by its last event (arrival
        minus the worker's timestamp; the transport's latency included); None if unknown."""
        with self._lock:
            record = self._workers.get(hostname)
            return None if record is None else record.last_seen - record.sender_timestamp

    def up_count(self, now: float) -> int:
        with self._lock:
            return len(self.up_hosts_locked(now))

    def up_hosts(self, now: float) -> Set[str]:
        with self._lock:
            return self.up_hosts_locked(now)

    # -- with the lock held -------------------------------------------------------------

    def _up(self, record: WorkerRecord, now: float) -> bool:
        return verdict(self.liveness, now, record.last_seen, record.freq) is Verdict.ALIVE

    def up_hosts_locked(self, now: float) -> Set[str]:
        return {host for host, r in self._workers.items() if self._up(r, now)}

    def get_locked(self, hostname: str) -> Optional[WorkerRecord]:
        return self._workers.get(hostname)

    def sweep_locked(self, now: float) -> List[str]:
        """Remove workers past --worker-ttl; returns their hostnames."""
        dead = [h for h, r in self._workers.items() if not self.liveness.is_kept(r.last_seen, now)]
        for host in dead:
            del self._workers[host]
        self._budget.release("worker", len(dead), expired=True)
        return dead

    def snapshot_locked(
        self,
        now: float,
        pool_sizes: Optional[Dict[str, int]] = None,
        reserved: Optional[Dict[str, int]] = None,
        queues: Optional[Mapping[str, Tuple[str, ...]]] = None,
    ) -> WorkerSnapshot:
        return WorkerSnapshot(
            [
                WorkerView(
                    r.hostname,
                    self._up(r, now),
                    r.last_seen,
                    r.freq,
                    r.active,
                    r.processed,
                    r.sw_ident,
                    r.sw_ver,
                    r.sw_sys,
                    r.signs.task_events,
                    r.signs.skew,
                )
                for r in self._workers.values()
                if self.liveness.is_kept(r.last_seen, now)
            ],
            pool_sizes if pool_sizes is not None else {},
            reserved if reserved is not None else {},
            queues if queues is not None else {},
        )
