"""Hostile and malformed events published straight to the broker's event exchange: the
receiver never dies, /metrics always parses (promtool too), the caps hold, and what was
refused is counted by reason."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from celery.events.event import get_exchange
from kombu import Connection, Producer

from .rig import BROKERS, Metrics

pytestmark = pytest.mark.integration

CAP = 300


def publish(url: str, messages) -> None:
    """messages: (body, publish kwargs) on the celeryev topic exchange."""
    with Connection(url) as conn:
        # Celery's own event exchange: a topic exchange, made fanout (PUB/SUB) on Redis
        producer = Producer(conn.channel(), exchange=get_exchange(conn, name="celeryev"))
        for body, kwargs in messages:
            producer.publish(body, routing_key=kwargs.pop("routing_key", "task.multi"), **kwargs)


def event(etype, **fields):
    return {
        "type": etype,
        "timestamp": time.time(),
        "hostname": "evil@host",
        "utcoffset": 0,
        "pid": 1,
        "clock": 1,
        **fields,
    }


@pytest.mark.parametrize("broker", BROKERS)
def test_hostile_events_are_counted_and_refused_never_fatal(make_rig, broker):
    rig = make_rig(broker)
    exporter = rig.start_exporter("--max-series", str(CAP), "--no-inspect")
    worker = rig.start_worker(exporter=exporter)  # a real worker, to show the receiver still works after

    garbage = [
        ("this is not json", dict(content_type="application/json", content_encoding="utf-8")),
        (b"\x80\x81\xff", dict(content_type="application/json", content_encoding="binary")),
        ({"type": "worker-heartbeat"}, dict(serializer="pickle")),  # not an accepted content type
        ([1, 2, "three", None], dict(serializer="json")),
        ("just a string", dict(serializer="json")),
        ([event("task-received")], dict(serializer="json")),  # no uuid, no name
        ([event("task-received", uuid="h1", name=None)], dict(serializer="json")),
        ([event("task-received", uuid="h2", name="n" * 1_000_000)], dict(serializer="json")),
        ([event("task-received", uuid="h3", name="ctrl\x00\x07name")], dict(serializer="json")),
        ([event("task-succeeded", uuid="h4", runtime="fast")], dict(serializer="json")),
        ([event("task-unheard-of", uuid="h5"), event("bogus"), {"no": "type"}], dict(serializer="json")),
        ([event("worker-heartbeat", hostname={"a": 1})], dict(serializer="json", routing_key="worker.heartbeat")),
        ([event("worker-heartbeat", hostname='q"uo\nte@h')], dict(serializer="json", routing_key="worker.heartbeat")),
        ([event("task-received", uuid="h6", name='odd "quoted" \\ name', hostname="w@h")], dict(serializer="json")),
    ]
    publish(rig.broker_url, garbage)
    quoted = 'odd "quoted" \\ name'
    exporter.wait_for(
        lambda m: quoted in m.label_values("celery_task_received_total", "name"),
        15,
        what="the task with quotes in its name to be counted",
        contains="received",
    )
    # a flood of unique task names and worker names, far past --max-series
    flood = [
        (
            [event("task-received", uuid=f"f{i}", name=f"flood.task.{i}") for i in range(j, j + 50)],
            dict(serializer="json"),
        )
        for j in range(0, 3000, 50)
    ]
    flood += [
        (
            [event("worker-heartbeat", hostname=f"churn-{i}@host", freq=2.0, active=0, processed=0)],
            dict(serializer="json", routing_key="worker.heartbeat"),
        )
        for i in range(500)
    ]
    publish(rig.broker_url, flood)

    def settled(m: Metrics) -> bool:
        return (
            (m.get_value("celery_exporter_events_dropped_total", reason="series_limit") or 0) > 0
            and (m.get_value("celery_exporter_events_dropped_total", reason="undecodable") or 0) >= 3
            and (m.get_value("celery_exporter_series_refused_total", kind="worker") or 0) > 0
        )

    m = exporter.wait_for(settled, 30, what="the garbage to be counted", contains="celery_exporter_")
    series = sum(m.select("celery_exporter_series").values())
    assert series <= CAP, series
    assert m.get_value("celery_exporter_events_dropped_total", reason="bad_message") >= 2
    assert m.get_value("celery_exporter_events_dropped_total", reason="bad_field") >= 6
    assert m.get_value("celery_exporter_events_dropped_total", reason="handler_error") == 0
    assert m.get_value("celery_exporter_events_total", type="other") >= 2
    names = m.label_values("celery_task_received_total", "name")
    assert quoted in names
    assert not any(len(n) > 256 or "\x00" in n for n in names)
    assert (m.get_value("process_resident_memory_bytes") or 0) < 200 * 2**20

    # the exposition parses (promtool too) and the receiver still counts a real worker's events
    status, _, body = exporter.get("/metrics")
    assert status == 200
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian prometheus) is needed"
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    before = m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname)
    exporter.wait_for(
        lambda m: (
            (m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname) or 0) > before
        ),
        15,
        what="the real worker's next heartbeat",
        contains=worker.hostname,
    )
    assert exporter.proc.running
    log = exporter.proc.log_text()
    assert log.count("reason=undecodable") == 1  # logged once per reason, however many
    assert "Traceback" not in log
