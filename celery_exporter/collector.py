"""Build the exposition model of a scrape from the store's snapshot.

A scrape takes a snapshot under the store's lock and builds its families outside; an
encoder from `exposition` turns them into text, OpenMetrics or protobuf. It never touches
the broker. Worker `up` is the liveness rule's verdict at the snapshot's time (heartbeat age
on the exporter's clock), so it flips to 0 on time even when no event arrives at all.
Each concern's snapshot part is turned into families by its own method here.

The task families of thousands of label sets are mostly what the last scrape built: what
is kept, and when it is used again, goes by the store's version numbers (the rule is in
`celery_exporter.versions`). `keep=False` makes a collector that keeps nothing and builds
every scrape from the store's live data: the oracle of the kept path.
"""

from __future__ import annotations

import platform
from operator import attrgetter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import celery
import kombu

from celery_exporter import __version__, beat, catalogue
from celery_exporter.clock import Clock
from celery_exporter.diagnosis import heartbeat_fits
from celery_exporter.exposition.model import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    Family,
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
from celery_exporter.store.running import RunningRow, RunningSnapshot
from celery_exporter.store.tasks import (
    HISTOGRAM_PART,
    LAST_SEEN_PART,
    N_HISTOGRAMS,
    N_STATES,
    ExceptionRow,
    TaskKey,
    TaskRow,
    TaskSnapshot,
    part_versions,
)
from celery_exporter.store.workers import WorkerSnapshot
from celery_exporter.versions import next_version, same_number

# position of task-received's time in the snapshot's last-seen times (a beat entry's last run)
LAST_RECEIVED = [state for state, _, _ in catalogue.LAST_SEEN].index("received")
# A row's metric in each task family, in order (counters, histograms, last-seen gauges):
# the index of the part of the row whose version it has.
METRIC_PARTS = tuple(range(N_STATES)) + tuple(HISTOGRAM_PART + index for index in range(N_HISTOGRAMS)) + LAST_SEEN_PART
VERSION_OF, KEY_OF = attrgetter("version"), attrgetter("key")


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


class Stamps:
    """Metrics for values that the store does not version (tasks running now, counted
    anew by every snapshot): a label set keeps its metric, and so its version, while its
    value is the same number as at the last scrape, and gets a new one otherwise. With
    `keep=False`, every metric is new."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._before: Dict[Tuple[str, ...], Metric] = {}
        self._now: Dict[Tuple[str, ...], Metric] = {}

    def metric(self, labels: Tuple[str, ...], value: Union[int, float]) -> Metric:
        metric = self._before.get(labels)
        if metric is None or not same_number(metric.value, value):
            metric = new_metric((labels, value, next_version()))
        if self.keep:
            self._now[labels] = metric
        return metric

    def turn(self) -> None:
        """At the end of a scrape: what it made is what the next one compares with."""
        self._before, self._now = self._now, {}


# adds a family (name, type, help, label names) to the scrape being built and returns it
NewFamily = Callable[..., Family]
HOSTNAME = ("hostname",)
QUEUE = ("queue_name",)
KIND = ("kind",)


def _same_source(
    source: Tuple[List[TaskKey], List[RunningRow]], row_keys: List[TaskKey], runs: List[RunningRow]
) -> bool:
    """Whether the running tasks' lists built from `source` (the rows' label sets, running
    rows) are those of these rows and runs: the same label sets in the same order, and runs
    of the same label sets with the same numbers."""
    keys_before, runs_before = source
    return keys_before == row_keys and _same_runs(runs, runs_before)


RUNNING_OF, OLDEST_OF = attrgetter("running"), attrgetter("oldest_start")


def _same_runs(runs: List[RunningRow], before: List[RunningRow]) -> bool:
    """Whether each running row holds the same label set and the same numbers
    (`same_number`) as the one in its place before: equal, of the same types, and where
    one is zero, of the same sign."""
    if runs != before:
        return False
    numbers = list(map(RUNNING_OF, runs)) + list(map(OLDEST_OF, runs))
    numbers_before = list(map(RUNNING_OF, before)) + list(map(OLDEST_OF, before))
    if 0 in numbers:  # (rare: runs count from 1, starts come from the clock) one by one
        return all(map(same_number, numbers, numbers_before))
    return list(map(type, numbers)) == list(map(type, numbers_before))


class Built(NamedTuple):
    """Metric lists kept across scrapes, with what they were built from (`source`) and
    each list's `Family.version`. Replaced whole, never changed: two scrapes at once may
    read one and replace it, and each sees lists that match their source."""

    source: Any
    versions: List[int]
    lists: List[List[Metric]]

    def again(self, source: Any, lists: List[List[Metric]]) -> "Built":
        """Lists built anew from `source`: each equal to this one's in its place (the same
        metrics, by their versions) is this one's again, under its version; the others get
        new versions."""
        versions = []
        for at, metrics in enumerate(lists):
            if at < len(self.lists) and metrics == self.lists[at]:
                lists[at] = self.lists[at]
                versions.append(self.versions[at])
            else:
                versions.append(next_version())
        return Built(source, versions, lists)


NOTHING_BUILT = Built(None, [], [])


class CeleryCollector:
    def __init__(self, store: Store, settings: Settings, clock: Clock, keep: bool = True):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.keep = keep
        self.started = clock.now()
        names = list(catalogue.TASK_LABELS)
        if settings.task_hostname_label:
            names.append(catalogue.HOSTNAME_LABEL)
        self.task_label_names = tuple(names)
        # What the last scrape built (see the module doc), with what it was built from:
        # each row's metrics with the row's version; the task families' lists with the
        # rows' versions; the running tasks' lists with those and the running rows; the
        # exceptions' list with the exception rows' versions. (Nothing when keep=False.)
        self._row_metrics: Dict[TaskKey, Tuple[int, List[Optional[Metric]]]] = {}
        self._task_lists = self._running_lists = self._exception_lists = NOTHING_BUILT
        self._running_stamps, self._oldest_stamps = Stamps(keep), Stamps(keep)
        self._build_info = (__version__, revision(), celery.__version__, kombu.__version__, platform.python_version())

    def families(self) -> List[Family]:
        snap = self.store.snapshot(self.clock.now(), fresh=not self.keep)
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
        """The task families (counters, histograms, last-seen gauges, exceptions): the
        last scrape's lists while the rows have the same versions in the same order."""
        names = self.task_label_names
        counters = [
            new(f"celery_task_{state}", COUNTER, catalogue.TASK_COUNTER_HELP[state], names)
            for state in catalogue.TASK_COUNTERS
        ]
        histograms = [new(metric, HISTOGRAM, help_, names, "seconds") for metric, help_ in catalogue.HISTOGRAMS]
        last_seen = [new(metric, GAUGE, help_, names) for _, metric, help_ in catalogue.LAST_SEEN]
        row_versions = list(map(VERSION_OF, snap.rows))
        built = self._task_lists
        if not (self.keep and built.source == row_versions):
            built = built.again(row_versions, self._task_metrics(snap.rows, len(METRIC_PARTS)))
            if self.keep:
                self._task_lists = built
        self._hand_out(counters + histograms + last_seen, built)
        family = new(
            catalogue.TASK_EXCEPTIONS, COUNTER, catalogue.TASK_EXCEPTIONS_HELP, names + (catalogue.EXCEPTION_LABEL,)
        )
        self._exceptions(snap.exceptions, family)

    def _hand_out(self, families: List[Family], built: Built) -> None:
        """Give each family its list of metrics, and (when kept across scrapes) the list's version."""
        for family, metrics, version in zip(families, built.lists, built.versions):
            family.metrics = metrics  # (read only, like every family's: it may be handed out again)
            family.version = version if self.keep else None

    def _task_metrics(self, rows: List[TaskRow], n: int) -> List[List[Metric]]:
        """The rows' metrics in each of the `n` task families (see METRIC_PARTS): each row's
        as the last scrape built them while its version is the same."""
        old = self._row_metrics
        made_now: Dict[TaskKey, Tuple[int, List[Optional[Metric]]]] = {}
        by_row = []
        for row in rows:
            made = old.get(row.key)
            if made is None or made[0] != row.version:
                made = (row.version, self._row_metrics_of(row, made[1] if made is not None else None))
            made_now[row.key] = made
            by_row.append(made[1])
        if self.keep:
            self._row_metrics = made_now
        if not by_row:
            return [[] for _ in range(n)]
        # each family's metrics in the rows' order (a transpose), without the Nones (a
        # Metric is never false)
        return [list(filter(None, column)) for column in zip(*by_row)]

    def _row_metrics_of(self, row: TaskRow, before: Optional[List[Optional[Metric]]]) -> List[Optional[Metric]]:
        """One row's metric in each task family, or None where it has none. A metric of the
        row's last version (`before`) whose part has the same version is used again: under
        load a changed label set has one or two changed counters of ten and often an
        unchanged histogram."""
        out: List[Optional[Metric]] = []
        versions = part_versions(row)
        for at, part in enumerate(METRIC_PARTS):
            version = versions[part]
            was = before[at] if before is not None else None
            out.append(was if was is not None and was.version == version else self._metric_at(row, at, version))
        return out

    def _metric_at(self, row: TaskRow, at: int, version: int) -> Optional[Metric]:
        """The row's metric at position `at` of METRIC_PARTS, or None where it has none."""
        if at < N_STATES:
            return new_metric((row.key, row.counts[at], version))
        index = at - N_STATES
        if index < N_HISTOGRAMS:
            counts = row.hist_counts[index]
            if counts is None:
                return None
            bounds = self.store.tasks.bounds[index]
            zero_threshold = self.settings.native_zero_threshold
            hist = new_histogram(
                (bounds, counts, row.hist_sums[index], row.exemplars[index], row.native[index], zero_threshold)
            )
            return new_metric((row.key, hist, version))
        seen = row.last_seen[index - N_HISTOGRAMS]
        return None if seen is None else new_metric((row.key, seen, version))

    def _exceptions(self, rows: List[ExceptionRow], family: Family) -> None:
        """Exceptions per label set: the last scrape's list while the rows' versions are the same."""
        versions = list(map(VERSION_OF, rows))
        built = self._exception_lists
        if not (self.keep and built.source == versions):
            metrics = [new_metric((row.key + (row.exception,), row.total, row.version)) for row in rows]
            built = built.again(versions, [metrics])
            if self.keep:
                self._exception_lists = built
        self._hand_out([family], built)

    def _running(self, snap: RunningSnapshot, rows: List[TaskRow], new: NewFamily) -> None:
        """Running tasks per label set: 0 for every live label set without a run (so a
        dashboard's sum never has gaps), plus label sets that only have runs (their
        counters expired while a task ran longer than --series-ttl). The last scrape's
        lists while the task rows are of the same label sets, in the same order, and the
        running rows hold the same numbers."""
        names = self.task_label_names
        running = new(catalogue.TASK_RUNNING[0], GAUGE, catalogue.TASK_RUNNING[1], names)
        oldest = new(catalogue.TASK_RUNNING_OLDEST[0], GAUGE, catalogue.TASK_RUNNING_OLDEST[1], names)
        built = self._running_lists
        row_keys = list(map(KEY_OF, rows))
        if not (self.keep and built.source is not None and _same_source(built.source, row_keys, snap.rows)):
            built = built.again((row_keys, snap.rows), self._running_metrics(snap.rows, rows))
            if self.keep:
                self._running_lists = built
        self._hand_out([running, oldest], built)

    def _running_metrics(self, runs: List[RunningRow], rows: List[TaskRow]) -> List[List[Metric]]:
        running: List[Metric] = []
        oldest: List[Metric] = []
        by_key = {r.key: r for r in runs}
        stamp_running, stamp_oldest = self._running_stamps.metric, self._oldest_stamps.metric
        for row in rows:
            run = by_key.pop(row.key, None)
            running.append(stamp_running(row.key, run.running if run is not None else 0))
            if run is not None:
                oldest.append(stamp_oldest(row.key, run.oldest_start))
        for key, run in sorted(by_key.items()):
            running.append(stamp_running(key, run.running))
            oldest.append(stamp_oldest(key, run.oldest_start))
        self._running_stamps.turn()
        self._oldest_stamps.turn()
        return [running, oldest]

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
        events_on = new(catalogue.WORKER_TASK_EVENTS[0], GAUGE, catalogue.WORKER_TASK_EVENTS[1], HOSTNAME)
        skew = new(catalogue.WORKER_CLOCK_SKEW[0], GAUGE, catalogue.WORKER_CLOCK_SKEW[1], HOSTNAME)
        fits = new(catalogue.WORKER_HEARTBEAT_FITS[0], GAUGE, catalogue.WORKER_HEARTBEAT_FITS[1], HOSTNAME)
        timeout = self.settings.worker_timeout
        pool_size = new(catalogue.WORKER_POOL_SIZE[0], GAUGE, catalogue.WORKER_POOL_SIZE[1], HOSTNAME)
        reserved = new(catalogue.WORKER_RESERVED[0], GAUGE, catalogue.WORKER_RESERVED[1], HOSTNAME)
        consumes = new(catalogue.WORKER_QUEUE_INFO[0], GAUGE, catalogue.WORKER_QUEUE_INFO[1], HOSTNAME + QUEUE)
        pool_sizes, reserved_of, queues_of = snap.pool_sizes, snap.reserved, snap.queues
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
                fits.add(host, 1 if heartbeat_fits(timeout, w.freq) else 0)
            if w.task_events is not None:
                events_on.add(host, 1 if w.task_events else 0)
            if w.skew is not None:
                skew.add(host, w.skew)
            if w.sw_ident or w.sw_ver or w.sw_sys:
                info.add((w.hostname, w.sw_ident, w.sw_ver, w.sw_sys), 1)
            size = pool_sizes.get(w.hostname)
            if size is not None:
                pool_size.add(host, size)
            reserved.add(host, reserved_of.get(w.hostname, 0))
            for queue in queues_of.get(w.hostname, ()):
                consumes.add((w.hostname, queue), 1)

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
        diag = snap.diagnosis
        missing = new(catalogue.TASK_SENT_MISSING[0], GAUGE, catalogue.TASK_SENT_MISSING[1], ("name",))
        for name in sorted(diag.sent_missing):
            missing.add((name,), 1)
        undecodable = new(catalogue.EVENTS_UNDECODABLE[0], COUNTER, catalogue.EVENTS_UNDECODABLE[1], ("content_type",))
        for label, count in diag.undecodable.items():
            undecodable.add((label,), count)
        if self.settings.enable_events:
            new(catalogue.ENABLE_EVENTS_SENT[0], COUNTER, catalogue.ENABLE_EVENTS_SENT[1]).add(
                (), diag.enable_events_sent
            )
        new(catalogue.TASKS_TRACKED[0], GAUGE, catalogue.TASKS_TRACKED[1]).add((), own.tasks_tracked)
        new(catalogue.TASKS_EVICTED[0], COUNTER, catalogue.TASKS_EVICTED[1]).add((), own.tasks_evicted)
        refused_http = new(catalogue.HTTP_REFUSED[0], COUNTER, catalogue.HTTP_REFUSED[1], ("reason",))
        for reason, count in own.http_refused.items():
            refused_http.add((reason,), count)
        if self.settings.web_config is not None:
            new(catalogue.WEB_CONFIG_RELOAD_ERRORS[0], COUNTER, catalogue.WEB_CONFIG_RELOAD_ERRORS[1]).add(
                (), own.web_config_reload_errors
            )
        if snap.schedule.from_database:
            new(catalogue.BEAT_READ_ERRORS[0], COUNTER, catalogue.BEAT_READ_ERRORS[1]).add(
                (), snap.schedule.read_errors
            )
