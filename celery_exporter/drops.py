"""Events (or messages) not turned into metrics: counted by reason, logged once per reason."""

from __future__ import annotations

import logging
from typing import Set

from celery_exporter.store.own import ExporterState

log = logging.getLogger("celery_exporter.handlers")


class Drops:
    def __init__(self, exporter: ExporterState):
        self._exporter = exporter
        self._logged: Set[str] = set()

    def __call__(self, reason: str, detail: str, n: int = 1) -> None:
        """Count `n` dropped events of `reason` (one of catalogue.DROP_REASONS); log the first."""
        if n <= 0:
            return
        self._exporter.count_dropped(reason, n)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "dropped event(s), reason=%s: %s (logged once per reason; see celery_exporter_events_dropped_total)",
                reason,
                detail,
            )
