"""Unit-test rig: handler + store + collector driven by event dicts and a fake clock."""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Tuple

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from celery_exporter.clock import FakeClock
from celery_exporter.collector import CeleryCollector
from celery_exporter.exposition import Encoders, protobuf
from celery_exporter.exposition.text import bound
from celery_exporter.handlers import Handler
from celery_exporter.labels import INSPECT_WAIT
from celery_exporter.receiver import TICK_INTERVAL
from celery_exporter.settings import Settings
from celery_exporter.store import Store

T0 = 1_800_000_000.0
Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


class Rig:
    def __init__(self, **overrides):
        self.settings = dataclasses.replace(Settings(), **overrides)
        self.clock = FakeClock(T0)
        self.store = Store(self.settings)
        self.handler = Handler(self.store, self.settings)
        self.collector = CeleryCollector(self.store, self.settings, self.clock)
        self.process_registry = CollectorRegistry(auto_describe=False)
        self.encoders = Encoders()
        self.broker_alive = True

    def feed(self, *events, dt: float = 0.0) -> None:
        """Deliver events as the receiver would, each at the current clock time."""
        for event in events:
            self.handler.handle(event, self.clock.now())
            if dt:
                self.clock.advance(dt)

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass with the receiver's tick every TICK_INTERVAL, as it runs."""
        target = self.clock.now() + seconds
        while self.clock.t + TICK_INTERVAL < target:
            self.clock.advance(TICK_INTERVAL)
            self.tick()
        self.clock.t = target  # the same float a single advance(seconds) gives
        self.tick()

    def tick(self) -> None:
        """One receiver tick. While `broker_alive`, the broker is heard on every tick (as
        the receiver hears pongs and AMQP heartbeats), whether or not events come."""
        if self.broker_alive and self.store.exporter.connected:
            self.store.exporter.heard(self.clock.now())
        self.handler.tick(self.clock.now())

    def settle(self) -> None:
        """Let held events go: a task's events wait up to sent_hold_seconds for its
        task-sent (which carries the queue) before the fallback queue label is used, and
        a few seconds more while its worker is not known to inspect (see labels.py)."""
        self.advance(self.settle_seconds)

    @property
    def settle_seconds(self) -> float:
        return self.settings.sent_hold_seconds + self.settings.inspect_timeout + INSPECT_WAIT + 0.1

    def text(self, fmt: str = "text") -> str:
        return self.encoders.encode(self.collector.families(), fmt).decode()

    def protobuf(self) -> list:
        return protobuf.decode(self.encoders.encode(self.collector.families(), "protobuf"))

    def samples(self) -> Samples:
        """Samples as the official parser reads them; every call also checks that the
        OpenMetrics and protobuf encodings carry exactly the same samples."""
        families = self.collector.families()
        out = text_samples(self.encoders.encode(families, "text").decode())
        assert text_samples(self.encoders.encode(families, "openmetrics").decode(), openmetrics=True) == out
        assert protobuf_samples(protobuf.decode(self.encoders.encode(families, "protobuf"))) == out
        return out

    def value(self, metric: str, **labels) -> float:
        return self.samples().get((metric, frozenset(labels.items())))

    def family(self, prefix: str) -> Samples:
        return {k: v for k, v in self.samples().items() if k[0].startswith(prefix)}


def text_samples(text: str, openmetrics: bool = False) -> Samples:
    """(sample name, labels) -> value, as prometheus_client's text or OpenMetrics parser reads them."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    out: Samples = {}
    for family in parse(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def protobuf_samples(messages: list) -> Samples:
    """The same view of decoded MetricFamily messages: classic buckets as _bucket samples
    (with the implied +Inf), _count and _sum; counters under their family's name, which
    ends in _total as in the text formats (Prometheus adds no suffix to a protobuf counter)."""
    out: Samples = {}
    for mf in messages:
        for m in mf.metric:
            labels = {lp.name: lp.value for lp in m.label}
            if mf.type == 0:
                assert mf.name.endswith("_total"), mf.name
                out[(mf.name, frozenset(labels.items()))] = m.counter.value
            elif mf.type == 1:
                out[(mf.name, frozenset(labels.items()))] = m.gauge.value
            else:
                h = m.histogram
                for b in h.bucket:
                    le = frozenset({**labels, "le": bound(b.upper_bound)}.items())
                    out[(mf.name + "_bucket", le)] = float(b.cumulative_count)
                out[(mf.name + "_bucket", frozenset({**labels, "le": "+Inf"}.items()))] = float(h.sample_count)
                out[(mf.name + "_count", frozenset(labels.items()))] = float(h.sample_count)
                out[(mf.name + "_sum", frozenset(labels.items()))] = h.sample_sum
    return out


@pytest.fixture
def rig():
    return Rig()


# -- event factories: the payloads Celery 5.x really sends (see the reference sheet) ------


def _common(etype, hostname, ts, **fields):
    event = {"type": etype, "hostname": hostname, "utcoffset": 0, "pid": 100, "clock": 1, "timestamp": ts}
    event.update(fields)
    return event


def sent(uuid, name="app.add", queue="celery", ts=T0, retries=0, eta=None, **kw):
    return _common(
        "task-sent",
        "gen42@client",
        ts,
        uuid=uuid,
        root_id=uuid,
        parent_id=None,
        name=name,
        args="()",
        kwargs="{}",
        retries=retries,
        eta=eta,
        expires=None,
        queue=queue,
        exchange="",
        routing_key=queue,
        **kw,
    )


def received(uuid, name="app.add", host="w1@h", ts=T0, retries=0, eta=None):
    return _common(
        "task-received",
        host,
        ts,
        uuid=uuid,
        name=name,
        args="()",
        kwargs="{}",
        root_id=uuid,
        parent_id=None,
        retries=retries,
        eta=eta,
        expires=None,
    )


def started(uuid, host="w1@h", ts=T0):
    return _common("task-started", host, ts, uuid=uuid)


def succeeded(uuid, host="w1@h", ts=T0, runtime=0.5):
    return _common("task-succeeded", host, ts, uuid=uuid, result="None", runtime=runtime)


def failed(uuid, host="w1@h", ts=T0, exception="ValueError('boom')", traceback="Traceback...\nValueError: boom"):
    return _common("task-failed", host, ts, uuid=uuid, exception=exception, traceback=traceback)


def retried(uuid, host="w1@h", ts=T0, exception="Retry('again')"):
    return _common("task-retried", host, ts, uuid=uuid, exception=exception, traceback="Traceback...")


def revoked(uuid, host="w1@h", ts=T0, expired=False, terminated=False):
    return _common("task-revoked", host, ts, uuid=uuid, terminated=terminated, signum=None, expired=expired)


def rejected(uuid, host="w1@h", ts=T0, requeue=False):
    return _common("task-rejected", host, ts, uuid=uuid, requeue=requeue)


def heartbeat(host="w1@h", ts=T0, freq=2.0, active=0, processed=0, etype="worker-heartbeat"):
    return _common(
        etype,
        host,
        ts,
        freq=freq,
        active=active,
        processed=processed,
        loadavg=[0.1, 0.1, 0.1],
        sw_ident="py-celery",
        sw_ver="5.7.0",
        sw_sys="Linux",
    )
