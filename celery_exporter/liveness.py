"""The one rule for "is this worker up", and for how long a silent worker stays visible.

A worker is up while its last heartbeat (exporter clock at receipt) is younger than the
worker timeout, or than HEARTBEAT_MISSES of its own announced heartbeat intervals when that
is longer (workers run with a long --heartbeat-interval). A worker that went silent without
worker-offline stays visible, down, until the worker TTL has passed, so alerts can fire.

The worker store applies this rule when it takes a snapshot, so the collector, the status
page and the poller read the verdict instead of computing it again.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# A worker is considered down after missing this many of its own announced heartbeats,
# when that is longer than --worker-timeout (e.g. workers run with --heartbeat-interval 60).
HEARTBEAT_MISSES = 3


@dataclasses.dataclass(frozen=True)
class Liveness:
    worker_timeout: float  # --worker-timeout
    worker_ttl: float  # --worker-ttl

    def timeout(self, freq: Optional[float]) -> float:
        """The heartbeat age past which a worker with announced interval `freq` is down."""
        if freq and freq > 0:
            return max(self.worker_timeout, HEARTBEAT_MISSES * freq)
        return self.worker_timeout

    def is_up(self, last_seen: float, freq: Optional[float], now: float) -> bool:
        return now - last_seen <= self.timeout(freq)

    def is_kept(self, last_seen: float, now: float) -> bool:
        """Whether a worker last heard from at `last_seen` is still shown (up or down)."""
        return now - last_seen <= self.worker_ttl
