"""Exposition: one model of what a scrape shows (`model`), three encoders of it (text 0.0.4
and OpenMetrics in `text`, Prometheus protobuf in `protobuf`), and content negotiation
(`negotiate`). The collector builds the model; the web layer picks the encoder."""

from __future__ import annotations

from typing import Dict, Iterator, Protocol, Sequence

from celery_exporter.exposition import negotiate
from celery_exporter.exposition.model import Family
from celery_exporter.exposition.protobuf import ProtobufEncoder
from celery_exporter.exposition.text import TextEncoder


class Encoder(Protocol):
    content_type: str
    openmetrics: bool

    def encode(self, families: Sequence[Family], gzip: bool = False) -> Iterator[bytes]: ...

    def forget(self) -> None:
        """Drop what is kept across scrapes."""


class Encoders:
    """One encoder per format, kept across scrapes: each keeps the encodings of unchanged
    metrics (and escaped label text), which is most of an idle scrape's work. Only the
    format asked for last keeps them: asking for another format drops the others' (a
    Prometheus scrapes in one format; memory stays one encoding's worth, ~1 byte per byte
    of body). Two scrapes at once may share an encoder: its caches map label values to what
    they encode to, so the worst case is a cache miss."""

    def __init__(self) -> None:
        self.by_format: Dict[str, Encoder] = {
            negotiate.TEXT: TextEncoder(openmetrics=False),
            negotiate.OPENMETRICS: TextEncoder(openmetrics=True),
            negotiate.PROTOBUF: ProtobufEncoder(),
        }
        self.last = ""

    def for_accept(self, accept: str) -> Encoder:
        fmt = negotiate.choose(accept)
        if fmt != self.last:
            for other, encoder in self.by_format.items():
                if other != fmt:
                    encoder.forget()
            self.last = fmt
        return self.by_format[fmt]

    def encode(self, families: Sequence[Family], fmt: str = negotiate.TEXT, gzip: bool = False) -> bytes:
        return b"".join(self.by_format[fmt].encode(families, gzip))
