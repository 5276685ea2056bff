"""What encoders share: keeping each family's bytes across scrapes.

A scrape of thousands of unchanged label sets should not encode them again. The collector
hands over the same Metric object while a label set is unchanged; an encoder derived from
`KeepingEncoder` keeps, per family, the bytes it wrote last time and where each metric's
encoding lies in them:

* every metric the same object, in the same order, under the same header: the very same
  bytes object is given again (so a layer after it, such as gzip, can keep its own work);
* otherwise the family is written anew from the kept slices of unchanged metrics and fresh
  encodings of the others.

What is kept is rebuilt by every scrape from what it wrote, so families and label sets that
are gone fall out; memory is about one body's worth.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from celery_exporter.exposition.model import Family, Metric

Piece = Union[bytes, memoryview]


class Kept:
    """A family as last written: its head, its metrics, where each one's bytes start in
    `data` and where the last one ends."""

    __slots__ = ("head", "metrics", "starts", "end", "data")

    def __init__(self, head: bytes, metrics: List[Metric], starts: List[int], end: int, data: bytes):
        self.head, self.metrics, self.starts, self.end, self.data = head, metrics, starts, end, data


class KeepingEncoder:
    content_type = ""
    openmetrics = False

    def __init__(self) -> None:
        self._kept: Dict[str, Kept] = {}

    def forget(self) -> None:
        self._kept = {}

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

    def encode(self, families: Sequence[Family]) -> Iterator[bytes]:
        old, self._kept = self._kept, {}
        for family in families:
            yield self._family(family, old.get(family.name))
        trailer = self.trailer()
        if trailer:
            yield trailer

    def _family(self, family: Family, kept: Optional[Kept]) -> bytes:
        head = self.head(family)
        metrics = family.metrics
        if (
            kept is not None
            and kept.head == head
            and len(kept.metrics) == len(metrics)
            and all(a is b for a, b in zip(kept.metrics, metrics))
        ):
            self._kept[family.name] = kept
            return kept.data
        spans: Dict[Tuple[str, ...], Tuple[Metric, int, int]] = {}
        view: Optional[memoryview] = None
        if kept is not None:
            view = memoryview(kept.data)
            ends = kept.starts[1:] + [kept.end]
            spans = {m.labels: (m, s, e) for m, s, e in zip(kept.metrics, kept.starts, ends)}
        fresh = [m for m in metrics if (hit := spans.get(m.labels)) is None or hit[0] is not m]
        encoded = iter(self.metrics(family, fresh)) if fresh else iter(())
        pieces: List[Piece] = []
        for metric in metrics:
            hit = spans.get(metric.labels)
            if hit is not None and hit[0] is metric:
                assert view is not None
                pieces.append(view[hit[1] : hit[2]])
            else:
                pieces.append(next(encoded))
        data, offset = self.frame(head, pieces, family)
        starts = []
        pos = offset + len(head)
        for piece in pieces:
            starts.append(pos)
            pos += len(piece)
        self._kept[family.name] = Kept(head, list(metrics), starts, pos, data)
        return data
