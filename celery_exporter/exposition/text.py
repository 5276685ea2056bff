"""Text encoders: Prometheus text format 0.0.4 and OpenMetrics 1.0.

Both write one chunk of bytes per family and keep what they wrote for the next scrape (see
`kept`): with thousands of task label sets a scrape is 100k+ lines, nearly all unchanged.
Exemplars and `# UNIT` exist only in OpenMetrics; native histograms only in protobuf, so
here a histogram is its classic buckets.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import accumulate
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast

from celery_exporter.exposition.kept import KeepingEncoder
from celery_exporter.exposition.model import HISTOGRAM, Exemplar, Family, Histogram, Metric, exemplar_labels

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values))


def number(value: Union[int, float]) -> str:
    """Sample value: integers as they are, floats as Python's shortest repr."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and -math.inf < value < math.inf:  # (NaN fails both)
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def bound(b: float) -> str:
    """A bucket's `le` as Prometheus' Go client writes it (so series match other exporters)."""
    if math.isinf(b):
        return "+Inf" if b > 0 else "-Inf"
    text = repr(float(b))
    dot = text.find(".")
    if b > 0 and dot > 6:  # Go switches to exponent notation sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def exemplar_text(exemplar: Exemplar) -> str:
    """What follows a bucket's value: ` # {task_id="…",hostname="…"} value timestamp`, or ""
    when the exemplar cannot be shown (its task id alone is over the label budget)."""
    pairs = exemplar_labels(exemplar)
    if not pairs:
        return ""
    labels = ",".join(f'{n}="{escape_label(v)}"' for n, v in pairs)
    return f" # {{{labels}}} {number(exemplar[0])} {number(exemplar[1])}"


class TextEncoder(KeepingEncoder):
    """Encodes families as text 0.0.4 (openmetrics=False) or OpenMetrics 1.0."""

    def __init__(self, openmetrics: bool = False, keep: bool = True):
        super().__init__(keep)
        self.openmetrics = openmetrics
        self.content_type = OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
        self._le: Dict[Tuple[float, ...], List[str]] = {}
        self._heads: Dict[Tuple[str, str, str, str], bytes] = {}
        # id of an exemplar -> (it, its text), for those of the histograms the last scrape
        # encoded again: under load most of a changed histogram's exemplars are the same.
        # (A rendering memo: it holds each exemplar, an immutable tuple, so an id found here
        # is that exemplar's own; with keep=False it stays empty.)
        self._exemplar_texts: Dict[int, Tuple[Exemplar, str]] = {}
        self._exemplar_texts_now: Dict[int, Tuple[Exemplar, str]] = {}

    def forget(self) -> None:
        super().forget()
        self._exemplar_texts = {}

    def encode(self, families: Sequence[Family], gzip: bool = False) -> Iterator[bytes]:
        self._exemplar_texts_now = {}
        yield from super().encode(families, gzip)
        if self.keep:
            self._exemplar_texts = self._exemplar_texts_now

    def trailer(self) -> Optional[bytes]:
        return b"# EOF\n" if self.openmetrics else None

    def head(self, family: Family) -> bytes:
        key = (family.name, family.kind, family.help, family.unit)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 1000:  # (families are fixed; registry collectors could vary)
                self._heads.clear()
            head = self._heads[key] = self._head(family)
        return head

    def _head(self, family: Family) -> bytes:
        name, kind = family.name, family.kind
        # Text 0.0.4 names a counter family by its sample name (with _total), OpenMetrics
        # by the name without it.
        header = name if self.openmetrics else family.exposed_name()
        help_ = family.help.replace("\\", r"\\").replace("\n", r"\n")
        if self.openmetrics:
            help_ = help_.replace('"', r"\"")
        head = f"# HELP {header} {help_}\n# TYPE {header} {kind}\n"
        if self.openmetrics and family.unit:
            head += f"# UNIT {header} {family.unit}\n"
        return head.encode()

    def metrics(self, family: Family, metrics: Sequence[Metric]) -> List[bytes]:
        texts = self._label_texts(family.label_names, metrics)
        name = family.name
        if family.kind == HISTOGRAM:
            return [self._histogram(name, text, metric).encode() for text, metric in zip(texts, metrics)]
        sample = family.exposed_name()
        open_ = sample + "{"
        return [
            (
                f"{open_}{text}}} {number(cast(float, m.value))}\n"
                if text
                else f"{sample} {number(cast(float, m.value))}\n"
            ).encode()
            for text, m in zip(texts, metrics)
        ]

    def _label_texts(self, names: Tuple[str, ...], metrics: Sequence[Metric]) -> List[str]:
        return self.labels.of(names, metrics, partial(labels_text, names))

    def _histogram(self, name: str, text: str, metric: Metric) -> str:
        hist = metric.value
        assert isinstance(hist, Histogram)
        le = self._le_texts(hist.bounds)
        bucket = f"{name}_bucket{{{text}," if text else f"{name}_bucket{{"
        exemplars: Optional[Sequence[Optional[Exemplar]]] = hist.exemplars if self.openmetrics else None
        if exemplars is None:
            lines = [f"{bucket}{le_text}}} {upto}\n" for le_text, upto in zip(le, accumulate(hist.counts))]
        else:
            lines = []
            before, made = self._exemplar_texts, self._exemplar_texts_now
            for le_text, upto, ex in zip(le, accumulate(hist.counts), exemplars):
                if ex is None:
                    lines.append(f"{bucket}{le_text}}} {upto}\n")
                    continue
                hit = before.get(id(ex))
                if hit is None or hit[0] is not ex:
                    hit = (ex, exemplar_text(ex))
                made[id(ex)] = hit
                lines.append(f"{bucket}{le_text}}} {upto}{hit[1]}\n")
        running = sum(hist.counts)
        add = lines.append
        labels = f"{{{text}}}" if text else ""
        add(f"{name}_count{labels} {running}\n")
        add(f"{name}_sum{labels} {number(hist.sum)}\n")
        return "".join(lines)

    def _le_texts(self, bounds: Sequence[float]) -> List[str]:
        key = bounds if isinstance(bounds, tuple) else tuple(bounds)
        le = self._le.get(key)
        if le is None:
            le = self._le[key] = [f'le="{bound(b)}"' for b in key] + ['le="+Inf"']
        return le
