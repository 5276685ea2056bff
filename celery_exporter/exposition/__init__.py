"""Exposition: one model of what a scrape shows (`model`), three encoders of it (text 0.0.4
and OpenMetrics in `text`, Prometheus protobuf in `protobuf`), and content negotiation
(`negotiate`). The collector builds the model; the web layer picks the encoder."""

from __future__ import annotations

from typing import Dict, Iterator, Protocol, Sequence

from celery_exporter.exposition import negotiate
from celery_exporter.exposition.model import Family
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
    they encode to, so the worst case is a cache miss.

    Each encoder is made when its format is first asked for: the protobuf one imports the
    protobuf library and builds its message classes (about 3.5 MiB of memory), which a
    Prometheus that scrapes text never needs.

    `keep=False`: encoders that keep nothing and write every family from scratch (the
    oracle of the kept ones, see `kept`)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.by_format: Dict[str, Encoder] = {}
        self.last = ""

    def for_accept(self, accept: str) -> Encoder:
        fmt = negotiate.choose(accept)
        if fmt != self.last:
            # (a copy: a scrape in another thread may be making an encoder meanwhile)
            for other, encoder in list(self.by_format.items()):
                if other != fmt:
                    encoder.forget()
            self.last = fmt
        return self.encoder(fmt)

    def encoder(self, fmt: str) -> Encoder:
        """The format's encoder, made on first use (two scrapes racing to make it: one is
        kept, the other's work is a cache miss)."""
        encoder = self.by_format.get(fmt)
        if encoder is None:
            encoder = self.by_format.setdefault(fmt, _new_encoder(fmt, self.keep))
        return encoder

    def encode(self, families: Sequence[Family], fmt: str = negotiate.TEXT, gzip: bool = False) -> bytes:
        return b"".join(self.encoder(fmt).encode(families, gzip))


def _new_encoder(fmt: str, keep: bool = True) -> Encoder:
    if fmt == negotiate.PROTOBUF:
        from celery_exporter.exposition.protobuf import ProtobufEncoder  # (see Encoders)

        return ProtobufEncoder(keep)
    return TextEncoder(openmetrics=fmt == negotiate.OPENMETRICS, keep=keep)
