"""The scrape's caches against the oracle: random changes to the store (task events through
the handler, direct store calls, label sets expiring, workers coming, going silent and
leaving, queue polls, refusals at the series cap), interleaved with scrapes through the web
layer in every format, with and without gzip and `name[]`. Every scrape's body must be,
byte for byte, what a collector and encoders that keep nothing write for the store's live
data (see celery_exporter.versions): a change that is not stamped with a new version, or a
cache that reuses what it may not, shows here as a difference."""

from __future__ import annotations

import dataclasses
import gzip
import math
import urllib.parse
from typing import Any, List, Set, Tuple

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from celery_exporter import catalogue
from celery_exporter.collector import CeleryCollector
from celery_exporter.exposition import Encoders, negotiate
from celery_exporter.exposition.model import select
from celery_exporter.versions import same_number

from .conftest import Rig, failed, heartbeat, received, rejected, retried, revoked, sent, started, succeeded
from .test_exposition import PROMETHEUS_2_NATIVE, PROMETHEUS_3_DEFAULT
from .test_receiver_web_cli import call, web_for

ACCEPT = {
    negotiate.TEXT: "text/plain",
    negotiate.OPENMETRICS: PROMETHEUS_3_DEFAULT,
    negotiate.PROTOBUF: PROMETHEUS_2_NATIVE,
}
QUERIES = [
    "",
    "name[]=celery_task_runtime_seconds",
    "name[]=celery_task_sent_total&name[]=celery_worker_up&name[]=celery_task_running",
    "name[]=celery_task_exceptions_total&name[]=celery_queue_length",
]

NAMES = st.sampled_from(["app.a", "app.b", 'app."c"\\'])
QUEUES = st.sampled_from(["q1", "q2"])
HOSTS = st.sampled_from(["w1@h", "w2@h"])
UUIDS = st.sampled_from([f"u{i}" for i in range(6)])
SECONDS = st.sampled_from([0.0, -0.0, 1e-9, 0.001, 0.3, 2.0, 3600.0, 1e6]) | st.floats(0, 1e4)
TASK_EVENTS = {
    "sent": lambda u, name, queue, host, ts, runtime, exc: sent(u, name=name, queue=queue, ts=ts),
    "received": lambda u, name, queue, host, ts, runtime, exc: received(u, name=name, host=host, ts=ts),
    "started": lambda u, name, queue, host, ts, runtime, exc: started(u, host=host, ts=ts),
    "succeeded": lambda u, name, queue, host, ts, runtime, exc: succeeded(u, host=host, ts=ts, runtime=runtime),
    "failed": lambda u, name, queue, host, ts, runtime, exc: failed(u, host=host, ts=ts, exception=exc),
    "retried": lambda u, name, queue, host, ts, runtime, exc: retried(u, host=host, ts=ts, exception=exc),
    "rejected": lambda u, name, queue, host, ts, runtime, exc: rejected(u, host=host, ts=ts),
    "revoked": lambda u, name, queue, host, ts, runtime, exc: revoked(u, host=host, ts=ts),
}

TASK_STEP = st.tuples(  # through the handler, as the receiver delivers them (timestamps near the exporter's clock)
    st.just("task"),
    st.sampled_from(sorted(TASK_EVENTS)),
    UUIDS,
    NAMES,
    QUEUES,
    HOSTS,
    st.floats(-2, 2),
    SECONDS,
    st.sampled_from(["ValueError('x')", "KeyError('y')"]),
)
OBSERVE_STEP = st.tuples(  # straight into the store: any state, any histogram, with or without an exemplar
    st.just("observe"),
    NAMES,
    QUEUES,
    HOSTS,
    st.integers(0, len(catalogue.TASK_COUNTERS) - 1),
    # (mostly the runtime histogram: enough buckets in one to lower its native schema)
    st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 2]), SECONDS), min_size=1, max_size=4),
    st.booleans(),
)
WORKER_STEP = st.tuples(
    st.just("worker"),
    st.sampled_from(["worker-online", "worker-heartbeat", "worker-heartbeat", "worker-offline"]),
    HOSTS,
    st.integers(0, 3),
    st.integers(0, 30),
)
ADVANCE_STEP = st.tuples(st.just("advance"), st.sampled_from([0.0, 0.4, 1.0, 3.0, 7.0, 12.0, 31.0]))
SCRAPE_STEP = st.tuples(st.just("scrape"), st.sampled_from(sorted(ACCEPT)), st.booleans(), st.sampled_from(QUERIES))
# a task sent, received and started at once: it runs (until it ends, or its worker is lost)
START_STEP = st.tuples(st.just("start"), UUIDS, NAMES, QUEUES, HOSTS)
# (the more frequent kinds repeated)
STEPS = st.one_of(
    TASK_STEP,
    TASK_STEP,
    TASK_STEP,
    START_STEP,
    OBSERVE_STEP,
    OBSERVE_STEP,
    st.tuples(st.just("exception"), NAMES, QUEUES, HOSTS, st.sampled_from(["ValueError", "KeyError"])),
    WORKER_STEP,
    WORKER_STEP,
    st.tuples(st.just("queues"), st.dictionaries(QUEUES, st.integers(0, 50)), st.booleans(), st.booleans()),
    ADVANCE_STEP,
    ADVANCE_STEP,
    st.tuples(st.just("sweep")),
    st.tuples(st.just("connected"), st.booleans()),
    SCRAPE_STEP,
    SCRAPE_STEP,
    SCRAPE_STEP,
)


class Pipes:
    """The exporter's scrape path (web layer, kept collector and encoders) and the oracle
    (a collector and encoders that keep nothing) over one store and one fake clock."""

    def __init__(self, hostname_label: bool):
        self.reached: Set[str] = set()  # what the compared scrapes showed (see `reached`)
        self.rig = Rig(
            series_ttl=10.0,
            worker_timeout=5.0,
            worker_ttl=20.0,
            max_series=5,
            max_tasks=40,
            native_max_buckets=3,
            task_hostname_label=hostname_label,
        )
        self.web = web_for(self.rig)
        self.oracle = CeleryCollector(self.rig.store, self.rig.settings, self.rig.clock, keep=False)
        self.oracle_encoders = Encoders(keep=False)
        self.rig.store.exporter.set_connected(True, self.rig.clock.now())

    def key(self, name: str, queue: str, host: str) -> Tuple[str, ...]:
        return (name, queue, host) if self.rig.settings.task_hostname_label else (name, queue)

    def step(self, step: Tuple[Any, ...]) -> None:
        rig, kind = self.rig, step[0]
        now = rig.clock.now()
        if kind == "task":
            _, etype, uuid, name, queue, host, skew, runtime, exc = step
            rig.feed(TASK_EVENTS[etype](uuid, name, queue, host, now + skew, runtime, exc))
        elif kind == "start":
            _, uuid, name, queue, host = step
            rig.feed(sent(uuid, name=name, queue=queue, ts=now), received(uuid, name=name, host=host, ts=now))
            rig.feed(started(uuid, host=host, ts=now))
        elif kind == "observe":
            _, name, queue, host, state, observations, traced = step
            trace = ("u-direct", host) if traced else None
            rig.store.tasks.observe(self.key(name, queue, host), state, now, observations, trace)
        elif kind == "exception":
            _, name, queue, host, exc = step
            rig.store.tasks.exception(self.key(name, queue, host), exc, now)
        elif kind == "worker":
            _, etype, host, active, processed = step
            rig.feed(heartbeat(host, ts=now, active=active, processed=processed, etype=etype))
        elif kind == "queues":
            self._queues(step)
        elif kind == "advance":
            rig.advance(step[1])
        elif kind == "sweep":
            rig.store.sweep(now)
        elif kind == "connected":
            rig.store.exporter.set_connected(step[1], now)
        else:
            self.check(*step[1:])

    def _queues(self, step: Tuple[Any, ...]) -> None:
        _, depths, succeeded_, with_inspect = step
        queues, now = self.rig.store.queues, self.rig.clock.now()
        if succeeded_:
            queues.poll_succeeded({q: (n, n % 3 or None) for q, n in depths.items()}, 0.01, now)
        else:
            queues.poll_failed(0.5)
        if with_inspect:
            queues.set_worker_queues({"w1@h": sorted(depths), "w2@h": ["q1"]}, {"w1@h": 4, "w2@h": 2}, now)

    def check(self, fmt: str, gzipped: bool, query: str) -> None:
        headers = {"Accept": ACCEPT[fmt], **({"Accept-Encoding": "gzip"} if gzipped else {})}
        status, _, body = call(self.web, "/metrics", headers, query)
        assert status == 200
        if gzipped:
            body = gzip.decompress(body)
        names = urllib.parse.parse_qs(query).get("name[]", [])
        expected = self.oracle_encoders.encode(select(self.oracle.families(), names), fmt)
        assert body == expected, first_difference(body, expected, fmt)
        self.reached.update(reached(self))


def first_difference(got: bytes, expected: bytes, fmt: str) -> str:
    if fmt == negotiate.PROTOBUF:
        from celery_exporter.exposition import protobuf

        got_lines: List[Any] = [str(mf) for mf in protobuf.decode(got)]
        expected_lines: List[Any] = [str(mf) for mf in protobuf.decode(expected)]
    else:
        got_lines, expected_lines = got.split(b"\n"), expected.split(b"\n")
    for i, (a, b) in enumerate(zip(got_lines, expected_lines)):
        if a != b:
            return f"{fmt}: first difference at item {i}:\n kept:   {a!r}\n oracle: {b!r}"
    return f"{fmt}: {len(got_lines)} items kept, {len(expected_lines)} from the oracle"


K = ("app.a", "q1", "w1@h")  # (the label set of the examples below, hostname last)
SCRAPE = ("scrape", negotiate.TEXT, False, "")
AGAIN = [negotiate.TEXT]  # the checks at the end start in the format the example scraped in


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.booleans(), st.lists(STEPS, min_size=10, max_size=80), st.lists(st.sampled_from(sorted(ACCEPT)), max_size=3))
# Paths that random steps seldom take, written out:
# a histogram observed again after a scrape
@example(False, [("observe", *K, 3, [(0, 0.3)], True), SCRAPE, ("observe", *K, 1, [(0, 2.0)], False)], AGAIN)
# one label set's bytes grow, then its neighbour's change: the kept places must follow
@example(
    False,
    [
        ("observe", *K, 3, [(0, 0.3)], False),
        ("observe", "app.b", "q1", "w1@h", 3, [(0, 0.3)], False),
        SCRAPE,
        ("observe", *K, 3, [(0, 1e6)], False),
        SCRAPE,
        ("observe", "app.b", "q1", "w1@h", 3, [(0, 2.0)], False),
    ],
    AGAIN,
)
# a label set new since the last scrape, with no task running: its running count is 0
@example(False, [("observe", *K, 1, [], False), SCRAPE, ("observe", "app.b", "q1", "w1@h", 1, [], False)], AGAIN)
# an exception counted again after a scrape
@example(False, [("exception", *K, "KeyError"), SCRAPE, ("exception", *K, "KeyError")], AGAIN)
# a label set expired, swept and made again between two scrapes (its versions start anew)
@example(
    False, [("observe", *K, 1, [], False), SCRAPE, ("advance", 12.0), ("sweep",), ("observe", *K, 1, [], False)], AGAIN
)
# a running count that changes while no task label set does: of two runs of one label set,
# one ends because its worker's heartbeat says it is idle
@example(
    False,
    [
        ("start", "u0", "app.a", "q1", "w1@h"),
        ("start", "u1", "app.a", "q1", "w2@h"),
        SCRAPE,
        ("advance", 0.4),
        SCRAPE,
        ("worker", "worker-heartbeat", "w1@h", 0, 1),
    ],
    AGAIN,
)
# a runtime of -0.0 and waits of 0.0 with one task id and time: exemplars alike but written differently
@example(
    False,
    [("start", "u0", "app.a", "q1", "w1@h"), ("task", "succeeded", "u0", "app.a", "q1", "w1@h", 0.0, -0.0, "")],
    ["openmetrics"],
)
def test_every_scrape_is_what_the_oracle_writes(hostname_label, steps, last_formats):
    pipes = Pipes(hostname_label)
    for step in steps:
        pipes.step(step)
    for fmt in last_formats + sorted(ACCEPT):  # and at the end, every format, plain and gzipped
        pipes.check(fmt, False, "")
        pipes.check(fmt, True, "")
    for what in sorted(pipes.reached):
        event(what)  # (pytest --hypothesis-show-statistics shows how often)


def reached(pipes: Pipes) -> List[str]:
    """Which of the states the test is after the store is in."""
    snap = pipes.rig.store.snapshot(pipes.rig.clock.now())
    out = []
    if sum(snap.series.refused.values()):
        out.append("a label set refused at the cap")
    if sum(snap.series.expired.values()):
        out.append("a label set expired and was swept")
    if snap.series.held["task"] > len(snap.tasks.rows):
        out.append("a label set hidden past its TTL, not swept yet")
    if any(n is not None and n.schema < 3 for row in snap.tasks.rows for n in row.native):
        out.append("a native histogram lowered its schema")
    if any(not w.up for w in snap.workers.workers):
        out.append("a worker silent (up 0)")
    if snap.running.rows:
        out.append("tasks running")
    if any(row.counts[catalogue.INTERRUPTED] for row in snap.tasks.rows):
        out.append("a run interrupted by a lost worker")
    if snap.tasks.exceptions:
        out.append("exceptions counted")
    return out


def test_same_number_is_written_alike():
    assert same_number(2.5, 2.5) and same_number(3, 3) and same_number(0.0, 0.0) and same_number(-0.0, -0.0)
    assert not same_number(1, 1.0) and not same_number(0.0, -0.0) and not same_number(2.5, 2.25)
    assert not same_number(math.nan, math.nan) and not same_number(True, 1)


def test_running_rows_are_the_same_only_when_their_numbers_are_written_alike():
    from celery_exporter.collector import _same_runs
    from celery_exporter.store.running import RunningRow

    rows = [RunningRow(("a", "q"), 2, 1800000000.5), RunningRow(("b", "q"), 1, 0.0)]
    assert _same_runs(rows, [RunningRow(("a", "q"), 2, 1800000000.5), RunningRow(("b", "q"), 1, 0.0)])
    assert not _same_runs(rows, rows[:1])
    assert not _same_runs(rows, [rows[0], RunningRow(("b", "q"), 1, -0.0)])  # equal, written differently
    assert not _same_runs(rows, [rows[0], RunningRow(("b", "q"), 1.0, 0.0)])
    assert not _same_runs(rows[:1], [RunningRow(("a", "q"), 2, 1800000001)])
    whole = [RunningRow(("a", "q"), 2, 1800000000.0)]
    assert not _same_runs(whole, [RunningRow(("a", "q"), 2, 1800000000)])  # equal, written differently
    assert not _same_runs(whole, [RunningRow(("a", "q"), 2.0, 1800000000.0)])
    assert not _same_runs(rows[:1], [RunningRow(("a", "q"), 3, 1800000000.5)])
    assert _same_runs([], [])


def test_the_oracle_keeps_nothing():
    """Two oracle scrapes of one store write equal bytes but share no kept state: the
    collector hands out no list versions and the encoders keep no families."""
    pipes = Pipes(hostname_label=False)
    rig = pipes.rig
    rig.feed(sent("u1"), received("u1"), started("u1"), succeeded("u1", runtime=0.2))
    rig.settle()
    first = pipes.oracle.families()
    second = pipes.oracle.families()
    assert all(f.version is None for f in first + second)
    for a, b in zip(first, second):
        assert not set(map(id, a.metrics)) & set(map(id, b.metrics)), a.name
    for fmt in sorted(ACCEPT):
        assert pipes.oracle_encoders.encode(first, fmt) == pipes.oracle_encoders.encode(second, fmt)
        assert pipes.oracle_encoders.encoder(fmt)._kept == {}


def test_rig_settings_are_small_enough_to_expire_refuse_and_lower_native_schemas():
    """The property test's settings make every path it wants reachable within 80 steps."""
    s = Pipes(hostname_label=False).rig.settings
    assert s.series_ttl < 12.0 and s.worker_ttl < 31.0 and s.worker_timeout < 7.0
    assert s.max_series < 3 * 2 * 2 and s.native_max_buckets < 8
    assert dataclasses.replace(s) == s
