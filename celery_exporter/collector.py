"""Build the exposition model of a scrape from the store's snapshot.

A scrape takes a snapshot under the store's lock and builds its families outside; an
encoder from `exposition` turns them into text, OpenMetrics or protobuf. It never touches
the broker. Worker `up` is the liveness rule's verdict at the snapshot's time (heartbeat age
on the exporter's clock), so it flips to 0 on time even when no event arrives at all.
Each concern's snapshot part is turned into families by its own method here.
"""

from __future__ import annotations

import platform
from itertools import repeat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import celery
import kombu

from celery_exporter import __version__, beat, catalogue
from celery_exporter.clock import Clock
from celery_exporter.exposition.model import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    Family,
    Histogram,
    Metric,
    new_histogram,
    new_metric,
)
from celery_exporter.revision import revision
from celery_exporter.settings import Settings
from celery_exporter.store import Snapshot, Store
from celery_exporter.store.budget import KINDS
from celery_exporter.store.own import ExporterSnapshot
from celery_exporter.store.queues import QueueSnapshot
from celery_exporter.store.running import RunningSnapshot
from celery_exporter.store.tasks import TaskKey, TaskRow, TaskSnapshot
from celery_exporter.store.workers import WorkerSnapshot

# position of task-received's time in the snapshot's last-seen times (a beat entry's last run)
LAST_RECEIVED = [state for state, _, _ in catalogue.LAST_SEEN].index("received")


def registry_families(registry: Any) -> List[Family]:
    """prometheus_client's process, platform and GC collectors as model families."""
    out = []
    for metric in registry.collect():
        kind = metric.type if metric.type in (COUNTER, GAUGE) else GAUGE
        wanted = metric.name + "_total" if kind == COUNTER else metric.name
        samples = [s for s in metric.samples if s.name == wanted]
        names: List[str] = []
        for s in samples:
            names.extend(n for n in s.labels if n not in names)
        family = Family(metric.name, kind, metric.documentation, names)
        for s in samples:
            family.add([s.labels.get(n, "") for n in names], s.value)
        out.append(family)
    return out


class MetricMemo:
    """A family's Metric objects from the last scrape, by label values: a label set whose
    value did not change gets the same object again, so the encoders keep its bytes (for
    families built anew each scrape, such as the running tasks of thousands of label sets)."""

    def __init__(self) -> None:
        self._before: Dict[Tuple[str, ...], Metric] = {}
        self._now: Dict[Tuple[str, ...], Metric] = {}

    def add(self, family: Family, labels: Tuple[str, ...], value: Union[int, float]) -> None:
        metric = self._before.get(labels)
        if metric is None or metric[1] != value:
            metric = new_metric((labels, value))
        self._now[labels] = metric
        family.metrics.append(metric)

    def turn(self) -> None:
        """At the end of a scrape: what it added is what the next one compares with."""
        self._before, self._now = self._now, {}


# adds a family (name, type, help, label names) to the scrape being built and returns it
NewFamily = Callable[..., Family]
HOSTNAME = ("hostname",)
QUEUE = ("queue_name",)
KIND = ("kind",)


class CeleryCollector:
    def __init__(self, store: Store, settings: Settings, clock: Clock):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.started = clock.now()
        names = list(catalogue.TASK_LABELS)
        if settings.task_hostname_label:
            names.append(catalogue.HOSTNAME_LABEL)
        self.task_label_names = tuple(names)
        self._row_metrics: Dict[TaskKey, Tuple[TaskRow, List[Optional[Metric]]]] = {}
        self._running_memo, self._oldest_memo, self._exceptions_memo = MetricMemo(), MetricMemo(), MetricMemo()
        self._build_info = (__version__, revision(), celery.__version__, kombu.__version__, platform.python_version())

    def families(self) -> List[Family]:
        snap = self.store.snapshot(self.clock.now())
        families: List[Family] = []

        def new(name: str, kind: str, help_: str, label_names: Sequence[str] = (), unit: str = "") -> Family:
            families.append(Family(name, kind, help_, label_names, unit))
            return families[-1]

        self._tasks(snap.tasks, new)
        self._running(snap.running, snap.tasks.rows, new)
        if snap.schedule.entries:
            self._beat(snap, new)
        self._workers(snap.workers, new)
        self._queues(snap.queues, new)
        self._self(snap, new)
        return families

    # -- families -----------------------------------------------------------------------

    def _tasks(self, snap: TaskSnapshot, new: NewFamily) -> None:
        names = self.task_label_names
        counters = [
            new(f"celery_task_{state}", COUNTER, catalogue.TASK_COUNTER_HELP[state], names)
            for state in catalogue.TASK_COUNTERS
        ]
        histograms = [new(metric, HISTOGRAM, help_, names, "seconds") for metric, help_ in catalogue.HISTOGRAMS]
        last_seen = [new(metric, GAUGE, help_, names) for _, metric, help_ in catalogue.LAST_SEEN]
        families = [f.metrics for f in counters + histograms + last_seen]
        old, self._row_metrics = self._row_metrics, {}
        for row in snap.rows:
            made = old.get(row.key)
            if made is None:
                made = (row, self._row_metrics_of(row, None))
            elif made[0] is not row:  # the store hands out a new row only on change
                made = (row, self._row_metrics_of(row, made[1]))
            self._row_metrics[row.key] = made
            for metrics, metric in zip(families, made[1]):
                if metric is not None:
                    metrics.append(metric)
        family = new(
            catalogue.TASK_EXCEPTIONS, COUNTER, catalogue.TASK_EXCEPTIONS_HELP, names + (catalogue.EXCEPTION_LABEL,)
        )
        memo = self._exceptions_memo
        for exc in snap.exceptions:
            memo.add(family, exc.key + (exc.exception,), exc.total)
        memo.turn()

    def _row_metrics_of(self, row: TaskRow, before: Optional[List[Optional[Metric]]]) -> List[Optional[Metric]]:
        """One row's metric in each task family (counters, histograms, last-seen gauges), or
        None where it has none. Kept while the row is unchanged, so the encoders can keep
        their encodings of them too; when the row changed, each metric whose value did not
        (`before`: the row's metrics from the last scrape) is kept as well. Under load a
        changed label set has one or two changed counters of ten and often an unchanged
        histogram, and the encoders then splice in their kept bytes for the rest."""
        key = row.key
        if before is None:
            out: List[Optional[Metric]] = list(map(new_metric, zip(repeat(key), row.counts)))
        else:
            out = [m if m is not None and m[1] == c else new_metric((key, c)) for m, c in zip(before, row.counts)]
        zero_threshold = self.settings.native_zero_threshold
        at = len(row.counts)
        for index, counts in enumerate(row.hist_counts):
            if counts is None:
                out.append(None)
                continue
            # An observation always adds to a classic bucket: equal counts and sum mean that
            # this histogram (its exemplars and native buckets too) did not change.
            was = before[at + index] if before is not None else None
            if was is not None:
                hist = was[1]
                if isinstance(hist, Histogram) and hist.counts == counts and hist.sum == row.hist_sums[index]:
                    out.append(was)
                    continue
            bounds = self.store.tasks.bounds[index]
            hist = new_histogram(
                (bounds, counts, row.hist_sums[index], row.exemplars[index], row.native[index], zero_threshold)
            )
            out.append(new_metric((key, hist)))
        at += len(row.hist_counts)
        for index, seen in enumerate(row.last_seen):
            was = before[at + index] if before is not None else None
            if seen is None:
                out.append(None)
            elif was is not None and was[1] == seen:
                out.append(was)
            else:
                out.append(new_metric((key, seen)))
        return out

    def _running(self, snap: RunningSnapshot, rows: List[TaskRow], new: NewFamily) -> None:
        """Running tasks per label set: 0 for every live label set without a run (so a
        dashboard's sum never has gaps), plus label sets that only have runs (their
        counters expired while a task ran longer than --series-ttl)."""
        names = self.task_label_names
        running = new(catalogue.TASK_RUNNING[0], GAUGE, catalogue.TASK_RUNNING[1], names)
        oldest = new(catalogue.TASK_RUNNING_OLDEST[0], GAUGE, catalogue.TASK_RUNNING_OLDEST[1], names)
        by_key = {r.key: r for r in snap.rows}
        add_running, add_oldest = self._running_memo.add, self._oldest_memo.add
        for row in rows:
            run = by_key.pop(row.key, None)
            add_running(running, row.key, run.running if run is not None else 0)
            if run is not None:
                add_oldest(oldest, row.key, run.oldest_start)
        for key, run in sorted(by_key.items()):
            add_running(running, key, run.running)
            add_oldest(oldest, key, run.oldest_start)
        self._running_memo.turn()
        self._oldest_memo.turn()

    def _beat(self, snap: Snapshot, new: NewFamily) -> None:
        entries = snap.schedule.entries
        runs = beat.last_runs(snap.tasks.rows, entries, LAST_RECEIVED)
        labels = catalogue.BEAT_LABELS
        info = new(catalogue.BEAT_INFO[0], GAUGE, catalogue.BEAT_INFO[1], tuple(labels) + ("schedule",))
        interval = new(catalogue.BEAT_INTERVAL[0], GAUGE, catalogue.BEAT_INTERVAL[1], labels)
        next_due = new(catalogue.BEAT_NEXT_DUE[0], GAUGE, catalogue.BEAT_NEXT_DUE[1], labels)
        last_run = new(catalogue.BEAT_LAST_RUN[0], GAUGE, catalogue.BEAT_LAST_RUN[1], labels)
        for entry in entries:
            values = (entry.name, entry.task)
            info.add(values + (entry.description,), 1)
            last = runs.get(entry.task)
            due, every = entry.due_and_interval(last if last is not None else self.started)
            interval.add(values, every)
            next_due.add(values, due)
            if last is not None:
                last_run.add(values, last)

    def _workers(self, snap: WorkerSnapshot, new: NewFamily) -> None:
        up = new(catalogue.WORKER_UP[0], GAUGE, catalogue.WORKER_UP[1], HOSTNAME)
        last = new(catalogue.WORKER_LAST_HEARTBEAT[0], GAUGE, catalogue.WORKER_LAST_HEARTBEAT[1], HOSTNAME)
        active = new(catalogue.WORKER_ACTIVE[0], GAUGE, catalogue.WORKER_ACTIVE[1], HOSTNAME)
        processed = new(catalogue.WORKER_PROCESSED[0], COUNTER, catalogue.WORKER_PROCESSED[1], HOSTNAME)
        interval = new(catalogue.WORKER_HEARTBEAT_INTERVAL[0], GAUGE, catalogue.WORKER_HEARTBEAT_INTERVAL[1], HOSTNAME)
        info = new(catalogue.WORKER_INFO[0], GAUGE, catalogue.WORKER_INFO[1], catalogue.WORKER_INFO_LABELS)
        for w in snap.workers:
            host = (w.hostname,)
            up.add(host, 1 if w.up else 0)
            last.add(host, w.last_seen)
            if w.active is not None:
                active.add(host, w.active)
            if w.processed is not None:
                processed.add(host, w.processed)
            if w.freq is not None:
                interval.add(host, w.freq)
            if w.sw_ident or w.sw_ver or w.sw_sys:
                info.add((w.hostname, w.sw_ident, w.sw_ver, w.sw_sys), 1)

    def _queues(self, snap: QueueSnapshot, new: NewFamily) -> None:
        length = new(catalogue.QUEUE_LENGTH[0], GAUGE, catalogue.QUEUE_LENGTH[1], QUEUE)
        consumers = new(catalogue.QUEUE_CONSUMERS[0], GAUGE, catalogue.QUEUE_CONSUMERS[1], QUEUE)
        for queue, (messages, consumer_count) in sorted(snap.depths.items()):
            length.add((queue,), messages)
            if consumer_count is not None:
                consumers.add((queue,), consumer_count)
        workers = new(catalogue.QUEUE_WORKERS[0], GAUGE, catalogue.QUEUE_WORKERS[1], QUEUE)
        processes = new(catalogue.QUEUE_PROCESSES[0], GAUGE, catalogue.QUEUE_PROCESSES[1], QUEUE)
        for queue, (worker_count, process_count) in sorted(snap.capacity.items()):
            workers.add((queue,), worker_count)
            processes.add((queue,), process_count)
        if snap.poll_success is not None and snap.poll_duration is not None:  # both set by every poll
            new(catalogue.POLL_SUCCESS[0], GAUGE, catalogue.POLL_SUCCESS[1]).add((), 1 if snap.poll_success else 0)
            new(catalogue.POLL_DURATION[0], GAUGE, catalogue.POLL_DURATION[1]).add((), snap.poll_duration)
        if snap.poll_method is not None:
            new(catalogue.POLL_METHOD[0], GAUGE, catalogue.POLL_METHOD[1], ("method",)).add((snap.poll_method,), 1)
        if snap.poll_last_success is not None:
            new(catalogue.POLL_LAST_SUCCESS[0], GAUGE, catalogue.POLL_LAST_SUCCESS[1]).add((), snap.poll_last_success)
        errors = new(catalogue.POLL_ERRORS[0], COUNTER, catalogue.POLL_ERRORS[1], ("reason",))
        for reason, count in sorted(snap.poll_errors.items()):
            errors.add((reason,), count)

    def _self(self, snap: Snapshot, new: NewFamily) -> None:
        own: ExporterSnapshot = snap.exporter
        # revision: the source revision the package was built from (celery_exporter/revision.py)
        build_labels = ("version", "revision", "celery_version", "kombu_version", "python_version")
        new(catalogue.BUILD_INFO[0], GAUGE, catalogue.BUILD_INFO[1], build_labels).add(self._build_info, 1)
        events = new(catalogue.EVENTS[0], COUNTER, catalogue.EVENTS[1], ("type",))
        for etype, count in sorted(own.events.items()):
            events.add((etype,), count)
        dropped = new(catalogue.EVENTS_DROPPED[0], COUNTER, catalogue.EVENTS_DROPPED[1], ("reason",))
        for reason, count in own.dropped.items():
            dropped.add((reason,), count)
        new(catalogue.BROKER_CONNECTED[0], GAUGE, catalogue.BROKER_CONNECTED[1]).add((), 1 if own.connected else 0)
        new(catalogue.BROKER_RECONNECTS[0], COUNTER, catalogue.BROKER_RECONNECTS[1]).add((), own.reconnects)
        if own.reader is not None:
            new(catalogue.EVENT_READER[0], GAUGE, catalogue.EVENT_READER[1], ("reader",)).add((own.reader,), 1)
        if own.last_event is not None:
            new(catalogue.LAST_EVENT[0], GAUGE, catalogue.LAST_EVENT[1]).add((), own.last_event)
        series = new(catalogue.SERIES[0], GAUGE, catalogue.SERIES[1], KIND)
        expired = new(catalogue.SERIES_EXPIRED[0], COUNTER, catalogue.SERIES_EXPIRED[1], KIND)
        refused = new(catalogue.SERIES_REFUSED[0], COUNTER, catalogue.SERIES_REFUSED[1], KIND)
        for kind in KINDS:
            series.add((kind,), snap.series.held[kind])
            expired.add((kind,), snap.series.expired[kind])
            refused.add((kind,), snap.series.refused[kind])
        new(catalogue.TASKS_TRACKED[0], GAUGE, catalogue.TASKS_TRACKED[1]).add((), own.tasks_tracked)
        new(catalogue.TASKS_EVICTED[0], COUNTER, catalogue.TASKS_EVICTED[1]).add((), own.tasks_evicted)
        if snap.schedule.from_database:
            new(catalogue.BEAT_READ_ERRORS[0], COUNTER, catalogue.BEAT_READ_ERRORS[1]).add(
                (), snap.schedule.read_errors
            )
