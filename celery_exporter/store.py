"""In-memory series: task counters and histograms, exceptions, workers, self-metrics.

This module holds the exporter's only lock. Writers (the event receiver, later the queue
poller) call one method per event; the collector takes a snapshot under the lock and
renders it outside. Every label set records when it was last updated: label sets older
than their TTL are hidden from scrapes at once and swept from memory by sweep().
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from celery_exporter import catalogue
from celery_exporter.settings import Settings, effective_worker_timeout

N_STATES = len(catalogue.TASK_STATES)
N_HISTOGRAMS = len(catalogue.HISTOGRAMS)
# state index -> position in TaskSeries.last_seen
LAST_SEEN_INDEX = {catalogue.STATE_INDEX[state]: i for i, (state, _, _) in enumerate(catalogue.LAST_SEEN)}

TaskKey = Tuple[str, ...]  # (name, queue_name) or (name, queue_name, hostname)


class TaskSeries:
    """Counters and histograms of one task label set."""

    __slots__ = ("counts", "hist_counts", "hist_sums", "updated", "last_seen")

    def __init__(self, now: float):
        self.counts = [0] * N_STATES
        self.hist_counts: List[Optional[List[int]]] = [None] * N_HISTOGRAMS
        self.hist_sums = [0.0] * N_HISTOGRAMS
        self.updated = now
        # exporter time of the last event of each catalogue.LAST_SEEN state, or None
        self.last_seen: List[Optional[float]] = [None] * len(catalogue.LAST_SEEN)


@dataclasses.dataclass
class WorkerRecord:
    hostname: str
    last_seen: float            # exporter clock when the last worker event arrived
    sender_timestamp: float     # the worker's own timestamp of that event
    freq: Optional[float] = None
    active: Optional[int] = None
    processed: Optional[int] = None
    sw_ident: str = ""
    sw_ver: str = ""
    sw_sys: str = ""


@dataclasses.dataclass
class Snapshot:
    """Copies of everything a scrape renders, taken under the lock."""

    now: float
    # (labels, state counts, histogram buckets, histogram sums, last-seen times)
    tasks: List[Tuple[TaskKey, List[int], List[Optional[List[int]]], List[float], List[Optional[float]]]]
    exceptions: List[Tuple[TaskKey, str, int]]
    workers: List[WorkerRecord]
    events: Dict[str, int]
    dropped: Dict[str, int]
    connected: bool
    reconnects: int
    last_event: Optional[float]
    series: Dict[str, int]
    expired: Dict[str, int]
    refused: Dict[str, int]
    tasks_tracked: int
    tasks_evicted: int
    # queue_name -> (messages, consumers or None)
    queues: Dict[str, Tuple[int, Optional[int]]]
    # queue_name -> (workers up consuming it, their pool processes); only after an inspect
    queue_capacity: Dict[str, Tuple[int, int]]
    poll_success: Optional[bool]
    poll_duration: Optional[float]
    poll_last_success: Optional[float]
    poll_errors: Dict[str, int]
    beat_entries: Tuple = ()


class Store:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.runtime_bounds = tuple(settings.runtime_buckets)
        self.wait_bounds = tuple(settings.wait_buckets)
        self._bounds = (self.runtime_bounds, self.wait_bounds, self.wait_bounds)
        self._tasks: Dict[TaskKey, TaskSeries] = {}
        self._exceptions: Dict[Tuple[TaskKey, str], List] = {}  # -> [count, updated]
        self._workers: Dict[str, WorkerRecord] = {}
        self._events: Dict[str, int] = {}
        self._dropped: Dict[str, int] = {reason: 0 for reason in catalogue.DROP_REASONS}
        self._expired = {"task": 0, "exception": 0, "worker": 0}
        self._refused = {"task": 0, "exception": 0, "worker": 0}
        self._connected = False
        self._reconnects = 0
        self._last_event: Optional[float] = None
        self._tasks_tracked = 0
        self._tasks_evicted = 0
        # worker hostname -> queue names it consumes. Written whole by the queue poller
        # (replaced, never mutated), read by the event handler without the lock.
        self._worker_queues: Mapping[str, Tuple[str, ...]] = MappingProxyType({})
        self._worker_processes: Dict[str, int] = {}
        self._capacity_known = False
        # queue -> when a worker last reported consuming it (inspect); polled for
        # --series-ttl after that, so a queue whose workers scaled to zero keeps its length
        self._reported_queues: Dict[str, float] = {}
        self._queues: Dict[str, Tuple[int, Optional[int]]] = {}
        self._poll_success: Optional[bool] = None
        self._poll_duration: Optional[float] = None
        self._poll_last_success: Optional[float] = None
        self._poll_errors: Dict[str, int] = {"broker": 0, "inspect": 0, "error": 0, "schedule": 0}
        self._beat_entries: Tuple = tuple(settings.beat_entries)

    # -- writers ------------------------------------------------------------------------

    def _series_count(self) -> int:
        return len(self._tasks) + len(self._exceptions) + len(self._workers)

    def _task_series(self, key: TaskKey, now: float) -> Optional[TaskSeries]:
        series = self._tasks.get(key)
        if series is None:
            if self._series_count() >= self.settings.max_series:
                self._refused["task"] += 1
                return None
            # All state counters start at 0, so the first failure shows in increase().
            series = self._tasks[key] = TaskSeries(now)
        return series

    def task_event(
        self,
        key: TaskKey,
        state: int,
        now: float,
        observations: Sequence[Tuple[int, float]] = (),
    ) -> bool:
        """Count one task event of `state` (index into TASK_STATES) for `key`, and
        observe (histogram index, seconds) pairs. False if the label set was refused."""
        with self.lock:
            series = self._task_series(key, now)
            if series is None:
                self._dropped["series_limit"] += 1
                return False
            series.counts[state] += 1
            series.updated = now
            last = LAST_SEEN_INDEX.get(state)
            if last is not None:
                series.last_seen[last] = now
            for index, value in observations:
                counts = series.hist_counts[index]
                bounds = self._bounds[index]
                if counts is None:
                    counts = series.hist_counts[index] = [0] * (len(bounds) + 1)
                counts[bisect_left(bounds, value)] += 1
                series.hist_sums[index] += value
            return True

    def task_exception(self, key: TaskKey, exception: str, now: float) -> bool:
        with self.lock:
            entry = self._exceptions.get((key, exception))
            if entry is None:
                if self._series_count() >= self.settings.max_series:
                    self._refused["exception"] += 1
                    return False
                entry = self._exceptions[(key, exception)] = [0, now]
            entry[0] += 1
            entry[1] = now
            return True

    def worker_event(
        self,
        hostname: str,
        now: float,
        sender_timestamp: float,
        freq: Optional[float] = None,
        active: Optional[int] = None,
        processed: Optional[int] = None,
        software: Optional[Tuple[str, str, str]] = None,
    ) -> bool:
        """A worker-online or worker-heartbeat. Fields left None keep their last value
        (the on-demand 'wakeup' heartbeat carries no active/processed)."""
        with self.lock:
            record = self._workers.get(hostname)
            if record is None:
                if self._series_count() >= self.settings.max_series:
                    self._refused["worker"] += 1
                    return False
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
            return True

    def worker_offline(self, hostname: str) -> None:
        """A graceful shutdown: the worker leaves at once, so nobody is paged."""
        with self.lock:
            self._workers.pop(hostname, None)

    def count_event(self, type_label: str, now: float) -> None:
        with self.lock:
            self._events[type_label] = self._events.get(type_label, 0) + 1
            self._last_event = now

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self._dropped[reason] += n

    def set_connected(self, connected: bool) -> None:
        with self.lock:
            self._connected = connected

    def count_reconnect(self) -> None:
        with self.lock:
            self._reconnects += 1

    def set_tracker_stats(self, tracked: int, evicted: int) -> None:
        with self.lock:
            self._tasks_tracked = tracked
            self._tasks_evicted = evicted

    @property
    def worker_queues(self) -> Mapping[str, Tuple[str, ...]]:
        return self._worker_queues

    def set_worker_queues(self, mapping: Mapping[str, Sequence[str]],
                          processes: Optional[Mapping[str, int]] = None, now: Optional[float] = None) -> None:
        """What `inspect` said: the queues each worker consumes and its pool size."""
        frozen = MappingProxyType({host: tuple(queues) for host, queues in mapping.items()})
        with self.lock:
            self._worker_queues = frozen  # one reference swap: lock-free readers see old or new, whole
            if processes is not None:
                self._worker_processes = dict(processes)
                self._capacity_known = True
            if now is not None:
                for queues in frozen.values():
                    for queue in queues:
                        self._reported_queues[queue] = now

    def set_beat_entries(self, entries: Sequence) -> None:
        """The beat schedule's entries, replaced whole (a database schedule is re-read)."""
        with self.lock:
            self._beat_entries = tuple(entries)

    # -- queue poller -------------------------------------------------------------------

    def queue_names(self, now: float) -> set:
        """Queues discovered so far and not expired: those of live task label sets (from
        events) and those workers reported consuming within --series-ttl."""
        with self.lock:
            names = {key[1] for key, s in self._tasks.items() if self._task_alive(s.updated, now)}
            names.update(q for q, seen in self._reported_queues.items() if self._task_alive(seen, now))
            return names

    def _is_up(self, record: WorkerRecord, now: float) -> bool:
        return now - record.last_seen <= effective_worker_timeout(self.settings.worker_timeout, record.freq)

    def workers_up(self, now: float) -> int:
        with self.lock:
            return sum(1 for r in self._workers.values() if self._is_up(r, now))

    def queue_poll_succeeded(self, depths: Mapping[str, Tuple[int, Optional[int]]], duration: float,
                             now: float) -> None:
        with self.lock:
            self._queues = dict(depths)  # queues no longer polled disappear with this poll
            self._poll_success = True
            self._poll_duration = duration
            self._poll_last_success = now

    def queue_poll_failed(self, duration: float) -> None:
        """A queue-length poll failed (its error is counted by count_poll_error)."""
        with self.lock:
            self._poll_success = False  # the last good values stay
            self._poll_duration = duration

    def count_poll_error(self, reason: str) -> None:
        with self.lock:
            self._poll_errors[reason] = self._poll_errors.get(reason, 0) + 1

    def _queue_capacity(self, now: float) -> Dict[str, Tuple[int, int]]:
        """Per queue, the workers consuming it that are up now (by heartbeat), and their processes."""
        if not self._capacity_known:
            return {}
        capacity: Dict[str, List[int]] = {q: [0, 0] for q in self._queues}
        for host, queues in self._worker_queues.items():
            record = self._workers.get(host)
            up = record is not None and self._is_up(record, now)
            for queue in queues:
                entry = capacity.setdefault(queue, [0, 0])
                if up:
                    entry[0] += 1
                    entry[1] += self._worker_processes.get(host, 0)
        return {q: (w, p) for q, (w, p) in capacity.items()}

    # -- expiry -------------------------------------------------------------------------

    def _task_alive(self, updated: float, now: float) -> bool:
        return now - updated <= self.settings.series_ttl

    def _worker_alive(self, record: WorkerRecord, now: float) -> bool:
        return now - record.last_seen <= self.settings.worker_ttl

    def sweep(self, now: float) -> int:
        """Remove label sets past their TTL. Returns how many were removed."""
        with self.lock:
            dead_tasks = [k for k, s in self._tasks.items() if not self._task_alive(s.updated, now)]
            for key in dead_tasks:
                del self._tasks[key]
            dead_exc = [k for k, e in self._exceptions.items() if not self._task_alive(e[1], now)]
            for key in dead_exc:
                del self._exceptions[key]
            dead_workers = [h for h, r in self._workers.items() if not self._worker_alive(r, now)]
            for host in dead_workers:
                del self._workers[host]
            for queue in [q for q, seen in self._reported_queues.items() if not self._task_alive(seen, now)]:
                del self._reported_queues[queue]  # not a label set: not counted as expired
            self._expired["task"] += len(dead_tasks)
            self._expired["exception"] += len(dead_exc)
            self._expired["worker"] += len(dead_workers)
            return len(dead_tasks) + len(dead_exc) + len(dead_workers)

    # -- readers ------------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        with self.lock:
            tasks = [
                (key, s.counts[:], [c[:] if c is not None else None for c in s.hist_counts], s.hist_sums[:],
                 s.last_seen[:])
                for key, s in self._tasks.items()
                if self._task_alive(s.updated, now)
            ]
            exceptions = [
                (key, exc, entry[0])
                for (key, exc), entry in self._exceptions.items()
                if self._task_alive(entry[1], now)
            ]
            workers = [
                dataclasses.replace(r) for r in self._workers.values() if self._worker_alive(r, now)
            ]
            return Snapshot(
                now=now,
                tasks=tasks,
                exceptions=exceptions,
                workers=workers,
                events=dict(self._events),
                dropped=dict(self._dropped),
                connected=self._connected,
                reconnects=self._reconnects,
                last_event=self._last_event,
                series={"task": len(self._tasks), "exception": len(self._exceptions), "worker": len(self._workers)},
                expired=dict(self._expired),
                refused=dict(self._refused),
                tasks_tracked=self._tasks_tracked,
                tasks_evicted=self._tasks_evicted,
                queues=dict(self._queues),
                queue_capacity=self._queue_capacity(now),
                poll_success=self._poll_success,
                poll_duration=self._poll_duration,
                poll_last_success=self._poll_last_success,
                poll_errors=dict(self._poll_errors),
                beat_entries=self._beat_entries,
            )
