"""SIGTERM stops the exporter cleanly and quickly: exit code 0 within 2 s, whether it is
connected to Redis or RabbitMQ or retrying a broker that is down."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from .rig import BROKERS, HOST, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS + ["unreachable"])
def test_sigterm_exits_0_within_2_seconds(make_rig, broker):
    if broker == "unreachable":
        rig = make_rig(f"redis://{HOST}:{free_port()}/0")  # nothing listens there
        exporter = rig.start_exporter(wait_ready=False)
        exporter.wait_for(lambda m: m.get_value("celery_exporter_broker_reconnects_total") >= 1, 10,
                          what="a failed connect", contains="celery_exporter_broker")
        assert exporter.get("/-/ready")[0] == 503
    else:
        rig = make_rig(broker)
        exporter = rig.start_exporter()
        worker = rig.start_worker(exporter=exporter)  # events are flowing
        rig.send("it.succeed", [1])
        exporter.wait_for(  # under whatever queue label (no primer here)
            lambda m: sum(m.select("celery_task_succeeded_total", name="it.succeed").values()) == 1,
            15, what="a task counted", contains="it.succeed")
        assert exporter.get("/-/ready")[0] == 200
        assert worker.proc.running

    proc = exporter.proc
    proc.terminate()  # one SIGTERM (a second one would force exit code 1)
    started = time.monotonic()
    try:
        code = proc.popen.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the exporter did not exit within 2 s of SIGTERM:\n{proc.log_text(4000)}")
    elapsed = time.monotonic() - started
    assert code == 0, f"exit code {code}:\n{proc.log_text(4000)}"
    assert elapsed < 2.0
    log = proc.log_text()
    assert "received SIGTERM, stopping" in log and log.rstrip().endswith("stopped"), log[-2000:]
    with pytest.raises(OSError):
        exporter.get("/-/healthy")  # the port is closed


def test_a_second_signal_forces_exit(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    proc = exporter.proc
    proc.terminated = True  # the rig must not add its own SIGTERM
    # Two different signals, sent back to back, are both delivered (two SIGTERMs could merge
    # into one pending signal): the second arrives while the first one's clean stop runs.
    proc.signal(signal.SIGTERM)
    proc.signal(signal.SIGINT)
    code = proc.popen.wait(timeout=5)
    log = proc.log_text()
    assert code == 1, log[-2000:]
    assert ", stopping" in log and "exiting now" in log, log[-2000:]
