"""The exporter's own state: events received and dropped, the broker connection, and the
uuid map's size, written by the event thread; HTTP requests refused and failed reloads of
the web config, written by the HTTP threads."""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, Optional, Tuple

from celery_exporter import catalogue


@dataclasses.dataclass(frozen=True)
class ExporterSnapshot:
    events: Dict[str, int]  # by event type ("other" for unknown types)
    dropped: Dict[str, int]  # by catalogue.DROP_REASONS
    connected: bool
    reconnects: int
    last_event: Optional[float]
    tasks_tracked: int
    tasks_evicted: int
    reader: Optional[str]  # the event reader of the current or last connection
    http_refused: Dict[str, int]  # by catalogue.HTTP_REFUSED_REASONS
    web_config_reload_errors: int
    learned: Optional[Tuple[float, str]]  # (when, what) the last learning from inspect at a connect said


class ExporterState:
    def __init__(self, lock: threading.Lock):
        self._lock = lock
        # every label count_event writes, from the start (see there); those at 0 are not shown
        self._events: Dict[str, int] = dict.fromkeys(sorted(catalogue.KNOWN_EVENT_TYPES) + ["other"], 0)
        self._dropped: Dict[str, int] = dict.fromkeys(catalogue.DROP_REASONS, 0)
        self._connected = False
        self._connected_since: Optional[float] = None
        self._heard: Optional[float] = None
        self._reconnects = 0
        self._last_event: Optional[float] = None
        self._tasks_tracked = 0
        self._tasks_evicted = 0
        self._reader: Optional[str] = None
        self._http_refused: Dict[str, int] = dict.fromkeys(catalogue.HTTP_REFUSED_REASONS, 0)
        self._web_config_reload_errors = 0
        self._learned: Optional[Tuple[float, str]] = None

    def count_event(self, type_label: str, now: float) -> None:
        """One event of `type_label` (a known event type, or "other"). Without the lock, the
        one writer that takes none: this is the only write made for every event, the event
        thread is its only caller, and every key it writes is in the dict from the start, so
        the scrape's copy (under the lock) never sees the dict change size and reads each
        count whole, as it would between two calls."""
        self._events[type_label] += 1
        self._last_event = now

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason] += n

    def set_connected(self, connected: bool, now: Optional[float] = None, reader: Optional[str] = None) -> None:
        """Set by the event thread; `now` (when connected) starts connected_since; `reader`
        names how events are read on this connection (kept after it is lost)."""
        if reader is not None:
            self._reader = reader
        if connected and not self._connected:
            self._connected_since = now
        elif not connected:
            self._connected_since = None
        self._connected = connected  # one attribute store: readers need no lock

    @property
    def connected(self) -> bool:
        """Read without the lock, for /-/ready: a bool attribute is read whole."""
        return self._connected

    @property
    def connected_since(self) -> Optional[float]:
        """Exporter clock when the event stream last got connected; None while it is not
        (or when set_connected was given no time). Read by the event thread, its writer."""
        return self._connected_since

    def heard(self, now: float) -> None:
        """The broker sent something (a pong, an AMQP frame) on the event connection: it was
        alive at `now`. Set by the event thread."""
        self._heard = now

    @property
    def heard_at(self) -> Optional[float]:
        """When the event connection last proved alive: an event or any other reply."""
        if self._heard is None or (self._last_event is not None and self._last_event > self._heard):
            return self._last_event
        return self._heard

    def count_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1

    def count_http_refused(self, reason: str) -> None:
        with self._lock:
            self._http_refused[reason] += 1

    def count_web_config_reload_error(self) -> None:
        with self._lock:
            self._web_config_reload_errors += 1

    def set_tracker_stats(self, tracked: int, evicted: int) -> None:
        with self._lock:
            self._tasks_tracked = tracked
            self._tasks_evicted = evicted

    def set_learned(self, now: float, summary: str) -> None:
        """What the event thread learned from `inspect` at a connect (its log line's text)."""
        with self._lock:
            self._learned = (now, summary)

    def snapshot_locked(self) -> ExporterSnapshot:
        return ExporterSnapshot(
            events={label: n for label, n in dict(self._events).items() if n},  # (one instant: a C copy)
            dropped=dict(self._dropped),
            connected=self._connected,
            reconnects=self._reconnects,
            last_event=self._last_event,
            tasks_tracked=self._tasks_tracked,
            tasks_evicted=self._tasks_evicted,
            reader=self._reader,
            http_refused=dict(self._http_refused),
            web_config_reload_errors=self._web_config_reload_errors,
            learned=self._learned,
        )
