"""What the diagnosis keeps besides the workers' signs (which live on their records): the task
names received without a task-sent (until --series-ttl after the last one, or a task-sent of
that name), events refused for their content type, and the enable_events broadcasts sent.
Written by the event thread (and the events-enabler), under the store's lock."""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, Optional

from celery_exporter.diagnosis import CONTENT_TYPE_LABELS, MAX_SENT_MISSING


@dataclasses.dataclass(frozen=True)
class DiagnosisSnapshot:
    sent_missing: Dict[str, float]  # task name -> when a task of it last came without task-sent
    undecodable: Dict[str, int]  # by diagnosis.CONTENT_TYPE_LABELS
    enable_events_sent: int  # workers asked to enable task events (--enable-events)


class DiagnosisState:
    def __init__(self, lock: threading.Lock, series_ttl: float):
        self._lock = lock
        self._ttl = series_ttl
        self._sent_missing: Dict[str, float] = {}
        self._undecodable: Dict[str, int] = dict.fromkeys(CONTENT_TYPE_LABELS, 0)
        self._enable_events_sent = 0

    def sent_missing(self, name: str, now: float) -> bool:
        """A task of `name` was received and no task-sent came for it. True when the name is
        new (for the one log line); a new name past MAX_SENT_MISSING is not kept."""
        with self._lock:
            known = name in self._sent_missing
            if not known and len(self._sent_missing) >= MAX_SENT_MISSING:
                return False
            self._sent_missing[name] = now
            return not known

    def sent_seen(self, name: str) -> None:
        """A task-sent of `name` came: its publisher sends them."""
        if name in self._sent_missing:  # (read without the lock: only this thread writes it)
            with self._lock:
                self._sent_missing.pop(name, None)

    def undecodable(self, label: str) -> None:
        with self._lock:
            self._undecodable[label] += 1

    def enable_events_sent(self, n: int) -> None:
        with self._lock:
            self._enable_events_sent += n

    def sweep_locked(self, now: float) -> None:
        for name in [n for n, at in self._sent_missing.items() if now - at > self._ttl]:
            del self._sent_missing[name]

    def snapshot_locked(self, now: Optional[float] = None) -> DiagnosisSnapshot:
        return DiagnosisSnapshot(
            sent_missing={n: at for n, at in self._sent_missing.items() if now is None or now - at <= self._ttl},
            undecodable=dict(self._undecodable),
            enable_events_sent=self._enable_events_sent,
        )
