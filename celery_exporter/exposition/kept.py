"""What encoders share: keeping each family's bytes across scrapes.

A scrape of thousands of unchanged label sets should not encode them again. The collector
hands over the same Metric object while a label set is unchanged; an encoder derived from
`KeepingEncoder` keeps, per family, the bytes it wrote last time and where each metric's
encoding lies in them:

* every metric the same object, in the same order, under the same header: the very same
  bytes object is given again (so a layer after it, such as gzip, can keep its own work);
* otherwise the family is written anew from the kept slices of unchanged metrics and fresh
  encodings of the others.

With gzip (`encode(..., gzip=True)`) a family is kept compressed as well (`gzipped.Packed`),
and an unchanged family keeps only that: an idle scrape neither encodes nor compresses, and
what is held is the compressed body (a tenth of the plain one). A family that changed keeps
its plain bytes too until a scrape finds it unchanged, so that under load its unchanged
metrics are still spliced in rather than encoded again (a family new to the format, as on
the first scrape, is kept compressed only).

What is kept is rebuilt by every scrape from what it wrote, so families and label sets that
are gone fall out; memory is at most about one body's worth.
"""

from __future__ import annotations

from itertools import accumulate, chain, compress
from operator import is_, not_
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

from celery_exporter.exposition import gzipped
from celery_exporter.exposition.model import Family, Metric

Piece = Union[bytes, memoryview]


class Kept:
    """A family as last written: its head, its metrics, its plain bytes `data` (or None once
    only the compressed form is kept), where each metric's bytes start in them and where the
    last one ends, and its compressed form when gzip was asked for. Never changed once made
    (two scrapes at once may read the same one)."""

    __slots__ = ("head", "metrics", "starts", "end", "data", "packed")

    def __init__(
        self,
        head: bytes,
        metrics: List[Metric],
        starts: List[int],
        end: int,
        data: Optional[bytes],
        packed: Optional[gzipped.Packed] = None,
    ):
        self.head, self.metrics, self.starts, self.end = head, metrics, starts, end
        self.data, self.packed = data, packed

    def plain(self) -> bytes:
        assert self.data is not None  # a family kept without gzip always has its plain bytes
        return self.data

    def compressed(self) -> gzipped.Packed:
        assert self.packed is not None  # a family kept with gzip always has its compressed form
        return self.packed


T = TypeVar("T")


class LabelMemo(Generic[T]):
    """What an encoder made of a label set (escaped text, serialized label pairs), for the
    metrics this scrape encodes and those the last one did: a label set is in every task
    family, and under load the same label sets change again scrape after scrape. `turn`
    at the end of a scrape; label sets not encoded in two scrapes fall out."""

    def __init__(self) -> None:
        self._now: Dict[Tuple[str, ...], Dict[Tuple[str, ...], T]] = {}
        self._before: Dict[Tuple[str, ...], Dict[Tuple[str, ...], T]] = {}

    def of(self, names: Tuple[str, ...], metrics: Sequence[Metric], make: Callable[[Tuple[str, ...]], T]) -> List[T]:
        """For each metric, what `make` makes of its label values (once per scrape)."""
        now = self._now.setdefault(names, {})
        before = self._before.get(names, {})
        out = []
        for metric in metrics:
            values = metric.labels
            made = now.get(values)
            if made is None:
                made = before.get(values)
                if made is None:
                    made = make(values)
                now[values] = made
            out.append(made)
        return out

    def turn(self) -> None:
        self._before, self._now = self._now, {}

    def forget(self) -> None:
        self._now, self._before = {}, {}


class KeepingEncoder:
    content_type = ""
    openmetrics = False

    def __init__(self) -> None:
        self._kept: Dict[str, Kept] = {}
        self.labels: LabelMemo[Any] = LabelMemo()

    def forget(self) -> None:
        self._kept = {}
        self.labels.forget()

    # -- what an encoder defines ----------------------------------------------------------

    def head(self, family: Family) -> bytes:
        """The family's bytes before its first metric."""
        raise NotImplementedError

    def metrics(self, family: Family, metrics: Sequence[Metric]) -> List[bytes]:
        """Fresh encodings of these metrics of the family, one each."""
        raise NotImplementedError

    def frame(self, head: bytes, body: Sequence[Piece], family: Family) -> Tuple[bytes, int]:
        """The family's bytes from its head and metric pieces, and the offset of the head in
        them (e.g. after a length prefix)."""
        return b"".join([head, *body]), 0

    def trailer(self) -> Optional[bytes]:
        """Bytes after the last family, if any."""
        return None

    # -- the shared part ------------------------------------------------------------------

    def encode(self, families: Sequence[Family], gzip: bool = False) -> Iterator[bytes]:
        """The body, family by family; with gzip, as one gzip stream."""
        trailer = self.trailer()
        if gzip:
            packed = [gzipped.pack(trailer)] if trailer else []
            yield from gzipped.stream(chain(map(Kept.compressed, self._renew(families, True)), packed))
        else:
            yield from map(Kept.plain, self._renew(families, False))
            if trailer:
                yield trailer
        self.labels.turn()

    def _renew(self, families: Sequence[Family], gzip: bool) -> Iterator[Kept]:
        """Each family as kept for this scrape; what is kept is rebuilt from them."""
        old, self._kept = self._kept, {}
        for family in families:
            yield self._family(family, old.get(family.name), gzip)

    def _family(self, family: Family, kept: Optional[Kept], gzip: bool) -> Kept:
        head = self.head(family)
        metrics = family.metrics
        # which metrics are the very objects kept, by position (the usual case: the same
        # label sets in the same order), or None when the positions do not line up
        same: Optional[List[bool]] = None
        if kept is not None and kept.head == head and len(kept.metrics) == len(metrics):
            same = list(map(is_, kept.metrics, metrics))
            if all(same) and (gzip or kept.data is not None):
                if gzip and kept.data is not None:  # unchanged: from now on only its compressed form is kept
                    packed = kept.packed if kept.packed is not None else gzipped.pack(kept.data)
                    kept = Kept(head, kept.metrics, [], 0, None, packed)
                self._kept[family.name] = kept
                return kept
        pieces: List[Piece]
        if kept is None or kept.data is None:
            pieces = list(self.metrics(family, metrics))
        else:
            view = memoryview(kept.data)
            ends = kept.starts[1:] + [kept.end]
            if same is not None:
                if any(same):
                    fresh = iter(self.metrics(family, list(compress(metrics, map(not_, same)))))
                    pieces = [view[s:e] if hit else next(fresh) for hit, s, e in zip(same, kept.starts, ends)]
                else:
                    pieces = list(self.metrics(family, metrics))
            else:  # label sets came or went: find the kept ones by their labels
                spans = {m.labels: (m, s, e) for m, s, e in zip(kept.metrics, kept.starts, ends)}
                hits = [hit if (hit := spans.get(m.labels)) is not None and hit[0] is m else None for m in metrics]
                fresh = iter(self.metrics(family, [m for m, hit in zip(metrics, hits) if hit is None]))
                pieces = [view[hit[1] : hit[2]] if hit is not None else next(fresh) for hit in hits]
        data, offset = self.frame(head, pieces, family)
        bounds = list(accumulate(map(len, pieces), initial=offset + len(head)))
        end = bounds.pop()
        if not gzip:
            made = Kept(head, list(metrics), bounds, end, data)
        elif kept is not None:  # changed: kept plain too, for splicing if it changes again
            made = Kept(head, list(metrics), bounds, end, data, gzipped.pack(data))
        else:  # new to this format: nothing says it will change
            made = Kept(head, list(metrics), [], 0, None, gzipped.pack(data))
        self._kept[family.name] = made
        return made
