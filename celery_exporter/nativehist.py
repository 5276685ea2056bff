"""Native (sparse exponential) histogram buckets, as Prometheus defines them.

At schema s every power of two is split into 2**s buckets: bucket i holds the values in
(base**(i-1), base**i] with base = 2**(2**-s), so 1 is always a boundary and each bucket is
`base` times as wide as the one below it. Values whose magnitude is at most the zero
threshold go to the zero bucket. A series keeps only the buckets it has seen (a dict of
index -> count); when more than the cap are populated, the schema is lowered by one, which
merges each pair of neighbouring buckets (i -> ceil(i / 2)), until the cap holds again; this
is what client_golang does when a histogram reaches its bucket limit and may not reset.

Spans and deltas, the protobuf format's sparse encoding, are computed by `spans_and_deltas`.
Observations here are never negative (runtimes and waits are clamped at 0), so only the zero
and positive buckets exist.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from math import frexp
from typing import Dict, List, Optional, Tuple

MIN_SCHEMA, MAX_SCHEMA = -4, 8
# client_golang's default: the smallest positive normal float's neighbourhood, 2**-128
DEFAULT_ZERO_THRESHOLD = 2.0**-128
DEFAULT_BUCKET_FACTOR = 1.1  # schema 3: each bucket 9.05 % wider than the one below
DEFAULT_MAX_BUCKETS = 160

# For schema s > 0: the s-th list holds 2**(j / 2**s - 1) for j in 0 .. 2**s - 1, the bucket
# boundaries inside [0.5, 1), where math.frexp puts every mantissa.
MANTISSA_BOUNDS = [[0.5]] + [[2.0 ** (j / 2**s - 1) for j in range(2**s)] for s in range(1, MAX_SCHEMA + 1)]


def schema_for_factor(factor: float) -> Optional[int]:
    """The highest schema whose bucket growth factor is at most `factor` (clamped to
    -4 .. 8); None for a factor of 1 or less: native histograms off."""
    if factor <= 1:
        return None
    schema = -math.floor(math.log2(math.log2(factor)))
    return max(MIN_SCHEMA, min(MAX_SCHEMA, schema))


def bucket_key(value: float, schema: int) -> int:
    """Index of the bucket that holds `value` (> 0, finite) at `schema`."""
    frac, exp = math.frexp(value)  # value = frac * 2**exp, 0.5 <= frac < 1
    if schema > 0:
        bounds = MANTISSA_BOUNDS[schema]
        return bisect_left(bounds, frac) + ((exp - 1) << schema)
    key = exp - 1 if frac == 0.5 else exp  # an exact power of two is its bucket's upper bound
    if schema == 0:
        return key
    shift = -schema
    return (key + (1 << shift) - 1) >> shift


def upper_bound(key: int, schema: int) -> float:
    """The (inclusive) upper boundary of bucket `key` at `schema`."""
    return float(2.0 ** (key * 2.0**-schema))


class NativeBuckets:
    """One native histogram's populated buckets (the sum and count live beside it)."""

    __slots__ = ("schema", "zero_count", "buckets")

    def __init__(self, schema: int):
        self.schema = schema
        self.zero_count = 0
        self.buckets: Dict[int, int] = {}

    def observe(self, value: float, zero_threshold: float, max_buckets: int) -> None:
        """Count one value: in the zero bucket unless it is above `zero_threshold`, then
        lower the schema while more than `max_buckets` buckets are populated. The store
        calls this for every observation, so the usual case (schema > 0, a bucket seen
        before) is `bucket_key` written out, with no call."""
        if value > zero_threshold:
            schema = self.schema
            if schema > 0:
                frac, exp = frexp(value)
                key = bisect_left(MANTISSA_BOUNDS[schema], frac) + ((exp - 1) << schema)
            else:
                key = bucket_key(value, schema)
            buckets = self.buckets
            try:
                buckets[key] += 1
            except KeyError:  # the bucket's first observation
                buckets[key] = 1
                if len(buckets) > max_buckets:
                    self.fit(max_buckets)
        else:
            self.zero_count += 1

    def fit(self, max_buckets: int) -> None:
        """Lower the schema until at most `max_buckets` buckets are populated (or the
        schema is the lowest)."""
        while len(self.buckets) > max_buckets and self.schema > MIN_SCHEMA:
            self.downscale()

    def downscale(self) -> None:
        """Lower the schema by one: neighbouring buckets (2j-1, 2j) merge into j."""
        merged: Dict[int, int] = {}
        for key, count in self.buckets.items():
            to = (key + 1) >> 1
            merged[to] = merged.get(to, 0) + count
        self.buckets = merged
        self.schema -= 1

    def copy(self) -> "NativeBuckets":
        out = NativeBuckets(self.schema)
        out.zero_count = self.zero_count
        out.buckets = dict(self.buckets)
        return out


Span = Tuple[int, int]  # (offset, length)


def spans_and_deltas(buckets: Dict[int, int]) -> Tuple[List[Span], List[int]]:
    """Prometheus' sparse encoding of populated buckets: spans of consecutive indices (the
    first span's offset is its start index, later ones the gap after the previous span) and
    each count as the difference to the previous bucket's count (the first to 0)."""
    spans: List[Span] = []
    deltas: List[int] = []
    previous_key: Optional[int] = None
    previous_count = 0
    for key in sorted(buckets):
        count = buckets[key]
        if previous_key is None:
            spans.append((key, 1))
        elif key == previous_key + 1:
            offset, length = spans[-1]
            spans[-1] = (offset, length + 1)
        else:
            spans.append((key - previous_key - 1, 1))
        deltas.append(count - previous_count)
        previous_key, previous_count = key, count
    return spans, deltas
