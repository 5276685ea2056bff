"""The exposition model: what one scrape shows, independent of the wire format.

The collector builds a list of `Family` from the store's snapshot; an encoder (text,
OpenMetrics or protobuf) turns that list into bytes. Every family has fixed label names;
each of its metrics carries the label values in that order, one value (a number for a
counter or gauge, a `Histogram` for a histogram) and a version number, which is all an
encoder looks at to reuse what it wrote before (see `celery_exporter.versions`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

from celery_exporter.nativehist import NativeBuckets
from celery_exporter.versions import next_version

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)


# A bucket's exemplar: its latest observation as (value, Unix time, task id, worker hostname).
# The store's own tuple, shared by the store, its snapshots and the model (never changed
# once made), so it costs no copy; its labels come from `exemplar_labels`.
Exemplar = Tuple[float, float, str, str]
# OpenMetrics caps an exemplar's label names and values at 128 characters together
EXEMPLAR_LABEL_BUDGET = 128


def exemplar_labels(exemplar: Exemplar) -> Tuple[Tuple[str, str], ...]:
    """task_id and hostname, the hostname shortened (then dropped) to stay within
    OpenMetrics' 128 characters; () for a task id too long to fit on its own (no exemplar)."""
    _, _, task_id, hostname = exemplar
    room = EXEMPLAR_LABEL_BUDGET - len("task_id") - len(task_id)
    if room < 0:
        return ()
    room -= len("hostname")
    if hostname and room > 0:
        return (("task_id", task_id), ("hostname", hostname[:room]))
    return (("task_id", task_id),)


class Histogram(NamedTuple):
    bounds: Sequence[float]  # upper bounds of the classic buckets, without +Inf
    counts: Sequence[int]  # per classic bucket, not cumulative, the +Inf bucket last
    sum: float
    # the latest observation's exemplar per classic bucket (same length as counts), or None
    exemplars: Optional[Sequence[Optional[Exemplar]]] = None
    native: Optional[NativeBuckets] = None  # the same observations in native buckets
    zero_threshold: float = 0.0


Value = Union[int, float, Histogram]
# Histogram((all six fields)) without the NamedTuple's Python-level __new__ (see new_metric)
HistogramFields = Tuple[
    Sequence[float], Sequence[int], float, Optional[Sequence[Optional[Exemplar]]], Optional[NativeBuckets], float
]
new_histogram: Callable[[HistogramFields], Histogram] = partial(tuple.__new__, Histogram)


class _MetricFields(NamedTuple):
    labels: Tuple[str, ...]  # values, in the order of the family's label_names
    value: Value
    # Within its family, the same version means the same labels and value (never changed).
    version: int


class Metric(_MetricFields):
    """A metric: `Metric(labels, value)` gets a version of its own (it matches no other);
    whoever knows that a value is unchanged passes the version it had before."""

    __slots__ = ()

    def __new__(cls, labels: Tuple[str, ...], value: Value, version: Optional[int] = None) -> "Metric":
        return tuple.__new__(cls, (labels, value, next_version() if version is None else version))


# Metric((labels, value, version)) without the Python-level __new__: a scrape makes a
# Metric per changed sample, tens of thousands at 2,000 label sets.
new_metric: Callable[[Tuple[Tuple[str, ...], Value, int]], Metric] = partial(tuple.__new__, Metric)


class Family:
    """One metric family: its name without type suffixes (`celery_task_sent`, shown as
    `celery_task_sent_total`), type, help text, unit ("" for none) and metrics.

    `version`, when not None, names the list of metrics: a family of the same name with the
    same version has the same metrics in the same order (the collector sets it on the lists
    it keeps across scrapes; `add` sets it back to None)."""

    __slots__ = ("name", "kind", "help", "unit", "label_names", "metrics", "version")

    def __init__(self, name: str, kind: str, help_: str, label_names: Sequence[str] = (), unit: str = ""):
        if kind not in KINDS:
            raise ValueError(f"unknown metric type {kind!r}")
        self.name, self.kind, self.help, self.unit = name, kind, help_, unit
        self.label_names = tuple(label_names)
        self.metrics: List[Metric] = []
        self.version: Optional[int] = None

    def add(self, labels: Sequence[str], value: Value) -> None:
        """Add a metric with a version of its own."""
        self.metrics.append(new_metric((tuple(labels), value, next_version())))
        self.version = None

    def exposed_name(self) -> str:
        """The name it goes by in queries, and its samples in every format: a counter's ends
        in `_total` (the text formats' samples, protobuf's MetricFamily name)."""
        return self.name + "_total" if self.kind == COUNTER else self.name

    def sample_names(self) -> Tuple[str, ...]:
        """The names its samples carry in the text formats."""
        if self.kind == COUNTER:
            return (self.exposed_name(),)
        if self.kind == HISTOGRAM:
            return (self.name + "_bucket", self.name + "_count", self.name + "_sum")
        return (self.name,)

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.kind!r}, {len(self.metrics)} metrics)"


def select(families: Sequence[Family], names: Sequence[str]) -> List[Family]:
    """The families that `name[]` asks for: by family name or by any of its sample names
    (`celery_task_sent_total`, `celery_task_runtime_seconds_bucket`); all for no names."""
    if not names:
        return list(families)
    wanted = set(names)
    return [f for f in families if f.name in wanted or wanted.intersection(f.sample_names())]
