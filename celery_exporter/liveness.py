"""The one rule for "is this worker up, or lost", and for how long a silent worker stays visible.

A worker is up while its last heartbeat (exporter clock at receipt) is younger than the
worker timeout, or than HEARTBEAT_MISSES of its own announced heartbeat intervals when that
is longer (workers run with a long --heartbeat-interval). A worker that went silent without
worker-offline stays visible, down, until the worker TTL has passed, so alerts can fire.

Down is not yet lost. `verdict` declares a worker lost, and its runs cut off, only when its
silence proves it: the exporter listened all the while (connected, and its event thread not
stalled: see Listening) and heard the broker after the worker's deadline, so the heartbeats
were due and would have arrived. A worker that began a warm shutdown (worker-offline) sends
no heartbeats: it is lost only if nothing ended its runs within the worker TTL while the
exporter listened all along.

The worker store applies the rule when it takes a snapshot (`up`), so the collector, the
status page and the poller read the verdict instead of computing it again; the store applies
it on the event thread's tick to take the runs of lost workers.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

# A worker is considered down after missing this many of its own announced heartbeats,
# when that is longer than --worker-timeout (e.g. workers run with --heartbeat-interval 60).
HEARTBEAT_MISSES = 3
# A gap this long between two ticks (normally 0.5 s apart) means the event thread was stalled
# (CPU throttling, a suspended process): the heartbeats of that time are still unread, so
# nobody is declared lost until a whole worker timeout has passed since.
STALL_SECONDS = 5.0


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


class Verdict(enum.Enum):
    ALIVE = "alive"  # up; or no heartbeat known (it cannot be told lost); or draining within the TTL
    DOWN = "down"  # silent past its timeout, not (yet) proven lost
    LOST = "lost"  # silent past its timeout while the exporter listened and heard the broker
    GONE = "gone"  # its warm shutdown outlived the TTL, and the exporter did not listen all along


@dataclasses.dataclass(frozen=True)
class Hearing:
    """What the exporter could hear: listening (connected, not stalled) since `since`, the
    broker last heard at `heard_at` (None: not connected, or never heard)."""

    since: Optional[float] = None
    heard_at: Optional[float] = None


NOT_HEARING = Hearing()


def verdict(
    rule: Liveness,
    now: float,
    last_seen: Optional[float],
    freq: Optional[float] = None,
    left_at: Optional[float] = None,
    hearing: Hearing = NOT_HEARING,
) -> Verdict:
    """The verdict on a worker at `now`, from `last_seen` (exporter clock) and `freq` of its
    last heartbeat (None: none known) and `left_at`, when its worker-offline came if it still
    had runs then.

    Silent past its timeout, it is LOST only if the exporter has listened for longer than
    that timeout and heard the broker after the worker's deadline: the connection was alive
    when the heartbeats were due (one that died silently proves nothing until it is found
    dead, and our own outage declares nobody lost); else DOWN. Without `hearing` nobody is
    LOST: what `up` needs. A worker without heartbeats that began a warm shutdown is ALIVE
    (draining) for --worker-ttl, then LOST if the exporter listened since it left (nothing
    ended its runs: they died with it), else GONE (their end may have come unheard)."""
    if last_seen is None:
        if left_at is None or now - left_at <= rule.worker_ttl:
            return Verdict.ALIVE
        heard_all_along = hearing.since is not None and hearing.since <= left_at
        return Verdict.LOST if heard_all_along else Verdict.GONE
    if rule.is_up(last_seen, freq, now):
        return Verdict.ALIVE
    timeout = rule.timeout(freq)
    since, heard_at = hearing.since, hearing.heard_at
    if since is not None and now - since > timeout and heard_at is not None and heard_at > last_seen + timeout:
        return Verdict.LOST
    return Verdict.DOWN


class Listening:
    """The stall rule, on the event thread's tick: since when the exporter has listened (its
    connection's start, moved to the end of the last stall of the event thread)."""

    def __init__(self) -> None:
        self._last_tick: Optional[float] = None
        self._resumed: Optional[float] = None  # when the last stall ended

    def tick(self, now: float, connected_since: Optional[float]) -> Optional[float]:
        if self._last_tick is not None and now - self._last_tick > STALL_SECONDS:
            self._resumed = now
        self._last_tick = now
        if connected_since is not None and self._resumed is not None:
            return max(connected_since, self._resumed)
        return connected_since
