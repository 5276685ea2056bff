"""A background thread that does one piece of work every `interval` seconds until stopped.

Used by the queue poller, the inspector and the beat-schedule reader. A failure of what it
polls is counted (by the subclass, in its own metric) and logged once, and its recovery
once, not on every attempt; a bug in the work is logged with its traceback and counted,
never the end of polling. On stop the thread closes what it holds (its broker connection).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic(threading.Thread):
    what = "?"  # what it polls, for log lines

    def __init__(self, name: str, interval: float, stop_event: threading.Event):
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.stop_event = stop_event
        self._failing = False

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    if self.due():
                        self.poll_once()
                except Exception:  # a bug must not end polling for good
                    log.exception("polling %s failed unexpectedly", self.what)
                    self.count_error("error")
                self.stop_event.wait(self.next_wait())
        finally:
            self.close()

    def poll_once(self) -> None:
        raise NotImplementedError  # every subclass does its own work

    def due(self) -> bool:
        """Whether to poll now (checked after every wait): always, unless a subclass polls
        on its own schedule."""
        return True

    def next_wait(self) -> float:
        """How long to wait before the next check."""
        return self.interval

    def count_error(self, reason: str) -> None:
        raise NotImplementedError  # every subclass counts in its own metric

    def close(self) -> None:
        """Release what the thread holds; called once, in the thread, when it stops."""

    def failed(self, reason: str, detail: str) -> None:
        self.count_error(reason)
        if not self._failing:
            self._failing = True
            log.warning(
                "polling %s failed (%s); keeping the last values and retrying every %g s",
                self.what,
                detail,
                self.interval,
            )

    def succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.info("polling %s works again", self.what)
