"""The exporter's notion of "now".

Everything that needs the time gets a clock object instead of calling time.time()
itself, so tests can drive expiry and liveness with a fake clock or freezegun.
"""

import time


class Clock:
    """Wall clock in epoch seconds. Calls time.time() on every call, so freezegun can
    patch it (a time.time bound as a default argument would escape the patch)."""

    def now(self) -> float:
        return time.time()


class FakeClock(Clock):
    """A clock that only moves when told to. Used by tests and the benchmark replayer."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t
