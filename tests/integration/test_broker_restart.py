"""A Redis restart in the middle of a run: the exporter reports the outage, keeps serving,
reconnects on its own, and counts new tasks exactly. The Redis is a private redis-server
on a free port (the shared one on 6379 is never touched)."""

from __future__ import annotations

import time

import pytest

from .rig import Metrics, RedisServer

pytestmark = pytest.mark.integration

STATES = ("sent", "received", "started", "succeeded")


def counts(m: Metrics):
    return {s: m.get_value(f"celery_task_{s}_total", name="it.succeed", queue_name="celery") for s in STATES}


def test_exporter_survives_a_redis_restart(make_rig, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)  # its log goes into the report; stopped at teardown
    exporter = rig.start_exporter()
    worker = rig.start_worker(exporter=exporter)
    rig.prime(exporter)

    for i in range(3):
        rig.send("it.succeed", [i])
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 3})
    m = exporter.wait_for(
        lambda m: counts(m) == dict.fromkeys(STATES, 3.0), 15, what="3 tasks counted", contains="it.succeed"
    )
    assert m.get_value("celery_exporter_broker_connected") == 1
    assert m.get_value("celery_exporter_broker_reconnects_total") == 0

    # Redis goes away: the exporter says so, and keeps answering.
    assert server.stop() == 0
    rig.procs.remove(server.proc)
    old_proc = server.proc
    m = exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_connected") == 0,
        10,
        what="broker_connected 0",
        contains="celery_exporter_broker",
    )
    assert counts(m) == dict.fromkeys(STATES, 3.0), "counts survive the outage"
    assert exporter.get("/-/healthy")[0] == 200
    assert exporter.get("/-/ready")[0] == 503
    assert exporter.get("/metrics")[0] == 200
    assert exporter.get("/")[0] == 200
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1

    # Back on the same port (empty: no persistence).
    server.start()
    rig.procs.append(server.proc)
    rig.procs.append(old_proc)  # keep its log for the report
    restarted = time.time()
    m = exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_connected") == 1,
        20,
        what="broker_connected 1 again",
        contains="celery_exporter_broker",
    )
    assert exporter.get("/-/ready")[0] == 200
    # One outage, however many attempts it took.
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1

    # The worker reconnects on its own: its heartbeats reach the exporter again.
    exporter.wait_for(
        lambda m: (
            (m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname) or 0) > restarted
            and m.get_value("celery_worker_up", hostname=worker.hostname) == 1
        ),
        30,
        what="a heartbeat of the reconnected worker",
        contains=worker.hostname,
    )

    for i in range(2):
        rig.send("it.succeed", [10 + i])
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 5})
    m = exporter.wait_for(
        lambda m: counts(m) == dict.fromkeys(STATES, 5.0),
        15,
        what="exactly 2 more tasks counted",
        contains="it.succeed",
    )
    assert m.get_value("celery_task_runtime_seconds_count", name="it.succeed", queue_name="celery") == 5
    assert m.get_value("celery_exporter_broker_connected") == 1
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1
    dropped = m.select("celery_exporter_events_dropped_total")
    assert dropped and all(v == 0 for v in dropped.values()), dropped
    print(
        "events after the restart:", {dict(k)["type"]: v for k, v in m.select("celery_exporter_events_total").items()}
    )
    # Exactly: no late duplicates one heartbeat later.
    hb = m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname)
    m = exporter.wait_for(
        lambda m: m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname) > hb,
        10,
        what="one more heartbeat",
        contains=worker.hostname,
    )
    assert counts(m) == dict.fromkeys(STATES, 5.0)
