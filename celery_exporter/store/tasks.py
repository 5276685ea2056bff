"""Task series: per (name, queue_name[, hostname]) state counters, the runtime and wait
histograms, last-seen times, and the exception counters.

Every label set records when it was last updated: past --series-ttl it is hidden from
scrapes at once and removed by the next sweep.

Versions (what the snapshot's readers do with them: `celery_exporter.versions`). A label set
is made with a block of version numbers of its own, `next_version() << VERSION_BITS`, so
that no two label sets share a number, nor a label set made again after it expired. Its
version is the block plus its changes so far: every change adds one, under the lock. A
part's version is the block plus the changes of that part, which its value counts: a
counter's count (a last-seen time changes with its state's counter), a histogram's number
of observations (an observation, which adds one, is the only change to a histogram, its
sum, exemplars and native buckets). `part_versions` computes them for a row.
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left
from functools import partial
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from celery_exporter import catalogue
from celery_exporter.nativehist import NativeBuckets
from celery_exporter.settings import Settings
from celery_exporter.store.budget import SeriesBudget
from celery_exporter.versions import next_version

N_STATES = len(catalogue.TASK_COUNTERS)  # the event states, then the derived counters
N_HISTOGRAMS = len(catalogue.HISTOGRAMS)
# state index -> position in TaskSeries.last_seen
LAST_SEEN_INDEX = {catalogue.STATE_INDEX[state]: i for i, (state, _, _) in enumerate(catalogue.LAST_SEEN)}
# the same by state index, None for states without a last-seen time (a tuple: indexed on the hot path)
LAST_SEEN_OF = tuple(LAST_SEEN_INDEX.get(state) for state in range(N_STATES))
# A label set's parts (see the module doc and part_versions): each counter by its state
# index, then each histogram at HISTOGRAM_PART + its index.
HISTOGRAM_PART = N_STATES
# last-seen position -> the part whose version it has: its state's counter
LAST_SEEN_PART = tuple(catalogue.STATE_INDEX[state] for state, _, _ in catalogue.LAST_SEEN)
# a bit per histogram index (TaskSeries.shared_hists), and all of them
HISTOGRAM_BIT = tuple(1 << index for index in range(N_HISTOGRAMS))
EVERY_HISTOGRAM = (1 << N_HISTOGRAMS) - 1
# A label set's block of versions: 2**64 of them (more changes than it can live to see).
VERSION_BITS = 64

TaskKey = Tuple[str, ...]  # (name, queue_name) or (name, queue_name, hostname)
# (histogram index from catalogue.HISTOGRAMS, observed seconds)
Observation = Tuple[int, float]
# the task id and worker hostname of an observation, kept as its bucket's exemplar
Trace = Tuple[str, str]
# a bucket's latest observation: (seconds, exporter time, task id, hostname)
Exemplar = Tuple[float, float, str, str]
# the lists of a task label set that its row holds (see TaskSeries.row)
_Lists = Tuple[
    List[int],
    List[Optional[List[int]]],
    List[float],
    List[Optional[float]],
    List[Optional[NativeBuckets]],
    List[Optional[List[Optional[Exemplar]]]],
]


class TaskSeries:
    """Counters and histograms of one task label set."""

    __slots__ = (
        "counts",
        "hist_counts",
        "hist_sums",
        "native",
        "exemplars",
        "updated",
        "last_seen",
        "version",
        "shared",
        "shared_hists",
    )

    def __init__(self, now: float, block: int):
        self.counts = [0] * N_STATES
        self.hist_counts: List[Optional[List[int]]] = [None] * N_HISTOGRAMS
        self.hist_sums = [0.0] * N_HISTOGRAMS
        self.native: List[Optional[NativeBuckets]] = [None] * N_HISTOGRAMS
        # per histogram, per classic bucket: its latest observation, or None
        self.exemplars: List[Optional[List[Optional[Exemplar]]]] = [None] * N_HISTOGRAMS
        self.updated = now
        # exporter time of the last event of each catalogue.LAST_SEEN state, or None
        self.last_seen: List[Optional[float]] = [None] * len(catalogue.LAST_SEEN)
        # its block of versions plus its changes (see the module doc): a snapshot makes a new
        # row only for a series whose version is not its last row's
        self.version = block
        # True while a snapshot's row holds these very lists: the next change copies them
        # first (copy on write), so an unchanged series is held once, not twice
        self.shared = False
        # Bit per histogram (HISTOGRAM_BIT) whose buckets, native buckets and exemplars a row
        # holds: copied at the histogram's next observation only. An event observes one or
        # two of the five histograms; copying all of them at every change after a scrape
        # was most of the copying.
        self.shared_hists = 0

    def unshare(self) -> None:
        """Own copies of the counters and of the lists of histograms, before a change; each
        histogram's own lists are copied by `own_histogram` when it is observed."""
        self.counts = self.counts[:]
        self.hist_counts = self.hist_counts[:]
        self.hist_sums = self.hist_sums[:]
        self.last_seen = self.last_seen[:]
        self.native = self.native[:]
        self.exemplars = self.exemplars[:]
        self.shared = False

    def own_histogram(self, index: int, counts: List[int]) -> List[int]:
        """Own copies of an observed histogram's buckets (`counts`), native buckets and
        exemplars, which a row holds (the series is unshared): the copy of its buckets."""
        self.shared_hists &= ~HISTOGRAM_BIT[index]
        counts = self.hist_counts[index] = counts[:]
        native = self.native[index]
        if native is not None:
            self.native[index] = native.copy()
        exemplars = self.exemplars[index]
        if exemplars is not None:
            self.exemplars[index] = exemplars[:]
        return counts

    def _copies(self) -> "_Lists":
        """Copies of the lists a row holds, in TaskRow's order."""
        return (
            self.counts[:],
            [c[:] if c is not None else None for c in self.hist_counts],
            self.hist_sums[:],
            self.last_seen[:],
            [n.copy() if n is not None else None for n in self.native],
            [e[:] if e is not None else None for e in self.exemplars],
        )

    def row(self, key: TaskKey, copy: bool = False) -> "TaskRow":
        """Its data now as a row: holding its own lists (then shared: the next change copies
        them first), or with `copy`, copies of them."""
        if copy:
            counts, hist_counts, hist_sums, last_seen, native, exemplars = self._copies()
        else:
            counts, hist_counts, hist_sums, last_seen = self.counts, self.hist_counts, self.hist_sums, self.last_seen
            native, exemplars = self.native, self.exemplars
            self.shared = True
            self.shared_hists = EVERY_HISTOGRAM
        return TaskRow(key, counts, hist_counts, hist_sums, last_seen, native, exemplars, self.version)


class TaskRow(NamedTuple):
    """One task label set as a scrape sees it, never changed once made: it holds the
    series' own lists, which the series copies before its next change. Its `version` names
    its content (see the module doc and `part_versions`)."""

    key: TaskKey
    counts: List[int]  # by catalogue.TASK_COUNTERS
    hist_counts: List[Optional[List[int]]]  # by catalogue.HISTOGRAMS: per-bucket (not cumulative) counts, or None
    hist_sums: List[float]
    last_seen: List[Optional[float]]  # by catalogue.LAST_SEEN
    native: List[Optional[NativeBuckets]]  # by catalogue.HISTOGRAMS, None while unobserved or off
    exemplars: List[Optional[List[Optional[Exemplar]]]]
    version: int


class ExceptionRow(NamedTuple):
    """One exception label set's count: replaced by a new row (and version) at each count,
    never changed."""

    key: TaskKey
    exception: str
    total: int
    version: int
    updated: float


# ExceptionRow((all five fields)) without the NamedTuple's Python-level __new__
new_exception_row: Callable[[Tuple[TaskKey, str, int, int, float]], ExceptionRow] = partial(tuple.__new__, ExceptionRow)


def part_versions(row: TaskRow) -> List[int]:
    """The version of each part of the row (see the module doc): counters by state index,
    then histograms at HISTOGRAM_PART + their index. (Parts that never changed share the
    block's int object: the collector's metrics hold these, one per metric.)"""
    block = row.version >> VERSION_BITS << VERSION_BITS
    return [block + count if count else block for count in row.counts] + [
        block + sum(counts) if counts is not None else block for counts in row.hist_counts
    ]


@dataclasses.dataclass(frozen=True)
class TaskSnapshot:
    rows: List[TaskRow]
    exceptions: List[ExceptionRow]


class TaskSeriesStore:
    def __init__(self, lock: threading.Lock, settings: Settings, budget: SeriesBudget):
        self._lock = lock
        self._budget = budget
        self._ttl = settings.series_ttl
        self.runtime_bounds = tuple(settings.runtime_buckets)
        self.wait_bounds = tuple(settings.wait_buckets)
        # by catalogue.HISTOGRAMS: the run times (of successes, failures, retries) and the waits
        runtime, wait = self.runtime_bounds, self.wait_bounds
        self.bounds = (runtime, wait, wait, runtime, runtime)
        self.native_schema = settings.native_schema  # None: native histograms off
        self.zero_threshold = settings.native_zero_threshold
        self.max_native_buckets = settings.native_max_buckets
        self._series: Dict[TaskKey, TaskSeries] = {}
        self._rows: Dict[TaskKey, TaskRow] = {}  # the last row made of each series
        self._exceptions: Dict[Tuple[TaskKey, str], ExceptionRow] = {}

    # -- writers (take the lock) --------------------------------------------------------

    def observe(
        self,
        key: TaskKey,
        state: int,
        now: float,
        observations: Sequence[Observation] = (),
        trace: Optional[Trace] = None,
    ) -> bool:
        """Count one task event of `state` (index into TASK_COUNTERS) for `key`, and observe
        (histogram index, seconds) pairs, in classic and (when on) native buckets; `trace`
        becomes the exemplar of each observation's classic bucket. False if the label set
        was refused (--max-series)."""
        # (acquire and release, not `with`: on CPython 3.11 `with` costs a tenth of this method)
        lock = self._lock
        lock.acquire()
        try:
            series = self._series.get(key)
            if series is None:
                if not self._budget.admit("task"):
                    return False
                # All state counters start at 0, so the first failure shows in increase().
                series = self._series[key] = TaskSeries(now, next_version() << VERSION_BITS)
            elif series.shared:
                series.unshare()
            series.counts[state] += 1
            series.version += 1
            series.updated = now
            last = LAST_SEEN_OF[state]
            if last is not None:
                series.last_seen[last] = now
            if not observations:
                return True
            bounds, exemplars_of = self.bounds, series.exemplars
            for index, value in observations:
                counts = series.hist_counts[index]
                if counts is None:
                    counts = self._start_histogram(series, index)
                elif series.shared_hists & HISTOGRAM_BIT[index]:
                    counts = series.own_histogram(index, counts)
                bucket = bisect_left(bounds[index], value)
                counts[bucket] += 1
                series.hist_sums[index] += value
                native = series.native[index]
                if native is not None:
                    native.observe(value, self.zero_threshold, self.max_native_buckets)
                if trace is not None:
                    slots = exemplars_of[index]
                    if slots is not None:  # (always: set with the counts)
                        slots[bucket] = (value, now, trace[0], trace[1])
            return True
        finally:
            lock.release()

    def admit(self, key: TaskKey, now: float) -> bool:
        """Hold a series for `key` (every counter at 0) if there is none, as a task's first
        event would: for a run learned from `inspect active`, which counts no event. False
        if the label set was refused (--max-series)."""
        with self._lock:
            if key in self._series:
                return True
            if not self._budget.admit("task"):
                return False
            self._series[key] = TaskSeries(now, next_version() << VERSION_BITS)
            return True

    def _start_histogram(self, series: TaskSeries, index: int) -> List[int]:
        """A histogram's first observation: its classic buckets, exemplar slots and (when
        on) native buckets."""
        size = len(self.bounds[index]) + 1
        series.shared_hists &= ~HISTOGRAM_BIT[index]  # (new lists: no row holds them)
        counts = series.hist_counts[index] = [0] * size
        series.exemplars[index] = [None] * size
        if self.native_schema is not None:
            series.native[index] = NativeBuckets(self.native_schema)
        return counts

    def exception(self, key: TaskKey, exception: str, now: float) -> bool:
        """Count a failed or retried attempt's exception class. False if refused."""
        with self._lock:
            row = self._exceptions.get((key, exception))
            if row is None:
                if not self._budget.admit("exception"):
                    return False
                total = 1
            else:
                total = row.total + 1
            self._exceptions[(key, exception)] = new_exception_row((key, exception, total, next_version(), now))
            return True

    # -- with the lock held -------------------------------------------------------------

    def _alive(self, updated: float, now: float) -> bool:
        return now - updated <= self._ttl

    def queue_names_locked(self, now: float) -> Set[str]:
        """The queue_name of every live label set."""
        return {key[1] for key, s in self._series.items() if self._alive(s.updated, now)}

    def sweep_locked(self, now: float) -> int:
        dead = [k for k, s in self._series.items() if not self._alive(s.updated, now)]
        for key in dead:
            del self._series[key]
            self._rows.pop(key, None)
        dead_exc = [k for k, e in self._exceptions.items() if not self._alive(e.updated, now)]
        for exc_key in dead_exc:
            del self._exceptions[exc_key]
        self._budget.release("task", len(dead), expired=True)
        self._budget.release("exception", len(dead_exc), expired=True)
        return len(dead) + len(dead_exc)

    def snapshot_locked(self, now: float, fresh: bool = False) -> TaskSnapshot:
        """The live label sets' rows: each series' last row while its version is the row's,
        else a new one. `fresh`: copies of every series' data, nothing kept or marked shared
        (the oracle of the version stamps, see `celery_exporter.versions`)."""
        rows = []
        made = self._rows
        ttl = self._ttl
        for key, s in self._series.items():
            if not now - s.updated <= ttl:  # past --series-ttl: hidden
                continue
            if fresh:
                rows.append(s.row(key, copy=True))
                continue
            row = made.get(key)
            if row is None or row.version != s.version:
                row = made[key] = s.row(key)
            rows.append(row)
        exceptions = [row for row in self._exceptions.values() if now - row.updated <= ttl]
        return TaskSnapshot(rows, exceptions)
