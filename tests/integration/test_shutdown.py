"""SIGTERM stops the exporter cleanly and quickly: exit code 0 within 2 s, whether it is
connected to Redis or RabbitMQ or retrying a broker that is down."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from .rig import BROKERS, HOST, free_port, refusing_port, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS + ["unreachable"])
def test_sigterm_exits_0_within_2_seconds(make_rig, broker, request):
    if broker == "unreachable":
        # nothing listens there, and a port merely free could be handed to the exporter itself
        blocker = refusing_port()
        request.addfinalizer(blocker.close)
        rig = make_rig(f"redis://{HOST}:{blocker.getsockname()[1]}/0")
        exporter = rig.start_exporter(wait_ready=False)
        exporter.wait_for(
            lambda m: m.get_value("celery_exporter_broker_reconnects_total") >= 1,
            10,
            what="a failed connect",
            contains="celery_exporter_broker",
        )
        assert exporter.get("/-/ready")[0] == 503
    else:
        rig = make_rig(broker)
        exporter = rig.start_exporter()
        worker = rig.start_worker(exporter=exporter)  # events are flowing
        rig.send("it.succeed", [1])
        exporter.wait_for(  # under whatever queue label (no primer here)
            lambda m: sum(m.select("celery_task_succeeded_total", name="it.succeed").values()) == 1,
            15,
            what="a task counted",
            contains="it.succeed",
        )
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


def _broker_clients(rig, broker, newer_than=0):
    """Connections of this test's Redis DB or RabbitMQ vhost, as the broker lists them. On
    Redis only clients with an id above `newer_than` (ids only grow): a DB is handed out
    again after a test, whose producers may still be connected to it."""
    if broker == "redis":
        db = rig.broker_url.rsplit("/", 1)[1]
        listing = subprocess.run(
            ["redis-cli", "-h", HOST, "client", "list"], capture_output=True, text=True, check=True
        ).stdout
        return [
            line
            for line in listing.splitlines()
            if f" db={db} " in line and "cmd=client" not in line and int(line.split()[0][3:]) > newer_than
        ]
    vhost = rig.broker_url.rsplit("/", 1)[1]
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "vhost", "name"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.splitlines() if line.split("\t")[0] == vhost]


def _last_redis_client_id():
    listing = subprocess.run(["redis-cli", "-h", HOST, "client", "list"], capture_output=True, text=True, check=True)
    return max(int(line.split()[0][3:]) for line in listing.stdout.splitlines())


@pytest.mark.parametrize("broker", BROKERS)
def test_stop_joins_every_thread_and_each_closes_its_broker_connection(make_rig, broker):
    from celery_exporter.runtime import Exporter
    from celery_exporter.settings import Settings

    rig = make_rig(broker)
    settings = Settings(
        broker_url=rig.broker_url,
        listen_address=HOST,
        port=free_port(),
        queues=("celery",),
        queue_poll_interval=0.2,
        inspect_interval=0.2,
        inspect_timeout=0.2,
    )
    exporter = Exporter(settings)
    before = set(threading.enumerate())
    newer_than = _last_redis_client_id() if broker == "redis" else 0
    exporter.start()
    try:
        names = {t.name for t in exporter.threads}
        assert names == {"event-receiver", "queue-poller", "inspector"}  # no sweeper: it rides on the tick
        # the receiver's connection, the poller's and the inspector's are all open
        wait_for(
            lambda: (
                exporter.store.exporter.connected
                and exporter.store.snapshot(0).queues.poll_success
                and exporter.inspector.backend._connection is not None
            ),
            20,
            what="every thread to connect",
        )
        assert len(_broker_clients(rig, broker, newer_than)) >= 3
    finally:
        started = time.monotonic()
        exporter.stop()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
    wait_for(
        lambda: not _broker_clients(rig, broker, newer_than),
        10,
        interval=0.2,
        what="every broker connection closed",
        describe=lambda: str(_broker_clients(rig, broker, newer_than)),
    )
