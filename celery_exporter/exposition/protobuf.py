"""Prometheus' protobuf exposition format: length-delimited `io.prometheus.client.MetricFamily`
messages, the format a Prometheus with native histograms enabled asks for.

The message schema is Prometheus' `io/prometheus/client/metrics.proto` (client_model, proto2).
It is not generated code: `_file_descriptor()` below declares the same messages, field
numbers and types with the `protobuf` library's descriptor API, and the message classes come
from its message factory. To follow a change of metrics.proto, add the new fields here with
their numbers and types (the wire format only depends on those); nothing else needs
regenerating. `google.protobuf.Timestamp` is the library's own well-known type.

Encoding: a histogram carries its classic buckets (cumulative, each with its exemplar) and,
when the series has native buckets, the native schema, zero bucket, spans and deltas beside
them, so a Prometheus that keeps classic histograms gets what text gives it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from celery_exporter import nativehist
from celery_exporter.exposition.kept import KeepingEncoder, Piece
from celery_exporter.exposition.model import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    Exemplar,
    Family,
    Histogram,
    Metric,
    exemplar_labels,
)

CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
PACKAGE = "io.prometheus.client"

_F = descriptor_pb2.FieldDescriptorProto
# (name, number, type, label, message type) per field; repeated scalars stay unpacked, as in proto2
_MESSAGES: Dict[str, List[Tuple[str, int, int, int, str]]] = {
    "LabelPair": [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("value", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "Gauge": [("value", 1, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, "")],
    "Counter": [
        ("value", 1, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("exemplar", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Exemplar"),
        ("created_timestamp", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
    ],
    "Quantile": [
        ("quantile", 1, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("value", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
    ],
    "Summary": [
        ("sample_count", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("sample_sum", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("quantile", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Quantile"),
        ("created_timestamp", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
    ],
    "Untyped": [("value", 1, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, "")],
    "Histogram": [
        ("sample_count", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("sample_count_float", 4, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("sample_sum", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("bucket", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Bucket"),
        ("created_timestamp", 15, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
        ("schema", 5, _F.TYPE_SINT32, _F.LABEL_OPTIONAL, ""),
        ("zero_threshold", 6, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("zero_count", 7, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("zero_count_float", 8, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("negative_span", 9, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BucketSpan"),
        ("negative_delta", 10, _F.TYPE_SINT64, _F.LABEL_REPEATED, ""),
        ("negative_count", 11, _F.TYPE_DOUBLE, _F.LABEL_REPEATED, ""),
        ("positive_span", 12, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BucketSpan"),
        ("positive_delta", 13, _F.TYPE_SINT64, _F.LABEL_REPEATED, ""),
        ("positive_count", 14, _F.TYPE_DOUBLE, _F.LABEL_REPEATED, ""),
        ("exemplars", 16, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Exemplar"),
    ],
    "Bucket": [
        ("cumulative_count", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("cumulative_count_float", 4, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("upper_bound", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("exemplar", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Exemplar"),
    ],
    "BucketSpan": [
        ("offset", 1, _F.TYPE_SINT32, _F.LABEL_OPTIONAL, ""),
        ("length", 2, _F.TYPE_UINT32, _F.LABEL_OPTIONAL, ""),
    ],
    "Exemplar": [
        ("label", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "LabelPair"),
        ("value", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("timestamp", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
    ],
    "Metric": [
        ("label", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "LabelPair"),
        ("gauge", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Gauge"),
        ("counter", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Counter"),
        ("summary", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Summary"),
        ("untyped", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Untyped"),
        ("histogram", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Histogram"),
        ("timestamp_ms", 6, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
    ],
    "MetricFamily": [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("help", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("type", 3, _F.TYPE_ENUM, _F.LABEL_OPTIONAL, "MetricType"),
        ("metric", 4, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Metric"),
        ("unit", 5, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
}
METRIC_TYPES = ("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM", "GAUGE_HISTOGRAM")


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="io/prometheus/client/metrics.proto",
        package=PACKAGE,
        syntax="proto2",
        dependency=["google/protobuf/timestamp.proto"],
    )
    enum = proto.enum_type.add(name="MetricType")
    for number, name in enumerate(METRIC_TYPES):
        enum.value.add(name=name, number=number)
    for message, fields in _MESSAGES.items():
        msg = proto.message_type.add(name=message)
        for name, number, type_, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=type_, label=label)
            if type_name:
                field.type_name = type_name if type_name.startswith(".") else f".{PACKAGE}.{type_name}"
    return proto


def _classes() -> Dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _MESSAGES
    }


MESSAGES = _classes()
MetricFamily = MESSAGES["MetricFamily"]
TYPE_NUMBER = {COUNTER: 0, GAUGE: 1, HISTOGRAM: 4}


def varint(n: int) -> bytes:
    """The length prefix of a delimited message (protobuf's base-128 varint)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _set_exemplar(target: Any, exemplar: Exemplar) -> None:
    for name, label in exemplar_labels(exemplar):
        target.label.add(name=name, value=label)
    target.value, when = exemplar[0], exemplar[1]
    seconds = int(when // 1)
    target.timestamp.seconds = seconds
    target.timestamp.nanos = min(int(round((when - seconds) * 1e9)), 999_999_999)


def _histogram(target: Any, hist: Histogram) -> None:
    running = 0
    exemplars: Sequence[Optional[Exemplar]] = hist.exemplars or ()
    buckets = target.bucket
    for i, (bound, count) in enumerate(zip(hist.bounds, hist.counts)):
        running += count
        bucket = buckets.add(cumulative_count=running, upper_bound=bound)
        ex = exemplars[i] if i < len(exemplars) else None
        if ex is not None and exemplar_labels(ex):
            _set_exemplar(bucket.exemplar, ex)
    total = running + hist.counts[-1]
    # the +Inf bucket is implied by sample_count; it is written only for its exemplar
    last = exemplars[-1] if len(exemplars) == len(hist.counts) else None
    if last is not None and exemplar_labels(last):
        bucket = buckets.add(cumulative_count=total, upper_bound=float("inf"))
        _set_exemplar(bucket.exemplar, last)
    target.sample_count = total
    target.sample_sum = hist.sum
    native = hist.native
    if native is not None:
        target.schema = native.schema
        target.zero_threshold = hist.zero_threshold
        target.zero_count = native.zero_count
        spans, deltas = nativehist.spans_and_deltas(native.buckets)
        if not spans:  # an empty span marks the histogram native even before any bucket fills
            spans = [(0, 0)]
        for offset, length in spans:
            target.positive_span.add(offset=offset, length=length)
        target.positive_delta.extend(deltas)
        for exemplar in exemplars:
            if exemplar is not None and exemplar_labels(exemplar):
                _set_exemplar(target.exemplars.add(), exemplar)


MetricMessage = MESSAGES["Metric"]
METRIC_FIELD = b"\x22"  # MetricFamily.metric: field 4, length-delimited


def label_pairs(names: Sequence[str], values: Sequence[str]) -> bytes:
    """A Metric's label fields, serialized."""
    message = MetricMessage()
    for name, value in zip(names, values):
        message.label.add(name=name, value=value)
    return bytes(message.SerializeToString())


def metric_message(family: Family, metric: Metric, labels: bool = True) -> Any:
    """The Metric message; without its labels for `labels=False` (see ProtobufEncoder)."""
    m = MetricMessage()
    if labels:
        for name, value in zip(family.label_names, metric.labels):
            m.label.add(name=name, value=value)
    v = metric.value
    if family.kind == HISTOGRAM:
        assert isinstance(v, Histogram)
        _histogram(m.histogram, v)
    elif family.kind == COUNTER:
        m.counter.value = v
    else:
        m.gauge.value = v
    return m


def family_message(family: Family) -> Any:
    """The whole family as one message (for tests and tools; the encoder writes the same bytes)."""
    # the samples' name: Prometheus stores a protobuf counter under its family's name as it is
    # (only histogram and summary samples get suffixes), so a counter's must end in _total
    msg = MetricFamily(name=family.exposed_name(), help=family.help, type=TYPE_NUMBER[family.kind])
    if family.unit:
        msg.unit = family.unit
    for metric in family.metrics:
        msg.metric.append(metric_message(family, metric))
    return msg


class ProtobufEncoder(KeepingEncoder):
    """Writes each family as a length-delimited MetricFamily: the family's header fields
    serialized by the library, then each Metric message as the repeated field 4, then the
    unit (field 5). The wire format of a repeated message is its elements one after
    another, so this is byte for byte `family_message(...).SerializeToString()` (tested),
    and unchanged metrics' bytes are kept across scrapes (see `kept`)."""

    content_type = CONTENT_TYPE

    def head(self, family: Family) -> bytes:
        return bytes(
            MetricFamily(
                name=family.exposed_name(), help=family.help, type=TYPE_NUMBER[family.kind]
            ).SerializeToString()
        )

    def metrics(self, family: Family, metrics: Sequence[Metric]) -> List[bytes]:
        # A Metric's labels are its field 1, which the library writes first: a label set's
        # serialized pairs (made once per scrape, see LabelMemo) followed by the rest of the
        # message serialized without labels are the whole message's bytes.
        out = []
        names = family.label_names
        for labels, metric in zip(self.labels.of(names, metrics, partial(label_pairs, names)), metrics):
            data = labels + metric_message(family, metric, labels=False).SerializeToString()
            out.append(METRIC_FIELD + varint(len(data)) + data)
        return out

    def frame(self, head: bytes, body: Sequence[Piece], family: Family) -> Tuple[bytes, int]:
        unit = MetricFamily(unit=family.unit).SerializeToString() if family.unit else b""
        size = len(head) + sum(map(len, body)) + len(unit)
        prefix = varint(size)
        return b"".join([prefix, head, *body, unit]), len(prefix)


def decode(body: bytes) -> List[Any]:
    """The MetricFamily messages of a delimited protobuf body (for tests and tools)."""
    out = []
    pos = 0
    while pos < len(body):
        size = shift = 0
        while True:
            byte = body[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        msg = MetricFamily()
        msg.ParseFromString(body[pos : pos + size])
        out.append(msg)
        pos += size
    return out
