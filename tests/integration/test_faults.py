"""Broker faults on real brokers: wrong credentials, a name that does not resolve, a
connection cut mid-stream, Redis dropping the subscriber for a full output buffer, and a
broker down for longer than the backoff cap. In every case the process stays up, /metrics
and /-/healthy answer, /-/ready and celery_exporter_broker_connected say the truth, the
outage is counted and logged once, the password is never shown, and counting resumes."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest
import redis

from .rig import AMQP_PORT, HOST, Exporter, Metrics, RedisServer, clean_env, executable, rabbitmqctl, wait_for

pytestmark = pytest.mark.integration

OUTAGE_LINE = "unavailable ("


def exporter_log(exporter: Exporter) -> str:
    """What the exporter wrote (the rig's first line is its own command line)."""
    return "\n".join(exporter.proc.log_text().splitlines()[1:])


def serving_but_not_ready(exporter: Exporter) -> Metrics:
    """Still serving, honest about the broker."""
    assert exporter.get("/-/healthy")[0] == 200
    assert exporter.get("/-/ready")[0] == 503
    assert exporter.get("/")[0] == 200
    m = exporter.metrics()
    assert m.get_value("celery_exporter_broker_connected") == 0
    return m


def succeeded(m: Metrics) -> float:
    return sum(m.select("celery_task_succeeded_total", name="it.succeed").values())


def test_wrong_redis_password_is_retried_until_it_works_and_never_shown(make_rig, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    right = f"pw-{uuid.uuid4().hex[:12]}"
    other = f"other-{uuid.uuid4().hex[:8]}"
    redis.Redis(host=HOST, port=server.port).config_set("requirepass", other)
    admin = redis.Redis(host=HOST, port=server.port, password=other)
    url = f"redis://:{right}@{HOST}:{server.port}/0"
    rig = make_rig(url)
    rig.procs.append(server.proc)
    exporter = rig.start_exporter(wait_ready=False)
    exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_reconnects_total") == 1,
        15,
        what="the failed login to count as an outage",
        contains="celery_exporter_broker",
    )
    serving_but_not_ready(exporter)
    # the operator fixes the broker side: the exporter gets in on its own, in the same outage
    admin.config_set("requirepass", right)
    m = exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_connected") == 1,
        40,
        what="the exporter to log in once the password matches",
        contains="celery_exporter_broker",
    )
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1
    assert exporter.get("/-/ready")[0] == 200
    log = exporter_log(exporter)
    warnings = [line for line in log.splitlines() if OUTAGE_LINE in line]
    assert len(warnings) == 1, warnings
    assert (
        "AuthenticationError" in warnings[0] or "invalid password" in warnings[0].lower() or "WRONGPASS" in warnings[0]
    ), warnings[0]
    assert "reconnected to" in log
    assert right not in log
    assert right not in exporter.get("/")[2]
    assert right not in exporter.get("/metrics")[2]
    # nor in --help, with the URL in the environment
    help_text = subprocess.run(
        [executable("celery-exporter"), "--help"],
        capture_output=True,
        text=True,
        env=clean_env(CELERY_BROKER_URL=url, CELERY_EXPORTER_BROKER_URL=url),
    ).stdout
    assert "--broker-url" in help_text and right not in help_text
    admin.close()


def test_wrong_rabbitmq_credentials_then_the_user_appears(make_rig):
    rig = make_rig("rabbitmq")
    vhost = rig.broker_url.rsplit("/", 1)[1]
    user, password = f"it-{rig.id}", f"pw-{uuid.uuid4().hex[:12]}"
    url = f"amqp://{user}:{password}@{HOST}:{AMQP_PORT}/{vhost}"
    exporter = rig.start_exporter(broker_url=url, wait_ready=False)
    exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_reconnects_total") == 1,
        20,
        what="the refused login to count as an outage",
        contains="celery_exporter_broker",
    )
    serving_but_not_ready(exporter)
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        m = exporter.wait_for(
            lambda m: m.get_value("celery_exporter_broker_connected") == 1,
            45,
            what="the exporter to log in once the user exists",
            contains="celery_exporter_broker",
        )
        assert m.get_value("celery_exporter_broker_reconnects_total") == 1
        # and it hears the workers of that vhost
        worker = rig.start_worker(exporter=exporter)
        assert worker.proc.running
        log = exporter_log(exporter)
        assert len([line for line in log.splitlines() if OUTAGE_LINE in line]) == 1
        assert password not in log
    finally:
        rabbitmqctl("delete_user", user)


def test_a_name_that_does_not_resolve(make_rig):
    rig = make_rig("redis://celery-broker.invalid:6379/0")
    exporter = rig.start_exporter(wait_ready=False)
    exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_reconnects_total") == 1,
        20,
        what="the DNS failure to count as an outage",
        contains="celery_exporter_broker",
    )
    serving_but_not_ready(exporter)
    lines = [line for line in exporter.proc.log_text().splitlines() if OUTAGE_LINE in line]
    assert len(lines) == 1 and "celery-broker.invalid" in lines[0], lines
    assert exporter.proc.running


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_connection_cut_mid_stream(make_rig, tmp_path, broker):
    if broker == "redis":
        server = RedisServer(tmp_path)
        server.start()
        rig = make_rig(server.url)
        rig.procs.append(server.proc)
    else:
        rig = make_rig("rabbitmq")
    exporter = rig.start_exporter()
    rig.start_worker(exporter=exporter)
    rig.prime(exporter)
    for i in range(3):
        rig.send("it.succeed", [i])
    exporter.wait_for(lambda m: succeeded(m) == 3, 20, what="3 tasks counted", contains="it.succeed")

    if broker == "redis":  # the server closes the exporter's subscription connection
        killed = redis.Redis(host=HOST, port=server.port).client_kill_filter(_type="pubsub")
        assert killed >= 1
    else:  # the broker closes every connection of the vhost (the worker reconnects as well)
        vhost = rig.broker_url.rsplit("/", 1)[1]
        rabbitmqctl("close_all_connections", "-p", vhost, "test: connection cut")
    m = exporter.wait_for(
        lambda m: (
            m.get_value("celery_exporter_broker_reconnects_total") == 1
            and m.get_value("celery_exporter_broker_connected") == 1
        ),
        40,
        what="one outage, and connected again",
        contains="celery_exporter_broker",
    )
    # counting resumes, exactly (wait for the worker to be back too)
    wait_for(lambda: rig.producer.control.inspect(timeout=1).ping(), 40, what="the worker to be back")
    for i in range(4):
        rig.send("it.succeed", [10 + i])
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 7}, timeout=40)
    m = exporter.wait_for(lambda m: succeeded(m) == 7, 20, what="7 tasks counted", contains="it.succeed")
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1
    assert exporter.proc.running


def test_redis_drops_the_subscriber_for_a_full_output_buffer(make_rig, tmp_path):
    """Redis disconnects a PUB/SUB client that falls too far behind (32 MiB by default; 64 KiB
    here). The exporter is frozen (SIGSTOP) while events pile up, then thawed."""
    server = RedisServer(tmp_path)
    server.start()
    client = redis.Redis(host=HOST, port=server.port)
    client.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    exporter = rig.start_exporter()
    rig.start_worker(exporter=exporter)
    rig.prime(exporter)

    exporter.proc.signal(signal.SIGSTOP)
    try:
        with rig.producer.events.default_dispatcher(hostname="flood@host") as dispatcher:
            for i in range(3000):  # ~8 KiB each, 24 MiB: beyond what the sockets buffer and the 64 KiB limit
                dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=i, padding="x" * 8000)
        wait_for(
            lambda: "output buffer limits" in server.proc.log_text(),
            10,
            what="Redis to drop the frozen subscriber",
            describe=lambda: server.proc.log_text(3000),
        )
    finally:
        exporter.proc.signal(signal.SIGCONT)
    m = exporter.wait_for(
        lambda m: (
            m.get_value("celery_exporter_broker_reconnects_total") == 1
            and m.get_value("celery_exporter_broker_connected") == 1
        ),
        30,
        what="the dropped subscription to count as an outage and be restored",
        contains="celery_exporter_broker",
    )
    before = succeeded(m)
    for i in range(3):
        rig.send("it.succeed", [i])
    exporter.wait_for(lambda m: succeeded(m) == before + 3, 30, what="counting to resume", contains="it.succeed")
    client.close()


def test_broker_down_longer_than_the_backoff_cap(make_rig, tmp_path):
    """Down for 40 s: the backoff reaches its 30 s cap; the outage is logged and counted once,
    and the exporter is back within one capped delay after the broker returns."""
    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    exporter = rig.start_exporter()
    assert server.stop() == 0
    rig.procs.remove(server.proc)
    down_since = time.monotonic()
    scrapes = 0
    while time.monotonic() - down_since < 40:  # keep scraping through the outage
        serving_but_not_ready(exporter)
        scrapes += 1
        time.sleep(1)
    server.start()
    rig.procs.append(server.proc)
    back = time.monotonic()
    m = exporter.wait_for(
        lambda m: m.get_value("celery_exporter_broker_connected") == 1,
        35,
        what="reconnected within the 30 s cap",
        contains="celery_exporter_broker",
    )
    assert time.monotonic() - back < 35
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1
    log = exporter.proc.log_text()
    assert len([line for line in log.splitlines() if OUTAGE_LINE in line]) == 1
    assert log.count("reconnected to") == 1
    assert scrapes >= 35


def test_a_frozen_redis_server_is_noticed_and_takes_no_task_with_it(make_rig, tmp_path):
    """SIGSTOP of the server: the exporter's connection stays open and silent (as with a
    vanished host or a NAT that dropped the flow). The exporter pings, gives up, counts the
    outage and reconnects once the server runs again; the worker, frozen out as well, is not
    declared lost, and the task it ran all along is not counted as interrupted."""
    from celery_exporter.redis_events import PING_AFTER, PING_TIMEOUT

    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    exporter = rig.start_exporter()
    worker = rig.start_worker(exporter=exporter)
    rig.prime(exporter)
    rig.send("it.hold", [120])
    rig.truth.wait({("it.hold", "celery", "started"): 1})

    def running(m: Metrics):
        return m.get_value("celery_task_running", name="it.hold", queue_name="celery")

    def interrupted(m: Metrics):
        return m.get_value("celery_task_interrupted_total", name="it.hold", queue_name="celery")

    exporter.wait_for(lambda m: running(m) == 1, 15, what="the task to run", contains="it.hold")

    server.proc.signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        m = exporter.wait_for(
            lambda m: m.get_value("celery_exporter_broker_connected") == 0,
            PING_AFTER + PING_TIMEOUT + 10,
            what="the silent connection to be given up",
            contains="celery_exporter_broker",
            interval=0.25,
        )
        noticed = time.monotonic() - frozen
        # the last heartbeat came at most 2 s before the freeze: then 5 s to the ping, 10 s to give up
        assert PING_AFTER + PING_TIMEOUT - 2.5 <= noticed <= PING_AFTER + PING_TIMEOUT + 3, noticed
        assert m.get_value("celery_exporter_broker_reconnects_total") == 1
        assert exporter.get("/-/ready")[0] == 503
        assert m.get_value("celery_worker_up", hostname=worker.hostname) == 0  # unheard, so down...
        assert interrupted(m) == 0  # ...but not declared lost: we were the ones cut off
    finally:
        server.proc.signal(signal.SIGCONT)
    m = exporter.wait_for(
        lambda m: (
            m.get_value("celery_exporter_broker_connected") == 1
            and m.get_value("celery_worker_up", hostname=worker.hostname) == 1
            and running(m) == 1
        ),
        40,
        what="reconnected, the worker up again and its task running",
        contains="it.hold",
    )
    assert interrupted(m) == 0
    assert m.get_value("celery_exporter_broker_reconnects_total") == 1
    log = exporter_log(exporter)
    assert "did not answer PING" in log
    assert len([line for line in log.splitlines() if OUTAGE_LINE in line]) == 1
    worker.proc.signal_group(signal.SIGKILL)  # no need to wait for the task
