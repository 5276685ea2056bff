"""In-memory state, by concern, behind the exporter's only lock.

| part | class | written by |
|---|---|---|
| `tasks` | task series: state counters, histograms, last-seen times, exceptions | event thread |
| `workers` | workers: last heartbeat and what it said | event thread |
| `queues` | queue lengths, poll state, the inspect map | queue poller, inspector |
| `exporter` | events received and dropped, broker connection, uuid-map size | event thread |
| `schedule` | beat schedule entries and the reader's errors | beat-schedule thread |
| `running` | tasks in flight: task id -> worker, label set, start | event thread |
| `diagnosis` | task names without task-sent, undecodable events, enable_events sent | event thread, enabler |
| `series` | the --max-series budget shared by tasks, exceptions and workers | (the parts above) |

`running` also holds what the inspector learned from `inspect active` and `inspect reserved`
(`offer_learned`) until the event thread's tick takes it (`take_learned`).

Writers call one method of one part per change; each takes the shared lock (but the event
count by type, ExporterState.count_event, written for every event by its one writer, the
event thread, into a dict of fixed keys; and WorkerStore.task_event's read that changes
nothing). A scrape takes
one snapshot of every part under the lock (copies, typed per part) and renders it outside.
Label sets past their TTL are hidden from snapshots at once and removed from memory by
sweep(), which the event thread calls on its tick. The task parts' rows carry version
numbers, stamped at every change, by which the scrape's layers reuse what they built
(`celery_exporter.versions`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List, Optional, Set, Tuple

from celery_exporter.liveness import Hearing, Liveness, Verdict, verdict
from celery_exporter.settings import Settings
from celery_exporter.store.budget import SeriesBudget, SeriesSnapshot
from celery_exporter.store.diagnosis import DiagnosisSnapshot, DiagnosisState
from celery_exporter.store.own import ExporterSnapshot, ExporterState
from celery_exporter.store.queues import QueueSnapshot, QueueStore
from celery_exporter.store.running import RunningSnapshot, RunningStore, Taken
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
    running: RunningSnapshot
    diagnosis: DiagnosisSnapshot


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
        self.running = RunningStore(self.lock)
        self.diagnosis = DiagnosisState(self.lock, settings.series_ttl)

    def queue_names(self, now: float) -> Set[str]:
        """Queues discovered so far and not expired: those of live task label sets (from
        events) and those workers reported consuming within --series-ttl."""
        with self.lock:
            return self.tasks.queue_names_locked(now) | self.queues.reported_locked(now)

    def sweep(self, now: float) -> int:
        """Remove label sets past their TTL. Returns how many were removed."""
        with self.lock:
            gone = self.workers.sweep_locked(now)
            for host in gone:
                self.running.drop_host_locked(host)
            self.running.sweep_reserved_locked()
            removed = self.tasks.sweep_locked(now) + len(gone)
            self.queues.sweep_locked(now)
            self.diagnosis.sweep_locked(now)
            return removed

    def take_lost_runs(self, now: float, listening_since: Optional[float], heard_at: Optional[float]) -> List[Taken]:
        """The runs (and displaced runs) on workers declared lost at `now` by the liveness
        verdict (liveness.verdict: down while the exporter listened, and the broker heard
        after their deadline; or a warm shutdown that outlived --worker-ttl). Our own outage
        declares nobody lost. The reservations of workers lost or gone are dropped.
        Displaced runs of a worker that is up, or unknown, two timeouts after the
        displacement are forgotten: that worker lived on."""
        hearing = Hearing(listening_since, heard_at)
        taken: List[Taken] = []
        with self.lock:
            verdicts: Dict[str, Tuple[Verdict, float]] = {}
            for host in self.running.hosts_locked():
                state = self._verdict_locked(host, now, hearing, verdicts)[0]
                if state is Verdict.LOST:
                    taken.extend(self.running.take_locked(host))
                elif state is Verdict.GONE:
                    self.running.drop_host_locked(host)
            for host in self.running.reserving_hosts_locked():  # (those with runs were judged above)
                if self._verdict_locked(host, now, hearing, verdicts)[0] in (Verdict.LOST, Verdict.GONE):
                    self.running.drop_reserved_locked(host)
            displaced = self.running.displaced_locked()
            for uuid, entry in list(displaced.items()):
                state, timeout = self._verdict_locked(entry.host, now, hearing, verdicts)
                if state is Verdict.LOST:
                    taken.append((uuid, entry.key))
                    del displaced[uuid]
                elif state is Verdict.ALIVE and entry.when < now - 2 * timeout:
                    del displaced[uuid]
        return taken

    def _verdict_locked(
        self, host: str, now: float, hearing: Hearing, known: Dict[str, Tuple[Verdict, float]]
    ) -> Tuple[Verdict, float]:
        """The worker's liveness verdict and timeout, once per host in `known`."""
        found = known.get(host)
        if found is None:
            worker = self.workers.get_locked(host)
            draining = self.running.draining_locked(host)
            left_at = draining[0] if draining is not None else None
            last_seen, freq = (worker.last_seen, worker.freq) if worker is not None else (None, None)
            found = (verdict(self.liveness, now, last_seen, freq, left_at, hearing), self.liveness.timeout(freq))
            known[host] = found
        return found

    def take_restarted_runs(self, hostname: str, processed: Optional[int]) -> List[Taken]:
        """A worker-online of a new process under the same name: its `processed` count
        (tasks accepted since the process started) is below the last one heard (before a
        worker-offline, if one came: a warm shutdown cut short), or below the number of runs
        the exporter holds for that name, each of which the old process accepted. The old
        process's runs were cut off. (A consumer restart after a broker blip sends
        worker-offline and worker-online too, from the same process: its count is neither.)"""
        with self.lock:
            runs = self.running.count_locked(hostname)
            if processed is None or not runs:
                return []
            worker = self.workers.get_locked(hostname)
            if worker is not None:
                last = worker.processed
            else:  # gone since its worker-offline, if it sent one
                draining = self.running.draining_locked(hostname)
                last = draining[1] if draining is not None else None
            if processed >= max(last or 0, runs):
                return []
            return self.running.take_locked(hostname)

    def snapshot(self, now: float, fresh: bool = False) -> Snapshot:
        """`fresh`: task rows made anew from the live data, not the ones kept by version
        (for the oracle that checks the version stamps)."""
        with self.lock:
            workers = self.workers.snapshot_locked(
                now, self.queues.pool_sizes_locked(now), self.running.reserved_locked(), self.queues.worker_queues
            )
            return Snapshot(
                now=now,
                tasks=self.tasks.snapshot_locked(now, fresh),
                workers=workers,
                queues=self.queues.snapshot_locked(workers.up_hosts),
                exporter=self.exporter.snapshot_locked(),
                series=self.budget.snapshot(),
                schedule=self.schedule.snapshot_locked(),
                running=self.running.snapshot_locked(workers.down_hosts),
                diagnosis=self.diagnosis.snapshot_locked(now),
            )
