"""In-memory state, by concern, behind the exporter's only lock.

| part | class | written by |
|---|---|---|
| `tasks` | task series: state counters, histograms, last-seen times, exceptions | event thread |
| `workers` | workers: last heartbeat and what it said | event thread |
| `queues` | queue lengths, poll state, the inspect map | queue poller, inspector |
| `exporter` | events received and dropped, broker connection, uuid-map size | event thread |
| `schedule` | beat schedule entries and the reader's errors | beat-schedule thread |
| `series` | the --max-series budget shared by tasks, exceptions and workers | (the parts above) |

Writers call one method of one part per change; each takes the shared lock. A scrape takes
one snapshot of every part under the lock (copies, typed per part) and renders it outside.
Label sets past their TTL are hidden from snapshots at once and removed from memory by
sweep(), which the event thread calls on its tick.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Set

from celery_exporter.liveness import Liveness
from celery_exporter.settings import Settings
from celery_exporter.store.budget import SeriesBudget, SeriesSnapshot
from celery_exporter.store.own import ExporterSnapshot, ExporterState
from celery_exporter.store.queues import QueueSnapshot, QueueStore
from celery_exporter.store.schedule import ScheduleSnapshot, ScheduleState
from celery_exporter.store.tasks import TaskSeriesStore, TaskSnapshot
from celery_exporter.store.workers import WorkerSnapshot, WorkerStore

__all__ = ["Snapshot", "Store"]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Copies of everything a scrape renders, taken at `now` under the lock."""

    now: float
    tasks: TaskSnapshot
    workers: WorkerSnapshot
    queues: QueueSnapshot
    exporter: ExporterSnapshot
    series: SeriesSnapshot
    schedule: ScheduleSnapshot


class Store:
    def __init__(self, settings: Settings):
        self.lock = threading.Lock()
        self.budget = SeriesBudget(settings.max_series)
        self.liveness = Liveness(settings.worker_timeout, settings.worker_ttl)
        self.tasks = TaskSeriesStore(self.lock, settings, self.budget)
        self.workers = WorkerStore(self.lock, self.liveness, self.budget)
        self.queues = QueueStore(self.lock, settings.series_ttl)
        self.exporter = ExporterState(self.lock)
        self.schedule = ScheduleState(self.lock, settings.beat_entries, settings.beat_database_app is not None)

    def queue_names(self, now: float) -> Set[str]:
        """Queues discovered so far and not expired: those of live task label sets (from
        events) and those workers reported consuming within --series-ttl."""
        with self.lock:
            return self.tasks.queue_names_locked(now) | self.queues.reported_locked(now)

    def sweep(self, now: float) -> int:
        """Remove label sets past their TTL. Returns how many were removed."""
        with self.lock:
            removed = self.tasks.sweep_locked(now) + self.workers.sweep_locked(now)
            self.queues.sweep_locked(now)
            return removed

    def snapshot(self, now: float) -> Snapshot:
        with self.lock:
            workers = self.workers.snapshot_locked(now)
            return Snapshot(
                now=now,
                tasks=self.tasks.snapshot_locked(now),
                workers=workers,
                queues=self.queues.snapshot_locked(workers.up_hosts),
                exporter=self.exporter.snapshot_locked(),
                series=self.budget.snapshot(),
                schedule=self.schedule.snapshot_locked(),
            )
