"""What encoders share: keeping each family's bytes across scrapes.

A scrape of thousands of unchanged label sets should not encode them again. An encoder
derived from `KeepingEncoder` keeps, per family name, the bytes it wrote last time and the
version of each metric in them, and reuses them by version alone (what a version promises
is in `celery_exporter.versions`):

* the same header and label names, and the same `Family.version` or else the same sequence
  of metric versions: the very same bytes object is given again (so a layer after it,
  such as gzip, can keep its own work);
* otherwise the family is written anew from the kept bytes of each metric whose version is
  among the kept ones, and fresh encodings of the others.

With gzip (`encode(..., gzip=True)`) a family is kept compressed as well (`gzipped.Packed`),
and an unchanged family keeps only that: an idle scrape neither encodes nor compresses, and
what is held is the compressed body (a tenth of the plain one). A family that changed keeps
its plain bytes too until a scrape finds it unchanged, so that under load its unchanged
metrics are still spliced in rather than encoded again (a family new to the format, as on
the first scrape, is kept compressed only).

What is kept is rebuilt by every scrape from what it wrote, so families and label sets that
are gone fall out; memory is at most about one body's worth.

An encoder made with `keep=False` keeps nothing and writes every family from scratch: the
oracle that the kept path is tested against (tests/unit/test_cache_oracle.py).
"""

from __future__ import annotations

from itertools import accumulate, chain, compress
from operator import itemgetter, ne, sub
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

from celery_exporter.exposition import gzipped
from celery_exporter.exposition.model import Family, Metric

Piece = Union[bytes, memoryview]
VERSION = itemgetter(2)  # a Metric's version


class Kept:
    """A family as last written: its head and label names, its `Family.version` (None:
    unknown), the version of each metric, its plain bytes `data` (or None once only the
    compressed form is kept), where each metric's bytes start in them and where the last
    one ends, and its compressed form when gzip was asked for. Never changed once made
    (two scrapes at once may read the same one)."""

    __slots__ = ("head", "label_names", "version", "versions", "starts", "end", "data", "packed")

    def __init__(
        self,
        head: bytes,
        label_names: Tuple[str, ...],
        version: Optional[int],
        versions: List[int],
        starts: List[int],
        end: int,
        data: Optional[bytes],
        packed: Optional[gzipped.Packed] = None,
    ):
        self.head, self.label_names, self.version, self.versions = head, label_names, version, versions
        self.starts, self.end, self.data, self.packed = starts, end, data, packed

    def plain(self) -> bytes:
        assert self.data is not None  # a family kept without gzip always has its plain bytes
        return self.data

    def compressed(self) -> gzipped.Packed:
        assert self.packed is not None  # a family kept with gzip always has its compressed form
        return self.packed

    def again(self, version: Optional[int], gzip: bool) -> "Kept":
        """This family, unchanged, as kept for a scrape of `Family.version` `version`: with
        gzip, from now on only compressed."""
        if gzip and self.data is not None:
            packed = self.packed if self.packed is not None else gzipped.pack(self.data)
            return Kept(self.head, self.label_names, version, self.versions, [], 0, None, packed)
        if version != self.version:
            names, versions = self.label_names, self.versions
            return Kept(self.head, names, version, versions, self.starts, self.end, self.data, self.packed)
        return self


T = TypeVar("T")


class LabelMemo(Generic[T]):
    """What an encoder made of a label set (escaped text, serialized label pairs), for the
    metrics this scrape encodes and those the last one did: a label set is in every task
    family, and under load the same label sets change again scrape after scrape. `turn`
    at the end of a scrape; label sets not encoded in two scrapes fall out. With
    `keep=False`, it makes everything anew."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._now: Dict[Tuple[str, ...], Dict[Tuple[str, ...], T]] = {}
        self._before: Dict[Tuple[str, ...], Dict[Tuple[str, ...], T]] = {}

    def of(self, names: Tuple[str, ...], metrics: Sequence[Metric], make: Callable[[Tuple[str, ...]], T]) -> List[T]:
        """For each metric, what `make` makes of its label values (once per scrape)."""
        if not self.keep:
            return [make(metric.labels) for metric in metrics]
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

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._kept: Dict[str, Kept] = {}
        self.labels: LabelMemo[Any] = LabelMemo(keep)

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
        written = self._renew(families, gzip) if self.keep else (self._afresh(f, gzip) for f in families)
        if gzip:
            packed = [gzipped.pack(trailer)] if trailer else []
            yield from gzipped.stream(chain(map(Kept.compressed, written), packed))
        else:
            yield from map(Kept.plain, written)
            if trailer:
                yield trailer
        self.labels.turn()

    def _afresh(self, family: Family, gzip: bool) -> Kept:
        """The family written from scratch, kept nowhere (the oracle)."""
        head = self.head(family)
        data, _ = self.frame(head, self.metrics(family, family.metrics), family)
        return Kept(head, family.label_names, None, [], [], 0, data, gzipped.pack(data) if gzip else None)

    def _renew(self, families: Sequence[Family], gzip: bool) -> Iterator[Kept]:
        """Each family as kept for this scrape; what is kept is rebuilt from them."""
        old, self._kept = self._kept, {}
        for family in families:
            made = self._family(family, old.get(family.name), gzip)
            self._kept[family.name] = made
            yield made

    def _family(self, family: Family, kept: Optional[Kept], gzip: bool) -> Kept:
        head = self.head(family)
        if kept is not None and (kept.head != head or kept.label_names != family.label_names):
            kept = None  # written under another header: none of it applies
        if kept is None:
            return self._write(family, head, list(map(VERSION, family.metrics)), None, gzip)
        if family.version is not None and family.version == kept.version:
            versions = kept.versions  # the same list of metrics
        else:
            versions = list(map(VERSION, family.metrics))
        if (versions is kept.versions or versions == kept.versions) and (gzip or kept.data is not None):
            return kept.again(family.version, gzip)
        return self._write(family, head, versions, kept, gzip)

    def _write(self, family: Family, head: bytes, versions: List[int], kept: Optional[Kept], gzip: bool) -> Kept:
        """The family written from its kept pieces and fresh ones, kept for this scrape."""
        pieces, lengths = self._pieces(family, versions, kept)
        data, offset = self.frame(head, pieces, family)
        starts = list(accumulate(lengths, initial=offset + len(head)))
        end = starts.pop()
        names, version = family.label_names, family.version
        if not gzip:
            return Kept(head, names, version, versions, starts, end, data)
        if kept is not None:  # changed: kept plain too, for splicing if it changes again
            return Kept(head, names, version, versions, starts, end, data, gzipped.pack(data))
        # new to this format: nothing says it will change
        return Kept(head, names, version, versions, [], 0, None, gzipped.pack(data))

    def _pieces(self, family: Family, versions: List[int], kept: Optional[Kept]) -> Tuple[List[Piece], List[int]]:
        """The family's metrics' bytes, in pieces, and the length of each metric's: kept
        where its version is among the kept ones (by position when the versions line up,
        the usual case), else encoded."""
        if kept is None or kept.data is None:
            return self._fresh(family)
        if len(kept.versions) != len(versions):  # label sets came or went
            return self._found(family, versions, kept)
        missed = list(compress(range(len(versions)), map(ne, kept.versions, versions)))
        if len(missed) == len(versions):
            return self._fresh(family)
        return self._spliced(family, missed, kept)

    def _fresh(self, family: Family) -> Tuple[List[Piece], List[int]]:
        pieces: List[Piece] = list(self.metrics(family, family.metrics))
        return pieces, list(map(len, pieces))

    def _spliced(self, family: Family, missed: List[int], kept: Kept) -> Tuple[List[Piece], List[int]]:
        """Metrics in the kept ones' places, new versions at `missed`: each run of kept ones
        is one piece of the kept bytes, the others are encoded."""
        metrics, view, starts = family.metrics, memoryview(kept.plain()), kept.starts
        lengths = list(map(sub, starts[1:] + [kept.end], starts))
        pieces: List[Piece] = []
        run = 0  # the first metric of the run of kept ones before the next missed one
        for at, piece in zip(missed, self.metrics(family, [metrics[i] for i in missed])):
            if at > run:
                pieces.append(view[starts[run] : starts[at]])
            pieces.append(piece)
            lengths[at] = len(piece)
            run = at + 1
        if run < len(starts):
            pieces.append(view[starts[run] : kept.end])
        return pieces, lengths

    def _found(self, family: Family, versions: List[int], kept: Kept) -> Tuple[List[Piece], List[int]]:
        """Metrics not in the kept ones' places: each found by its version, else encoded."""
        view, starts = memoryview(kept.plain()), kept.starts
        spans = dict(zip(kept.versions, zip(starts, starts[1:] + [kept.end])))
        hits = list(map(spans.get, versions))
        fresh = iter(self.metrics(family, [m for m, hit in zip(family.metrics, hits) if hit is None]))
        pieces: List[Piece] = [view[hit[0] : hit[1]] if hit is not None else next(fresh) for hit in hits]
        return pieces, list(map(len, pieces))
