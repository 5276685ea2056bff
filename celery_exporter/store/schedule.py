"""The beat schedule's entries (from --app), and the reader's own error count."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Sequence, Tuple

if TYPE_CHECKING:
    from celery_exporter.beat import Entry


@dataclasses.dataclass(frozen=True)
class ScheduleSnapshot:
    entries: Tuple["Entry", ...]
    read_errors: int  # failed re-reads of a database schedule, since start
    from_database: bool  # whether the entries are re-read (and read_errors is meaningful)


class ScheduleState:
    def __init__(self, lock: threading.Lock, entries: Sequence["Entry"], from_database: bool):
        self._lock = lock
        self._entries: Tuple["Entry", ...] = tuple(entries)
        self._errors = 0
        self._from_database = from_database

    def set_entries(self, entries: Sequence["Entry"]) -> None:
        """The schedule's entries, replaced whole (a database schedule is re-read)."""
        with self._lock:
            self._entries = tuple(entries)

    def count_error(self) -> None:
        with self._lock:
            self._errors += 1

    def snapshot_locked(self) -> ScheduleSnapshot:
        return ScheduleSnapshot(self._entries, self._errors, self._from_database)
