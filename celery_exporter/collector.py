"""Render the store's snapshot as Prometheus text or OpenMetrics, at scrape time.

A scrape takes a snapshot under the store's lock and renders it outside. It never touches
the broker. Worker `up` is the liveness rule's verdict at the snapshot's time (heartbeat age
on the exporter's clock), so it flips to 0 on time even when no event arrives at all.
Each concern's snapshot part is rendered by its own method here.

The exporter renders its own families instead of going through prometheus_client's
generic per-sample path: with thousands of task label sets a scrape is 100k+ lines, and
the label part of every line is escaped once per label set and reused across scrapes.
"""

from __future__ import annotations

import math
import platform
from typing import Callable, Dict, List, Sequence, Tuple

import celery
import kombu

from celery_exporter import __version__, beat, catalogue
from celery_exporter.clock import Clock
from celery_exporter.settings import Settings
from celery_exporter.store import Snapshot, Store
from celery_exporter.store.budget import KINDS
from celery_exporter.store.own import ExporterSnapshot
from celery_exporter.store.queues import QueueSnapshot
from celery_exporter.store.running import RunningSnapshot
from celery_exporter.store.tasks import TaskRow, TaskSnapshot
from celery_exporter.store.workers import WorkerSnapshot

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# position of task-received's time in the snapshot's last-seen times (a beat entry's last run)
LAST_RECEIVED = [state for state, _, _ in catalogue.LAST_SEEN].index("received")


def escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values))


def number(value: float) -> str:
    """Sample value: integers as they are, floats as Prometheus' Go client writes them."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _bound(b: float) -> str:
    text = repr(float(b))
    dot = text.find(".")
    if b > 0 and dot > 6:  # Go switches to exponent notation sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


class Family:
    """One metric family being rendered: header lines, then sample lines."""

    __slots__ = ("name", "kind", "help", "lines", "openmetrics")

    def __init__(self, name: str, kind: str, help_: str, openmetrics: bool):
        self.name, self.kind, self.help, self.openmetrics = name, kind, help_, openmetrics
        self.lines: List[str] = []

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == COUNTER else self.name

    def add(self, labels: str, value: float) -> None:
        name = self.sample_name
        self.lines.append(f"{name}{{{labels}}} {number(value)}" if labels else f"{name} {number(value)}")

    def text(self) -> str:
        # Text format 0.0.4 names a counter family by its sample name (with _total);
        # OpenMetrics by the name without it.
        header_name = self.name if (self.openmetrics or self.kind != COUNTER) else self.sample_name
        help_ = self.help.replace("\\", r"\\").replace("\n", r"\n")
        head = f"# HELP {header_name} {help_}\n# TYPE {header_name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.lines)


# adds a family (name, type, help) to the scrape being rendered and returns it
NewFamily = Callable[[str, str, str], "Family"]


class CeleryCollector:
    def __init__(self, store: Store, settings: Settings, clock: Clock):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.started = clock.now()
        self.task_label_names = list(catalogue.TASK_LABELS)
        if settings.task_hostname_label:
            self.task_label_names.append(catalogue.HOSTNAME_LABEL)
        self._le = [[f'le="{_bound(b)}"' for b in bs] + ['le="+Inf"'] for bs in store.tasks.bounds]
        self._label_cache: Dict[Tuple[str, ...], str] = {}
        build_labels = ("version", "celery_version", "kombu_version", "python_version")
        self._build_info = labels_text(
            build_labels, (__version__, celery.__version__, kombu.__version__, platform.python_version())
        )

    def render(self, openmetrics: bool = False) -> str:
        snap = self.store.snapshot(self.clock.now())
        families: List[Family] = []

        def new(name: str, kind: str, help_: str) -> Family:
            families.append(Family(name, kind, help_, openmetrics))
            return families[-1]

        labels = self._task_labels(snap.tasks.rows)
        self._tasks(snap.tasks, labels, new)
        self._running(snap.running, snap.tasks.rows, labels, new)
        if snap.schedule.entries:
            self._beat(snap, new)
        self._workers(snap.workers, new)
        self._queues(snap.queues, new)
        self._self(snap, new)
        return "".join(f.text() for f in families)

    # -- families -----------------------------------------------------------------------

    def _task_labels(self, rows: List[TaskRow]) -> List[str]:
        """Escaped label text per task label set, cached across scrapes."""
        old, cache = self._label_cache, {}
        names = self.task_label_names
        out = []
        for row in rows:
            key = row.key
            text = old.get(key)
            if text is None:
                text = labels_text(names, key)
            cache[key] = text
            out.append(text)
        self._label_cache = cache  # keys of expired label sets fall out here
        return out

    def _tasks(self, snap: TaskSnapshot, labels: List[str], new: NewFamily) -> None:
        """`labels`: the escaped label text of each row, from _task_labels."""
        rows = snap.rows
        for index, state in enumerate(catalogue.TASK_COUNTERS):
            family = new(f"celery_task_{state}", COUNTER, catalogue.TASK_COUNTER_HELP[state])
            name = family.sample_name
            family.lines = [f"{name}{{{text}}} {row.counts[index]}" for text, row in zip(labels, rows)]
        for index, (metric, help_) in enumerate(catalogue.HISTOGRAMS):
            family = new(metric, HISTOGRAM, help_)
            lines = family.lines
            le = self._le[index]
            bucket, count, sum_ = f"{metric}_bucket{{", f"{metric}_count{{", f"{metric}_sum{{"
            for text, row in zip(labels, rows):
                counts = row.hist_counts[index]
                if counts is None:
                    continue
                running = 0
                for le_text, c in zip(le, counts):
                    running += c
                    lines.append(f"{bucket}{text},{le_text}}} {running}")
                lines.append(f"{count}{text}}} {running}")
                lines.append(f"{sum_}{text}}} {number(row.hist_sums[index])}")
        for index, (_, metric, help_) in enumerate(catalogue.LAST_SEEN):
            family = new(metric, GAUGE, help_)
            family.lines = [
                f"{metric}{{{text}}} {number(seen)}"
                for text, row in zip(labels, rows)
                if (seen := row.last_seen[index]) is not None
            ]
        family = new(catalogue.TASK_EXCEPTIONS, COUNTER, catalogue.TASK_EXCEPTIONS_HELP)
        names = self.task_label_names + [catalogue.EXCEPTION_LABEL]
        for exc in snap.exceptions:
            family.add(labels_text(names, exc.key + (exc.exception,)), exc.total)

    def _running(self, snap: RunningSnapshot, rows: List[TaskRow], labels: List[str], new: NewFamily) -> None:
        """Running tasks per label set: 0 for every live label set without a run (so a
        dashboard's sum never has gaps), plus label sets that only have runs (their
        counters expired while a task ran longer than --series-ttl)."""
        running = new(catalogue.TASK_RUNNING[0], GAUGE, catalogue.TASK_RUNNING[1])
        oldest = new(catalogue.TASK_RUNNING_OLDEST[0], GAUGE, catalogue.TASK_RUNNING_OLDEST[1])
        by_key = {r.key: r for r in snap.rows}
        names = self.task_label_names
        for row, text in zip(rows, labels):
            run = by_key.pop(row.key, None)
            running.add(text, run.running if run is not None else 0)
            if run is not None:
                oldest.add(text, run.oldest_start)
        for key, run in sorted(by_key.items()):
            text = labels_text(names, key)
            running.add(text, run.running)
            oldest.add(text, run.oldest_start)

    def _beat(self, snap: Snapshot, new: NewFamily) -> None:
        entries = snap.schedule.entries
        runs = beat.last_runs(snap.tasks.rows, entries, LAST_RECEIVED)
        info = new(catalogue.BEAT_INFO[0], GAUGE, catalogue.BEAT_INFO[1])
        interval = new(catalogue.BEAT_INTERVAL[0], GAUGE, catalogue.BEAT_INTERVAL[1])
        next_due = new(catalogue.BEAT_NEXT_DUE[0], GAUGE, catalogue.BEAT_NEXT_DUE[1])
        last_run = new(catalogue.BEAT_LAST_RUN[0], GAUGE, catalogue.BEAT_LAST_RUN[1])
        for entry in entries:
            labels = labels_text(catalogue.BEAT_LABELS, (entry.name, entry.task))
            info.add(f'{labels},schedule="{escape_label(entry.description)}"', 1)
            last = runs.get(entry.task)
            due, every = entry.due_and_interval(last if last is not None else self.started)
            interval.add(labels, every)
            next_due.add(labels, due)
            if last is not None:
                last_run.add(labels, last)

    def _workers(self, snap: WorkerSnapshot, new: NewFamily) -> None:
        up = new(*catalogue.WORKER_UP[:1], GAUGE, catalogue.WORKER_UP[1])
        last = new(catalogue.WORKER_LAST_HEARTBEAT[0], GAUGE, catalogue.WORKER_LAST_HEARTBEAT[1])
        active = new(catalogue.WORKER_ACTIVE[0], GAUGE, catalogue.WORKER_ACTIVE[1])
        processed = new(catalogue.WORKER_PROCESSED[0], COUNTER, catalogue.WORKER_PROCESSED[1])
        interval = new(catalogue.WORKER_HEARTBEAT_INTERVAL[0], GAUGE, catalogue.WORKER_HEARTBEAT_INTERVAL[1])
        info = new(catalogue.WORKER_INFO[0], GAUGE, catalogue.WORKER_INFO[1])
        for w in snap.workers:
            host = f'hostname="{escape_label(w.hostname)}"'
            up.add(host, 1 if w.up else 0)
            last.add(host, w.last_seen)
            if w.active is not None:
                active.add(host, w.active)
            if w.processed is not None:
                processed.add(host, w.processed)
            if w.freq is not None:
                interval.add(host, w.freq)
            if w.sw_ident or w.sw_ver or w.sw_sys:
                info.add(labels_text(catalogue.WORKER_INFO_LABELS, (w.hostname, w.sw_ident, w.sw_ver, w.sw_sys)), 1)

    def _queues(self, snap: QueueSnapshot, new: NewFamily) -> None:
        length = new(catalogue.QUEUE_LENGTH[0], GAUGE, catalogue.QUEUE_LENGTH[1])
        consumers = new(catalogue.QUEUE_CONSUMERS[0], GAUGE, catalogue.QUEUE_CONSUMERS[1])
        for queue, (messages, consumer_count) in sorted(snap.depths.items()):
            q = f'queue_name="{escape_label(queue)}"'
            length.add(q, messages)
            if consumer_count is not None:
                consumers.add(q, consumer_count)
        workers = new(catalogue.QUEUE_WORKERS[0], GAUGE, catalogue.QUEUE_WORKERS[1])
        processes = new(catalogue.QUEUE_PROCESSES[0], GAUGE, catalogue.QUEUE_PROCESSES[1])
        for queue, (worker_count, process_count) in sorted(snap.capacity.items()):
            q = f'queue_name="{escape_label(queue)}"'
            workers.add(q, worker_count)
            processes.add(q, process_count)
        if snap.poll_success is not None and snap.poll_duration is not None:  # both set by every poll
            new(catalogue.POLL_SUCCESS[0], GAUGE, catalogue.POLL_SUCCESS[1]).add("", 1 if snap.poll_success else 0)
            new(catalogue.POLL_DURATION[0], GAUGE, catalogue.POLL_DURATION[1]).add("", snap.poll_duration)
        if snap.poll_last_success is not None:
            new(catalogue.POLL_LAST_SUCCESS[0], GAUGE, catalogue.POLL_LAST_SUCCESS[1]).add("", snap.poll_last_success)
        errors = new(catalogue.POLL_ERRORS[0], COUNTER, catalogue.POLL_ERRORS[1])
        for reason, count in sorted(snap.poll_errors.items()):
            errors.add(f'reason="{reason}"', count)

    def _self(self, snap: Snapshot, new: NewFamily) -> None:
        own: ExporterSnapshot = snap.exporter
        new(catalogue.BUILD_INFO[0], GAUGE, catalogue.BUILD_INFO[1]).add(self._build_info, 1)
        events = new(catalogue.EVENTS[0], COUNTER, catalogue.EVENTS[1])
        for etype, count in sorted(own.events.items()):
            events.add(f'type="{escape_label(etype)}"', count)
        dropped = new(catalogue.EVENTS_DROPPED[0], COUNTER, catalogue.EVENTS_DROPPED[1])
        for reason, count in own.dropped.items():
            dropped.add(f'reason="{reason}"', count)
        new(catalogue.BROKER_CONNECTED[0], GAUGE, catalogue.BROKER_CONNECTED[1]).add("", 1 if own.connected else 0)
        new(catalogue.BROKER_RECONNECTS[0], COUNTER, catalogue.BROKER_RECONNECTS[1]).add("", own.reconnects)
        if own.last_event is not None:
            new(catalogue.LAST_EVENT[0], GAUGE, catalogue.LAST_EVENT[1]).add("", own.last_event)
        series = new(catalogue.SERIES[0], GAUGE, catalogue.SERIES[1])
        expired = new(catalogue.SERIES_EXPIRED[0], COUNTER, catalogue.SERIES_EXPIRED[1])
        refused = new(catalogue.SERIES_REFUSED[0], COUNTER, catalogue.SERIES_REFUSED[1])
        for kind in KINDS:
            series.add(f'kind="{kind}"', snap.series.held[kind])
            expired.add(f'kind="{kind}"', snap.series.expired[kind])
            refused.add(f'kind="{kind}"', snap.series.refused[kind])
        new(catalogue.TASKS_TRACKED[0], GAUGE, catalogue.TASKS_TRACKED[1]).add("", own.tasks_tracked)
        new(catalogue.TASKS_EVICTED[0], COUNTER, catalogue.TASKS_EVICTED[1]).add("", own.tasks_evicted)
        if snap.schedule.from_database:
            new(catalogue.BEAT_READ_ERRORS[0], COUNTER, catalogue.BEAT_READ_ERRORS[1]).add(
                "", snap.schedule.read_errors
            )
