"""The exposition model and its encoders: content negotiation, name[], native histogram
buckets as Prometheus defines them, exemplars, and golden files that pin each encoder's
bytes for a fixed store (UPDATE_GOLDEN=1 rewrites them; review the diff)."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import PlatformCollector, ProcessCollector

from celery_exporter import nativehist
from celery_exporter.exposition import negotiate, protobuf
from celery_exporter.exposition.model import Family, Histogram, Metric, exemplar_labels
from celery_exporter.exposition.text import TextEncoder

from .conftest import T0, Rig, failed, heartbeat, received, retried, sent, started, succeeded, text_samples
from .test_receiver_web_cli import call, web_for

GOLDEN = Path(__file__).parent / "golden"

PROMETHEUS_2_NATIVE = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_3_DEFAULT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
PROMETHEUS_3_NATIVE = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"
    + PROMETHEUS_3_DEFAULT
)


@pytest.mark.parametrize(
    "accept, expected",
    [
        (PROMETHEUS_2_NATIVE, "protobuf"),
        (PROMETHEUS_3_DEFAULT, "openmetrics"),
        (PROMETHEUS_3_NATIVE, "protobuf"),
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
        ("application/openmetrics-text", "openmetrics"),
        ("application/openmetrics-text; version=2.0.0", "text"),  # a version we do not speak
        ("text/plain;version=0.0.4", "text"),
        ("", "text"),
        ("*/*", "text"),
        ("application/json", "text"),
        ("application/vnd.google.protobuf", "text"),  # not the delimited MetricFamily stream
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text", "text"),
        # the highest quality wins, the first listed among equals
        ("text/plain;q=0.9,application/openmetrics-text;q=0.5", "text"),
        ("application/openmetrics-text;q=0.5,text/plain;q=0.5", "openmetrics"),
        ("application/openmetrics-text;q=0,text/plain;q=0.1", "text"),  # q=0: not acceptable
        ("application/openmetrics-text;q=bogus,text/plain;q=0.1", "text"),
    ],
)
def test_content_negotiation(accept, expected):
    assert negotiate.choose(accept) == expected


def workload() -> Rig:
    """A fixed store: two workers, succeeded, failed and retried tasks on two queues."""
    rig = Rig()
    rig.feed(heartbeat("w1@h"), heartbeat('w"2\\x@h'))
    for i in range(6):
        u = f"u{i}"
        name = ["app.add", "app.mul", "app.io"][i % 3]
        rig.feed(sent(u, name=name, queue="q" + str(i % 2)), received(u, name=name), started(u))
        rig.advance(0.25 * i)
        rig.feed(succeeded(u, runtime=0.01 * 3**i) if i % 4 else failed(u))
    rig.feed(sent("r1"), received("r1"), started("r1"), retried("r1"))
    rig.advance(3)
    return rig


@pytest.mark.parametrize(
    "fmt, filename", [("text", "scrape.txt"), ("openmetrics", "scrape.om"), ("protobuf", "scrape.pb")]
)
def test_golden_files(fmt, filename):
    rig = workload()
    # build_info carries the installed Celery's and Python's versions: not pinned here
    families = [f for f in rig.collector.families() if f.name != "celery_exporter_build_info"]
    body = rig.encoders.encode(families, fmt)
    path = GOLDEN / filename
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_bytes(body)
    assert body == path.read_bytes(), f"{filename} changed; UPDATE_GOLDEN=1 rewrites it"


def test_protobuf_encoder_writes_what_the_library_writes_for_whole_families():
    """The encoder assembles each MetricFamily from separately serialized Metric messages
    (and keeps them across scrapes): the bytes must be the library's own, scrape after scrape."""
    rig = workload()
    encoder = protobuf.ProtobufEncoder()
    for _ in range(2):  # the second scrape comes from the kept metric bytes
        families = rig.collector.families()
        expected = b""
        for family in families:
            data = protobuf.family_message(family).SerializeToString()
            expected += protobuf.varint(len(data)) + data
        assert b"".join(encoder.encode(families)) == expected
    rig.feed(sent("late"), received("late"), started("late"), succeeded("late", runtime=7.0))
    rig.advance(3)
    families = rig.collector.families()
    body = b"".join(encoder.encode(families))
    (runtime,) = [mf for mf in protobuf.decode(body) if mf.name == "celery_task_runtime_seconds"]
    assert sum(m.histogram.sample_count for m in runtime.metric) == 5  # 4 successes before, one now
    # changed metrics are encoded with the label bytes kept from the scrape before: still the
    # library's bytes
    expected = b""
    for family in families:
        data = protobuf.family_message(family).SerializeToString()
        expected += protobuf.varint(len(data)) + data
    assert body == expected


def test_web_serves_each_format_and_the_name_filter():
    rig = workload()
    ProcessCollector(registry=rig.process_registry)
    PlatformCollector(registry=rig.process_registry)
    web = web_for(rig)
    status, headers, body = call(web, "/metrics", {"Accept": PROMETHEUS_2_NATIVE})
    assert status == 200 and headers["Content-Type"] == protobuf.CONTENT_TYPE
    names = {mf.name for mf in protobuf.decode(body)}
    assert {"celery_task_runtime_seconds", "celery_worker_up", "process_cpu_seconds_total", "python_info"} <= names
    assert "celery_task_sent_total" in names and "celery_task_sent" not in names
    status, headers, body = call(web, "/metrics", {"Accept": PROMETHEUS_3_DEFAULT})
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    # name[]: by family name or sample name, repeated; one unknown name is no error
    environ = {"Accept": "text/plain"}
    web_query = web_for(rig)

    def filtered(query: str) -> set:
        status, _, body = call(web_query, "/metrics", environ, query)
        assert status == 200
        return {k[0] for k in text_samples(body.decode())}

    assert filtered("name[]=celery_worker_up") == {"celery_worker_up"}
    assert filtered("name[]=celery_task_sent_total&name[]=celery_task_runtime_seconds_bucket&name[]=nope") == {
        "celery_task_sent_total",
        "celery_task_runtime_seconds_bucket",
        "celery_task_runtime_seconds_count",
        "celery_task_runtime_seconds_sum",
    }
    assert filtered("name%5B%5D=process_cpu_seconds_total") == {"process_cpu_seconds_total"}
    assert filtered("name[]=nope") == set()
    assert "celery_worker_up" in filtered("")


# -- native histograms ------------------------------------------------------------------


def test_schema_for_factor():
    assert nativehist.schema_for_factor(1.1) == 3  # 2**(1/8) = 1.0905
    assert nativehist.schema_for_factor(2**0.125) == 3
    assert nativehist.schema_for_factor(1.09) == 4
    assert nativehist.schema_for_factor(2) == 0
    assert nativehist.schema_for_factor(4) == -1
    assert nativehist.schema_for_factor(1.0001) == 8  # capped
    assert nativehist.schema_for_factor(1e9) == -4  # capped
    assert nativehist.schema_for_factor(1) is None and nativehist.schema_for_factor(0.5) is None


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False), st.integers(-4, 8))
def test_bucket_key_holds_the_value(value, schema):
    """Bucket i holds (base**(i-1), base**i]; checked against the definition in log space."""
    key = nativehist.bucket_key(value, schema)
    lower, upper = nativehist.upper_bound(key - 1, schema), nativehist.upper_bound(key, schema)
    assert lower < value * (1 + 1e-12) and value <= upper * (1 + 1e-12), (value, schema, key, lower, upper)
    # lowering the schema merges bucket pairs: the key at s-1 is ceil(key / 2)
    if schema > -4:
        assert nativehist.bucket_key(value, schema - 1) == (key + 1) >> 1


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False), st.integers(-4, 8))
def test_observe_counts_the_value_in_bucket_keys_bucket(value, schema):
    """NativeBuckets.observe writes bucket_key out for speed: the two must agree."""
    native = nativehist.NativeBuckets(schema)
    native.observe(value, 0.0, 1000)
    assert native.buckets == {nativehist.bucket_key(value, schema): 1}


def test_bucket_key_exact_boundaries():
    for schema in (-4, -1, 0, 1, 3, 8):
        assert nativehist.bucket_key(1.0, schema) == 0  # 1 is the top of bucket 0 at every schema
    assert nativehist.bucket_key(2.0, 0) == 1 and nativehist.bucket_key(2.0000001, 0) == 2
    assert nativehist.bucket_key(4.0, 3) == 16 and nativehist.bucket_key(0.5, 3) == -8
    assert nativehist.bucket_key(4.0, -1) == 1 and nativehist.bucket_key(4.1, -1) == 2


def test_bucket_cap_lowers_the_schema_and_keeps_every_observation():
    rng = random.Random(7)
    values = [math.exp(rng.uniform(-12, 12)) for _ in range(2000)] + [0.0, 0.0]
    native = nativehist.NativeBuckets(3)
    for v in values:
        native.observe(v, nativehist.DEFAULT_ZERO_THRESHOLD, 20)
    assert len(native.buckets) <= 20 and native.schema < 3
    assert native.zero_count == 2 and sum(native.buckets.values()) == 2000
    # the same counts as observing everything at the final schema directly
    direct: dict = {}
    for v in values[:-2]:
        k = nativehist.bucket_key(v, native.schema)
        direct[k] = direct.get(k, 0) + 1
    assert native.buckets == direct


def test_spans_and_deltas():
    assert nativehist.spans_and_deltas({}) == ([], [])
    spans, deltas = nativehist.spans_and_deltas({-2: 3, -1: 5, 0: 5, 4: 1, 6: 2})
    assert spans == [(-2, 3), (3, 1), (1, 1)]
    assert deltas == [3, 2, 0, -4, 1]


def decode_native(h):
    """index -> count from the spans and deltas of a decoded Histogram message."""
    out, index, count, pos = {}, 0, 0, 0
    for i, span in enumerate(h.positive_span):
        index = span.offset if i == 0 else index + span.offset
        for _ in range(span.length):
            count += h.positive_delta[pos]
            out[index] = count
            index += 1
            pos += 1
        index -= 0
    return out


def test_protobuf_carries_native_buckets_classic_buckets_and_exemplars():
    rig = Rig()
    rig.feed(heartbeat("w1@h"))
    runtimes = [0.003, 0.004, 0.2, 0.21, 1.5, 0.0]
    for i, runtime in enumerate(runtimes):
        u = f"task-{i}"
        rig.feed(sent(u), received(u), started(u), succeeded(u, runtime=runtime))
    rig.advance(3)
    (runtime,) = [mf for mf in rig.protobuf() if mf.name == "celery_task_runtime_seconds"]
    assert runtime.type == 4 and runtime.unit == "seconds"
    (metric,) = runtime.metric
    h = metric.histogram
    assert h.sample_count == 6 and h.sample_sum == pytest.approx(sum(runtimes))
    assert h.schema == 3 and h.zero_threshold == nativehist.DEFAULT_ZERO_THRESHOLD and h.zero_count == 1
    expected: dict = {}
    for r in runtimes[:-1]:
        k = nativehist.bucket_key(r, 3)
        expected[k] = expected.get(k, 0) + 1
    assert decode_native(h) == expected
    # classic buckets: cumulative, the +Inf bucket implied by sample_count
    bounds = [b.upper_bound for b in h.bucket]
    assert bounds == list(rig.settings.runtime_buckets)
    assert [b.cumulative_count for b in h.bucket][:3] == [1, 1, 3]  # <=1ms: 0.0; <=2.5ms none more; <=5ms
    # exemplars: the latest observation of each bucket, on the classic bucket and for native
    by_bound = {b.upper_bound: b.exemplar for b in h.bucket if b.HasField("exemplar")}
    labels = {lp.name: lp.value for lp in by_bound[0.25].label}
    assert labels == {"task_id": "task-3", "hostname": "w1@h"} and by_bound[0.25].value == 0.21
    assert by_bound[0.25].timestamp.seconds == int(T0)
    assert {lp.value for e in h.exemplars for lp in e.label if lp.name == "task_id"} == {
        "task-5",
        "task-1",
        "task-3",
        "task-4",
    }


def test_failed_and_retried_run_times_are_native_with_the_task_as_exemplar():
    rig = Rig()
    rig.feed(sent("f1"), received("f1"), started("f1"))
    rig.clock.advance(1.5)
    rig.feed(failed("f1"))
    rig.feed(sent("r1"), received("r1"), started("r1"))
    rig.clock.advance(0.25)
    rig.feed(retried("r1"))
    by_name = {mf.name: mf for mf in rig.protobuf()}
    for family, task, seconds in (
        ("celery_task_failed_runtime_seconds", "f1", 1.5),
        ("celery_task_retried_runtime_seconds", "r1", 0.25),
    ):
        mf = by_name[family]
        assert mf.type == 4 and mf.unit == "seconds"
        (metric,) = mf.metric
        h = metric.histogram
        assert h.sample_count == 1 and h.sample_sum == pytest.approx(seconds)
        assert h.schema == 3 and decode_native(h) == {nativehist.bucket_key(seconds, 3): 1}
        (exemplar,) = [b.exemplar for b in h.bucket if b.HasField("exemplar")]
        assert {lp.name: lp.value for lp in exemplar.label} == {"task_id": task, "hostname": "w1@h"}
        assert exemplar.value == pytest.approx(seconds)
    assert by_name["celery_task_runtime_seconds"].metric == []  # successes only


def test_native_histograms_off_keeps_classic_only():
    rig = Rig(native_schema=None)
    rig.feed(sent("u1"), received("u1"), started("u1"), succeeded("u1", runtime=0.3))
    rig.advance(3)
    (runtime,) = [mf for mf in rig.protobuf() if mf.name == "celery_task_runtime_seconds"]
    h = runtime.metric[0].histogram
    assert not h.HasField("schema") and len(h.positive_span) == 0 and h.sample_count == 1


def test_a_histogram_with_only_zero_observations_is_still_native():
    family = Family("h_seconds", "histogram", "h", ("a",))
    native = nativehist.NativeBuckets(3)
    native.observe(0.0, 1e-9, 160)
    family.add(("x",), Histogram((1.0,), [1, 0], 0.0, None, native, 1e-9))
    (mf,) = protobuf.decode(b"".join(protobuf.ProtobufEncoder().encode([family])))
    h = mf.metric[0].histogram
    assert h.zero_count == 1 and [(s.offset, s.length) for s in h.positive_span] == [(0, 0)]


# -- exemplars --------------------------------------------------------------------------


def test_exemplar_label_sets_stay_within_the_openmetrics_limit():
    assert exemplar_labels((0.5, T0, "abc", "w1@h")) == (("task_id", "abc"), ("hostname", "w1@h"))
    long_host = exemplar_labels((0.5, T0, "u" * 36, "h" * 200))
    assert sum(len(n) + len(v) for n, v in long_host) == 128 and long_host[1][1] == "h" * 77
    assert exemplar_labels((0.5, T0, "u" * 121, "w1@h")) == (("task_id", "u" * 121),)
    assert exemplar_labels((0.5, T0, "u" * 122, "w1@h")) == ()  # no exemplar at all
    assert exemplar_labels((0.5, T0, "abc", "")) == (("task_id", "abc"),)
    # an exemplar that cannot be shown is left out of both formats, the bucket stays
    family = Family("h_seconds", "histogram", "h", ("a",))
    family.add(("x",), Histogram((1.0,), [1, 0], 0.5, [(0.5, T0, "u" * 122, "w"), None]))
    om = b"".join(TextEncoder(openmetrics=True).encode([family])).decode()
    assert 'h_seconds_bucket{a="x",le="1.0"} 1\n' in om and "# {" not in om
    (mf,) = protobuf.decode(b"".join(protobuf.ProtobufEncoder().encode([family])))
    assert not mf.metric[0].histogram.bucket[0].HasField("exemplar")


def test_openmetrics_exemplars_parse_and_text_has_none():
    rig = workload()
    families = rig.collector.families()
    om = rig.encoders.encode(families, "openmetrics").decode()
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(om):
        for s in family.samples:
            if s.exemplar is not None:
                found[(s.name, s.labels["name"], s.labels["le"])] = (s.exemplar.labels["task_id"], s.exemplar.value)
    assert found[("celery_task_runtime_seconds_bucket", "app.io", "0.1")] == ("u2", 0.09)
    assert found[("celery_task_runtime_seconds_bucket", "app.io", "2.5")] == ("u5", 2.43)
    assert " # {" not in rig.encoders.encode(families, "text").decode()
    assert "# UNIT celery_task_runtime_seconds seconds" in om


def test_kept_families_follow_changes_and_drop_what_is_gone():
    encoder = TextEncoder()
    family = Family("g", "gauge", "g", ("a",))
    family.add(("x",), 1)
    family.add(("y",), 2)
    first = b"".join(encoder.encode([family]))
    assert first == b'# HELP g g\n# TYPE g gauge\ng{a="x"} 1\ng{a="y"} 2\n'
    # the same Metric objects: the very same bytes object comes back
    again = list(encoder.encode([family]))
    assert again[0] is encoder._kept["g"].data and b"".join(again) == first
    # one metric replaced, one added, one gone: kept slices and fresh encodings mix
    family2 = Family("g", "gauge", "g", ("a",))
    family2.metrics = [family.metrics[1], Metric(("z",), 3.5), Metric(("x",), 7)]
    assert b"".join(encoder.encode([family2])) == b'# HELP g g\n# TYPE g gauge\ng{a="y"} 2\ng{a="z"} 3.5\ng{a="x"} 7\n'
    assert b"".join(encoder.encode([])) == b"" and encoder._kept == {}


def test_a_changed_label_set_keeps_the_metrics_whose_values_did_not_change():
    rig = Rig()
    rig.feed(sent("u1", queue="q"), received("u1"), started("u1"), succeeded("u1", runtime=0.2))
    rig.settle()

    def metrics_of(families):
        return {(f.name, m.labels): m for f in families for m in f.metrics if f.name.startswith("celery_task_")}

    before = metrics_of(rig.collector.families())
    rig.feed(sent("u2", queue="q"), received("u2"))  # the same label set: sent and received change
    rig.settle()
    after = metrics_of(rig.collector.families())
    key = ("app.add", "q")
    changed = {"celery_task_sent", "celery_task_received", "celery_task_last_received_timestamp_seconds"}
    for name in ("celery_task_started", "celery_task_failed", "celery_task_revoked", "celery_task_runtime_seconds"):
        assert after[(name, key)] is before[(name, key)]
    for name in changed:
        assert after[(name, key)] is not before[(name, key)]
    assert after[("celery_task_received", key)].value == 2
    # an observation makes a new histogram even where the sum stays the same
    rig.feed(started("u2"), succeeded("u2", runtime=0.0))
    rig.settle()
    again = metrics_of(rig.collector.families())
    assert again[("celery_task_runtime_seconds", key)] is not after[("celery_task_runtime_seconds", key)]
    assert sum(again[("celery_task_runtime_seconds", key)].value.counts) == 2
    # families built anew each scrape (running tasks, exceptions) keep unchanged metrics too
    rig.feed(sent("u3", queue="q"), received("u3"), started("u3"), failed("u3"))
    rig.settle()
    first, second = metrics_of(rig.collector.families()), metrics_of(rig.collector.families())
    for name in ("celery_task_running", "celery_task_exceptions"):
        [labels] = [labels for (n, labels) in first if n == name]
        assert second[(name, labels)] is first[(name, labels)]
    rig.feed(sent("u4", queue="q"), received("u4"), started("u4"))
    rig.settle()
    third = metrics_of(rig.collector.families())
    assert third[("celery_task_running", key)].value == 1 and second[("celery_task_running", key)].value == 0
    # and every format still carries the right values
    assert rig.value("celery_task_running", name="app.add", queue_name="q") == 1
    assert rig.value("celery_task_received_total", name="app.add", queue_name="q") == 4
    assert rig.value("celery_task_runtime_seconds_count", name="app.add", queue_name="q") == 2
    assert rig.value("celery_task_exceptions_total", name="app.add", queue_name="q", exception="ValueError") == 1


def test_only_the_format_asked_for_last_keeps_its_encodings():
    from celery_exporter.exposition import Encoders

    rig = workload()
    encoders = Encoders()
    for accept in ("text/plain", PROMETHEUS_3_DEFAULT, PROMETHEUS_2_NATIVE, "text/plain"):
        encoder = encoders.for_accept(accept)
        b"".join(encoder.encode(rig.collector.families()))
        kept = {fmt: bool(e._kept) for fmt, e in encoders.by_format.items()}
        assert [fmt for fmt, has in kept.items() if has] == [negotiate.choose(accept)], (accept, kept)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_crc32_combine_is_zlibs_crc_of_the_concatenation(first, second):
    import zlib

    from celery_exporter.exposition.gzipped import crc32_combine, shift_of

    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), shift_of(len(second))) == zlib.crc32(first + second)


def test_gzip_stream_of_packed_pieces_decodes_everywhere():
    import gzip
    import subprocess
    import zlib

    from celery_exporter.exposition import gzipped

    pieces = [b"# a family\n" * 300, b"", b"x 1\n", bytes(range(256)) * 50]
    body = b"".join(gzipped.stream(gzipped.pack(p) for p in pieces))
    plain = b"".join(pieces)
    assert gzip.decompress(body) == plain and zlib.decompress(body, 31) == plain
    assert subprocess.run(["gzip", "-dc"], input=body, capture_output=True, check=True).stdout == plain
    assert gzip.decompress(b"".join(gzipped.stream([]))) == b""


def test_gzip_keeps_an_unchanged_family_compressed_only_and_a_changed_one_plain_too():
    import gzip

    encoder = TextEncoder()
    same = Family("same", "gauge", "h", ["a"])
    for i in range(100):
        same.add([str(i)], i)
    m1 = Metric(("1",), 1.0)

    def other(*metrics):
        family = Family("other", "gauge", "h", ["a"])
        family.metrics.extend(metrics)
        return family

    plain = b"".join(encoder.encode([same, other(m1)]))
    kept_same = encoder._kept["same"]
    assert gzip.decompress(b"".join(encoder.encode([same, other(m1)], gzip=True))) == plain
    # unchanged since the plain scrape: compressed once, then held only compressed
    assert encoder._kept["same"].data is None and encoder._kept["same"].versions is kept_same.versions
    packed = encoder._kept["same"].packed
    m2 = Metric(("2",), 2.0)
    body = gzip.decompress(b"".join(encoder.encode([same, other(m1, m2)], gzip=True)))
    assert encoder._kept["same"].packed is packed  # not compressed again
    assert encoder._kept["other"].data is not None  # changed: kept plain for splicing next time
    assert body == b"".join(TextEncoder().encode([same, other(m1, m2)]))
    # a plain scrape after it encodes the compressed-only family again
    assert b"".join(encoder.encode([same, other(m1, m2)])) == body and encoder._kept["same"].data is not None


def test_gzipped_scrape_is_the_plain_scrape():
    import gzip

    rig = workload()
    web = web_for(rig)
    for accept in ("text/plain", PROMETHEUS_3_DEFAULT, PROMETHEUS_2_NATIVE):
        for _ in range(2):  # the second from kept families and pieces
            _, plain_headers, plain = call(web, "/metrics", {"Accept": accept})
            _, headers, body = call(web, "/metrics", {"Accept": accept, "Accept-Encoding": "gzip"})
            assert headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain_headers
            assert gzip.decompress(body) == plain


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(1, 100))
def test_coalesced_chunks_are_the_same_bytes_in_few_writes(chunks, size):
    from celery_exporter.web import coalesce

    out = list(coalesce(chunks, size))
    assert b"".join(out) == b"".join(chunks) and all(out)
    # every write but the last is at least `size`, or a chunk that was itself that big, or
    # stopped short because the next chunk would have pushed it past `size`
    assert len(out) <= sum(1 for c in chunks if c) and len(out) <= 2 * (len(b"".join(chunks)) // size) + 2


def test_the_protobuf_library_is_loaded_only_when_a_scraper_asks_for_protobuf():
    # (about 3.5 MiB of memory that a Prometheus scraping text never needs)
    code = f"""
import sys
import celery_exporter.cli
from celery_exporter.runtime import Exporter
from celery_exporter.settings import Settings
exporter = Exporter(Settings())
encoders = exporter.web.encoders
encoders.for_accept("text/plain")
encoders.for_accept({PROMETHEUS_3_DEFAULT!r})
assert "google.protobuf" not in sys.modules, "loaded before any protobuf scrape"
assert encoders.for_accept({PROMETHEUS_2_NATIVE!r}).content_type == {protobuf.CONTENT_TYPE!r}
assert "google.protobuf" in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_an_encoder_made_by_another_scrape_meanwhile_does_not_break_a_switch_of_format():
    from celery_exporter.exposition import Encoders

    encoders = Encoders()
    encoders.for_accept("text/plain")
    text = encoders.by_format[negotiate.TEXT]
    # while this scrape makes the others forget, a scrape in another thread makes an encoder
    text.forget = lambda: encoders.encoder(negotiate.PROTOBUF)
    assert encoders.for_accept(PROMETHEUS_3_DEFAULT).openmetrics
    assert set(encoders.by_format) == {negotiate.TEXT, negotiate.OPENMETRICS, negotiate.PROTOBUF}


def test_a_metric_made_without_a_version_gets_one_of_its_own_and_add_forgets_the_list_version():
    a, b = Metric(("x",), 1), Metric(("x",), 1)
    assert a.version != b.version and Metric(("x",), 1, 7).version == 7
    family = Family("g", "gauge", "g", ("a",))
    family.version = 3
    family.add(("x",), 1)
    assert family.version is None and family.metrics[0].version not in (a.version, b.version)


def test_the_encoders_reuse_bytes_by_version_only():
    encoder = TextEncoder()

    def family(*metrics, version=None):
        f = Family("g", "gauge", "g", ("a",))
        f.metrics, f.version = list(metrics), version
        return f

    x1, y2 = Metric(("x",), 1, 101), Metric(("y",), 2, 102)
    first = list(encoder.encode([family(x1, y2, version=50)]))
    assert first == [b'# HELP g g\n# TYPE g gauge\ng{a="x"} 1\ng{a="y"} 2\n']
    # the same list version: the same bytes object, whatever the list holds (the collector
    # gives a list version only to the very same list)
    assert encoder.encode([family(version=50)]).__next__() is first[0]
    # another list version, the same metric versions: the same bytes object again
    assert encoder.encode([family(Metric(("x",), 1, 101), y2, version=51)]).__next__() is first[0]
    # a new version is encoded, whatever its value; a version written before gets its kept
    # bytes, its value unread (by the rule, version 102 is y=2: this one breaks the rule)
    assert b"".join(encoder.encode([family(Metric(("x",), 1, 103), Metric(("y",), 99, 102))])) == first[0]
    assert b"".join(encoder.encode([family(Metric(("x",), 5, 104), Metric(("y",), 99, 102))])) == (
        b'# HELP g g\n# TYPE g gauge\ng{a="x"} 5\ng{a="y"} 2\n'
    )
    # another header or other label names: nothing kept applies
    other = Family("g", "gauge", "other help", ("a",))
    other.metrics = [Metric(("x",), 5, 104)]
    assert b"".join(encoder.encode([other])) == b'# HELP g other help\n# TYPE g gauge\ng{a="x"} 5\n'
    renamed = Family("g", "gauge", "other help", ("b",))
    renamed.metrics = [Metric(("x",), 5, 104)]
    assert b"".join(encoder.encode([renamed])) == b'# HELP g other help\n# TYPE g gauge\ng{b="x"} 5\n'


def test_an_idle_scrape_hands_out_the_same_lists_under_the_same_versions():
    rig = workload()
    first = {f.name: f for f in rig.collector.families()}
    second = {f.name: f for f in rig.collector.families()}
    for name in ("celery_task_sent", "celery_task_runtime_seconds", "celery_task_running", "celery_task_exceptions"):
        assert second[name].version is not None and second[name].version == first[name].version
        assert second[name].metrics is first[name].metrics
    assert first["celery_worker_up"].version is None  # built anew every scrape
    rig.feed(sent("late", name="app.io", queue="q0"))  # a label set seen before
    third = {f.name: f for f in rig.collector.families()}
    assert third["celery_task_sent"].version != first["celery_task_sent"].version
    # a family none of whose metrics changed is the same list under the same version
    for name in ("celery_task_exceptions", "celery_task_failed", "celery_task_runtime_seconds"):
        assert third[name].version == first[name].version and third[name].metrics is first[name].metrics
