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

    def encode(self, families: Sequence[Family]) -> Iterator[bytes]: ...


class Encoders:
    """One encoder per format, kept across scrapes (they cache escaped label text). Two
    scrapes at once may share one: its caches map label values to text, so the worst case
    is a cache miss."""

    def __init__(self) -> None:
        self.by_format: Dict[str, Encoder] = {
            negotiate.TEXT: TextEncoder(openmetrics=False),
            negotiate.OPENMETRICS: TextEncoder(openmetrics=True),
            negotiate.PROTOBUF: ProtobufEncoder(),
        }

    def for_accept(self, accept: str) -> Encoder:
        return self.by_format[negotiate.choose(accept)]

    def encode(self, families: Sequence[Family], fmt: str = negotiate.TEXT) -> bytes:
        return b"".join(self.by_format[fmt].encode(families))
