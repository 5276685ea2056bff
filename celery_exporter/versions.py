"""Version numbers: how each layer of a scrape knows what it may reuse from the last one.

A scrape goes store -> snapshot (under the lock) -> collector -> model families -> encoder
-> gzip -> HTTP. With thousands of label sets most of a scrape is what the last one showed,
so three layers keep what they built. None of them decides what is unchanged by object
identity; each goes by version numbers, under one rule:

    Version numbers come from one process-wide counter (`next_version`), or from a block
    made of one of its numbers (`next_version() << 64`: 2**64 numbers no other block or
    plain version shares), are given to content when it is made or changed, and
    content under a version never changes. So
    within one metric family, two pieces of content with the same version are the same,
    and whatever was built from one may be used for the other.

Who gives what its version:

* the store, under its lock, to a task label set (`store.tasks.TaskSeries`, its `TaskRow`):
  a block of numbers of its own when it is made, and the block plus its count of changes
  so far, one more at every change. Each part of it (a counter with its last-seen time, a
  histogram with its sum, exemplars and native buckets) has the block plus its own count
  of changes, which is what its value counts: `store.tasks.part_versions`;
* the store, at every count of an exception: the new `ExceptionRow` that replaces the old;
* the collector, on each model metric (`exposition.model.Metric.version`): its part's
  version; for the running tasks, which the store counts anew for every snapshot (the one
  place where numbers are compared), `collector.Stamps`, which keeps a label set's version
  while its value is the same number (`same_number`) as at the last scrape. Any other
  metric gets a new version when made (`Metric(labels, value)`, `Family.add`), so it
  matches nothing;
* the collector, on the metric lists it hands out again (`Family.version`, else None).

What each layer keeps and when it reuses it:

* `store.tasks`: the last row made of each series, while the series' version is the row's
  (the row holds the series' own lists; the series copies them before its next change);
  exception rows are replaced, never changed.
* `collector`: each row's metrics while the row's version is the same, and in a changed row
  each metric whose part's version is the same; the task families' metric lists while the
  rows' versions are the same, in order (the running tasks' while the rows' label sets and
  the running rows' numbers are), each handed out again under its `Family.version`; a list
  built anew that holds the same metrics as before is the one before, under its version.
  Each is kept in one piece with what it was built from, so two scrapes at once can only
  miss.
* the encoders (`exposition.kept`), per family name: the bytes last written and the version
  of each metric in them. Same header and label names, and the same `Family.version` or
  else the same sequence of metric versions: the very same bytes (and compressed bytes)
  again. Otherwise each metric whose version is among the kept ones gets its kept bytes,
  and the others are encoded.

Rendering memos are not about change: label texts by label values, `le` texts by bounds,
headers by name, type, help and unit are keyed by exactly what they render; an exemplar's
text is kept by the exemplar tuple object, which the memo holds (so its id stays its own)
and which nobody changes.

The oracle: `CeleryCollector(..., keep=False)` with `Encoders(keep=False)` builds every
scrape from the store's live data (`Store.snapshot(now, fresh=True)`) and keeps nothing.
tests/unit/test_cache_oracle.py drives random changes between scrapes and requires the
kept path to write the same bytes: a change without a new version shows there.
"""

from __future__ import annotations

import itertools
from typing import Callable

# A new version number on every call (a C-level counter: atomic under the GIL).
next_version: Callable[[], int] = itertools.count(1).__next__


def same_number(a: object, b: object) -> bool:
    """Whether two sample values are written alike: equal, of one type, and not zeros of
    different signs (0.0 and -0.0 are equal, but written differently). NaN is never the same."""
    return type(a) is type(b) and a == b and (a != 0 or str(a) == str(b))
