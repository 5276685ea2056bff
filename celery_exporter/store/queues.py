"""Queues: the last good queue-length poll, the poller's own state, and what `inspect`
said about which workers consume which queue with how many processes.

Written by the queue poller and the inspector threads; the worker -> queues map is also
read, without the lock, by the event handler (it is replaced whole, never mutated).
"""

from __future__ import annotations

import dataclasses
import threading
from types import MappingProxyType
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Set, Tuple


class QueueDepth(NamedTuple):
    messages: int  # ready messages
    consumers: Optional[int]  # None where the broker cannot tell (Redis)


class QueueCapacity(NamedTuple):
    workers: int  # workers up (by heartbeat) consuming the queue
    processes: int  # their pool processes


@dataclasses.dataclass(frozen=True)
class QueueSnapshot:
    depths: Dict[str, QueueDepth]
    capacity: Dict[str, QueueCapacity]  # empty until an inspect has answered
    poll_success: Optional[bool]  # None before the first poll
    poll_duration: Optional[float]
    poll_last_success: Optional[float]
    poll_errors: Dict[str, int]
    poll_method: Optional[str]  # how the last successful poll read the lengths


POLL_ERROR_REASONS = ("broker", "inspect", "error")


class QueueStore:
    def __init__(self, lock: threading.Lock, series_ttl: float):
        self._lock = lock
        self._ttl = series_ttl
        self._depths: Dict[str, QueueDepth] = {}
        self._poll_success: Optional[bool] = None
        self._poll_duration: Optional[float] = None
        self._poll_last_success: Optional[float] = None
        self._poll_method: Optional[str] = None
        self._poll_errors: Dict[str, int] = dict.fromkeys(POLL_ERROR_REASONS, 0)
        # worker hostname -> queue names it consumes; swapped whole (see the module doc)
        self._worker_queues: Mapping[str, Tuple[str, ...]] = MappingProxyType({})
        self._worker_processes: Dict[str, int] = {}
        # worker hostname -> (its pool size, when inspect last reported it): kept while a
        # worker misses an inspect's replies, forgotten --series-ttl after its last report
        self._pool_sizes: Dict[str, Tuple[int, float]] = {}
        self._capacity_known = False
        # queue -> when a worker last reported consuming it (inspect); polled for
        # --series-ttl after that, so a queue whose workers scaled to zero keeps its length
        self._reported: Dict[str, float] = {}

    # -- writers (take the lock) --------------------------------------------------------

    def poll_succeeded(
        self, depths: Mapping[str, Tuple[int, Optional[int]]], duration: float, now: float, method: Optional[str] = None
    ) -> None:
        with self._lock:
            if method is not None:
                self._poll_method = method
            # queues no longer polled disappear with this poll
            self._depths = {queue: QueueDepth(*depth) for queue, depth in depths.items()}
            self._poll_success = True
            self._poll_duration = duration
            self._poll_last_success = now

    def poll_failed(self, duration: float) -> None:
        """A queue-length poll failed (its error is counted by count_error)."""
        with self._lock:
            self._poll_success = False  # the last good values stay
            self._poll_duration = duration

    def count_error(self, reason: str) -> None:
        with self._lock:
            self._poll_errors[reason] = self._poll_errors.get(reason, 0) + 1

    def set_worker_queues(
        self,
        mapping: Mapping[str, Sequence[str]],
        processes: Optional[Mapping[str, int]] = None,
        now: Optional[float] = None,
    ) -> None:
        """What `inspect` said: the queues each worker consumes and its pool size."""
        frozen = MappingProxyType({host: tuple(queues) for host, queues in mapping.items()})
        with self._lock:
            self._worker_queues = frozen  # one reference swap: lock-free readers see old or new, whole
            if processes is not None:
                self._worker_processes = dict(processes)
                self._capacity_known = True
                if now is not None:
                    for host, size in processes.items():
                        if size > 0:  # (0: a pool whose stats tell no size)
                            self._pool_sizes[host] = (size, now)
            if now is not None:
                for queues in frozen.values():
                    for queue in queues:
                        self._reported[queue] = now

    # -- lock-free reader ---------------------------------------------------------------

    @property
    def worker_queues(self) -> Mapping[str, Tuple[str, ...]]:
        return self._worker_queues

    # -- with the lock held -------------------------------------------------------------

    def reported_locked(self, now: float) -> Set[str]:
        """Queues a worker reported consuming within --series-ttl."""
        return {q for q, seen in self._reported.items() if now - seen <= self._ttl}

    def sweep_locked(self, now: float) -> None:
        for queue in [q for q, seen in self._reported.items() if now - seen > self._ttl]:
            del self._reported[queue]  # not a label set: not counted as expired
        for host in [h for h, (_, seen) in self._pool_sizes.items() if now - seen > self._ttl]:
            del self._pool_sizes[host]  # (its worker's label set is counted, not this)

    def pool_sizes_locked(self, now: float) -> Dict[str, int]:
        """Each worker's pool size, as inspect last reported it within --series-ttl."""
        return {host: size for host, (size, seen) in self._pool_sizes.items() if now - seen <= self._ttl}

    def snapshot_locked(self, up_hosts: Set[str]) -> QueueSnapshot:
        return QueueSnapshot(
            depths=dict(self._depths),
            capacity=self._capacity(up_hosts),
            poll_success=self._poll_success,
            poll_duration=self._poll_duration,
            poll_last_success=self._poll_last_success,
            poll_errors=dict(self._poll_errors),
            poll_method=self._poll_method,
        )

    def _capacity(self, up_hosts: Set[str]) -> Dict[str, QueueCapacity]:
        """Per queue, the workers consuming it that are up now (by heartbeat), and their processes."""
        if not self._capacity_known:
            return {}
        capacity: Dict[str, QueueCapacity] = {q: QueueCapacity(0, 0) for q in self._depths}
        for host, queues in self._worker_queues.items():
            up = host in up_hosts
            for queue in queues:
                workers, processes = capacity.get(queue, QueueCapacity(0, 0))
                if up:
                    workers, processes = workers + 1, processes + self._worker_processes.get(host, 0)
                capacity[queue] = QueueCapacity(workers, processes)
        return capacity
