"""Queue depth from the real brokers: exact lengths with priorities, key prefixes and
several queues (no worker consuming), consumers on RabbitMQ, and a broker outage that
never blocks a scrape."""

from __future__ import annotations

import json
import signal
import time
from typing import Dict, Optional, Sequence

import pytest
import redis
from celery import Celery

from .rig import Exporter, Metrics, RedisSentinel, RedisServer, Rig, TlsRedisServer, http_get

pytestmark = pytest.mark.integration

POLL = ("--queue-poll-interval", "0.5s", "--queue-poll-timeout", "1s")


def producer(rig: Rig, transport_options: Optional[dict] = None) -> Celery:
    app = Celery(f"it-queues-{rig.id}", broker=rig.broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options or {},
    )
    return app


def publish(app: Celery, queue: str, n: int, priority: Optional[int] = None) -> None:
    options = {} if priority is None else {"priority": priority}
    for i in range(n):
        app.send_task("it.succeed", args=[i], queue=queue, **options)


def lengths(m: Metrics, queues: Sequence[str]) -> Dict[str, Optional[float]]:
    return {q: m.get_value("celery_queue_length", queue_name=q) for q in queues}


def wait_lengths(exporter: Exporter, expected: Dict[str, float], timeout: float = 15) -> Metrics:
    return exporter.wait_for(
        lambda m: lengths(m, list(expected)) == expected,
        timeout,
        what=f"queue lengths {expected}",
        contains="queue",
        explain=lambda m: f"lengths: {lengths(m, list(expected))}",
    )


REDIS_VARIANTS = {
    # kombu's defaults: steps 0,3,6,9 joined with "\x06\x16", no prefix
    "defaults": {},
    # every priority its own list, another separator, and a global key prefix
    "prefix-and-steps": {"global_keyprefix": "acme:", "priority_steps": list(range(10)), "sep": ":"},
}


@pytest.mark.parametrize("variant", list(REDIS_VARIANTS))
def test_redis_lengths_sum_every_priority_list(make_rig, variant):
    options = REDIS_VARIANTS[variant]
    rig = make_rig("redis")
    app = producer(rig, options)
    try:
        for priority in range(10):  # qa: 1 + 2 + ... + 10 = 55 messages over priorities 0..9
            publish(app, "qa", priority + 1, priority=priority)
        publish(app, "qb", 7)  # qb: 7 at the default priority
    finally:
        app.close()

    # What is really on the broker, read without kombu: the lists under their raw keys.
    raw = redis.Redis.from_url(rig.broker_url)
    try:
        keys = {k.decode() for k in raw.keys("*q[ab]*") if raw.type(k) == b"list"}
        total = sum(raw.llen(k) for k in keys)
    finally:
        raw.close()
    assert total == 62, keys
    prefix = options.get("global_keyprefix", "")
    assert all(k.startswith(prefix) for k in keys), keys
    assert len([k for k in keys if "qa" in k]) == (10 if variant != "defaults" else 4), keys

    extra = [
        arg
        for k, v in options.items()
        for arg in ("--transport-option", f"{k}={v if isinstance(v, str) else json.dumps(v)}")
    ]
    # qc is only named: it has no list at all and must read 0, not be an error
    exporter = rig.start_exporter("-Q", "qa", "-Q", "qb,qc", "--no-inspect", *POLL, *extra)
    m = wait_lengths(exporter, {"qa": 55.0, "qb": 7.0, "qc": 0.0})
    assert m.get_value("celery_exporter_queue_poll_success") == 1
    assert m.select("celery_exporter_queue_poll_errors_total") and all(
        v == 0 for v in m.select("celery_exporter_queue_poll_errors_total").values()
    )
    # Redis cannot tell consumers: no consumer series rather than a made-up 0
    assert m.select("celery_queue_active_consumers") == {}

    # A worker drains them (it consumes with the same transport options): every list reaches 0.
    worker_env = {"IT_TRANSPORT_OPTIONS": json.dumps(options)} if options else {}
    worker = rig.start_worker(queues=("qa", "qb"), concurrency=2, env=worker_env)
    wait_lengths(exporter, {"qa": 0.0, "qb": 0.0, "qc": 0.0}, timeout=60)
    # ...and its events reach the exporter through the same (prefixed) PUB/SUB topics
    m = exporter.wait_for(
        lambda m: (
            sum(m.select("celery_task_succeeded_total", name="it.succeed").values()) == 62
            and m.get_value("celery_worker_up", hostname=worker.hostname) == 1
        ),
        30,
        what="all 62 tasks counted from the worker's events",
        contains="it.succeed",
    )
    assert m.get_value("celery_exporter_events_dropped_total", reason="undecodable") == 0


def test_rabbitmq_ready_messages_and_consumers(make_rig):
    rig = make_rig("rabbitmq")
    app = producer(rig)
    try:
        publish(app, "qa", 9)
        publish(app, "qb", 4)
    finally:
        app.close()
    exporter = rig.start_exporter("-Q", "qa,qb,qmissing", "--no-inspect", *POLL)
    m = wait_lengths(exporter, {"qa": 9.0, "qb": 4.0, "qmissing": 0.0})
    for queue in ("qa", "qb", "qmissing"):
        assert m.get_value("celery_queue_active_consumers", queue_name=queue) == 0, queue
    assert m.get_value("celery_exporter_queue_poll_success") == 1

    # One worker on qa only: qa drains and shows its consumer; qb is untouched.
    rig.start_worker(queues=("qa",), concurrency=1)
    m = exporter.wait_for(
        lambda m: (
            lengths(m, ["qa", "qb"]) == {"qa": 0.0, "qb": 4.0}
            and m.get_value("celery_queue_active_consumers", queue_name="qa") == 1
        ),
        60,
        what="qa drained by its one consumer",
        contains="queue",
    )
    assert m.get_value("celery_queue_active_consumers", queue_name="qb") == 0
    # the missing queue's 404 closed a channel: polling goes on regardless
    assert m.get_value("celery_queue_length", queue_name="qmissing") == 0
    assert m.get_value("celery_exporter_queue_poll_success") == 1


def scrape_times(exporter: Exporter, n: int) -> list:
    out = []
    for _ in range(n):
        start = time.monotonic()
        status, _, _ = http_get(exporter.base + "/metrics", timeout=5)
        out.append(time.monotonic() - start)
        assert status == 200
    return out


def test_broker_outage_keeps_the_last_lengths_and_never_blocks_a_scrape(make_rig, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    app = producer(rig)
    try:
        publish(app, "qa", 5)
    finally:
        app.close()
    exporter = rig.start_exporter("-Q", "qa", "--no-inspect", *POLL)
    m = wait_lengths(exporter, {"qa": 5.0})
    first_success = m.get_value("celery_exporter_queue_poll_last_success_timestamp_seconds")
    assert first_success and abs(first_success - time.time()) < 10

    # 1. Redis hangs (SIGSTOP: connections stay open, nothing answers). Polls time out after
    #    --queue-poll-timeout; scrapes answer from memory meanwhile.
    server.proc.signal(signal.SIGSTOP)
    try:
        m = exporter.wait_for(
            lambda m: m.get_value("celery_exporter_queue_poll_success") == 0,
            15,
            what="poll_success 0 while Redis hangs",
            contains="poll",
        )
        assert lengths(m, ["qa"]) == {"qa": 5.0}, "the last good value stays visible"
        assert (m.get_value("celery_exporter_queue_poll_errors_total", reason="broker") or 0) >= 1
        hung = scrape_times(exporter, 20)
        assert max(hung) < 0.5, f"scrapes while the broker hangs took up to {max(hung):.3f} s"
    finally:
        server.proc.signal(signal.SIGCONT)
    exporter.wait_for(
        lambda m: m.get_value("celery_exporter_queue_poll_success") == 1,
        15,
        what="polls to succeed again after SIGCONT",
        contains="poll",
    )

    # 2. Redis goes away entirely (connection refused).
    assert server.stop() == 0
    rig.procs.remove(server.proc)
    old_proc = server.proc
    m = exporter.wait_for(
        lambda m: m.get_value("celery_exporter_queue_poll_success") == 0,
        15,
        what="poll_success 0 with Redis down",
        contains="poll",
    )
    assert lengths(m, ["qa"]) == {"qa": 5.0}
    down_success = m.get_value("celery_exporter_queue_poll_last_success_timestamp_seconds")
    down = scrape_times(exporter, 20)
    assert max(down) < 0.5, f"scrapes with the broker down took up to {max(down):.3f} s"
    assert exporter.get("/-/healthy")[0] == 200

    # 3. Back (empty: no persistence), with 2 new messages: the poller recovers by itself.
    server.start()
    rig.procs.extend([server.proc, old_proc])
    app = producer(rig)
    try:
        publish(app, "qa", 2)
    finally:
        app.close()
    m = wait_lengths(exporter, {"qa": 2.0}, timeout=30)
    assert m.get_value("celery_exporter_queue_poll_success") == 1
    assert m.get_value("celery_exporter_queue_poll_last_success_timestamp_seconds") > down_success
    assert "polling queue lengths works again" in exporter.proc.log_text()


def test_queues_are_discovered_from_task_sent_and_inspect(make_rig):
    """No -Q: the queue of a task-sent event, and the queues a worker reports consuming."""
    rig = make_rig("redis")
    exporter = rig.start_exporter("--queue-poll-interval", "0.5s", "--inspect-interval", "1s")
    rig.start_worker(queues=("celery", "idle"), exporter=exporter)
    rig.prime(exporter)  # it.prime through "celery" with task-sent
    m = exporter.wait_for(
        lambda m: (
            lengths(m, ["celery", "idle"]) == {"celery": 0.0, "idle": 0.0}
            and m.get_value("celery_queue_active_workers", queue_name="idle") == 1
        ),
        20,
        what="celery and idle polled",
        contains="queue",
    )
    assert m.get_value("celery_queue_active_processes", queue_name="idle") == 1
    assert "unknown" not in m.label_values("celery_queue_length", "queue_name")


def test_sentinel_events_and_queue_lengths(make_rig, tmp_path):
    """Through Redis Sentinel: the master is found by name for both the events and the poller."""
    master = RedisServer(tmp_path)
    master.start()
    sentinel = RedisSentinel(tmp_path, master)
    sentinel.start()
    rig = make_rig(sentinel.url)
    rig.procs.extend([master.proc, sentinel.proc])
    rig.transport_options = {"master_name": RedisSentinel.MASTER}
    exporter = rig.start_exporter(
        "--transport-option", f"master_name={RedisSentinel.MASTER}", "-Q", "held", "--no-inspect", *POLL
    )
    worker = rig.start_worker(exporter=exporter)  # heartbeats arrive through the sentinel's master
    rig.prime(exporter)
    for i in range(4):
        rig.send("it.succeed", [i], queue="held", priority=3 * (i % 4))  # nobody consumes "held"
    m = wait_lengths(exporter, {"held": 4.0, "celery": 0.0})
    assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1
    assert m.get_value("celery_task_succeeded_total", name="it.prime", queue_name="celery") == 1
    assert m.get_value("celery_task_sent_total", name="it.succeed", queue_name="held") == 4
    assert "sentinel://" in exporter.get("/")[2]


def test_tls_redis_events_and_queue_lengths(make_rig, tmp_path):
    """rediss:// with the CA given through --broker-ssl-option: events and polling both verify
    the server's certificate. With the wrong CA the exporter says it is not connected."""
    server = TlsRedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    use_ssl = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(server.ca)}
    exporter = rig.start_exporter(
        "--broker-ssl-option",
        "ssl_cert_reqs=required",
        "--broker-ssl-option",
        f"ssl_ca_certs={server.ca}",
        "-Q",
        "held",
        "--no-inspect",
        *POLL,
    )
    worker = rig.start_worker(exporter=exporter, env={"IT_BROKER_USE_SSL": json.dumps(use_ssl)})
    rig.producer.conf.broker_use_ssl = use_ssl
    rig.prime(exporter)
    for i in range(3):
        rig.send("it.succeed", [i], queue="held")
    m = wait_lengths(exporter, {"held": 3.0, "celery": 0.0})
    assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1
    assert m.get_value("celery_task_succeeded_total", name="it.prime", queue_name="celery") == 1

    # The server certificate itself is not a CA: verification fails, and the exporter says so.
    wrong = rig.start_exporter(
        "--broker-ssl-option",
        "ssl_cert_reqs=required",
        "--broker-ssl-option",
        f"ssl_ca_certs={server.cert}",
        "-Q",
        "held",
        "--no-inspect",
        *POLL,
        wait_ready=False,
    )
    m = wrong.wait_for(
        lambda m: (m.get_value("celery_exporter_queue_poll_errors_total", reason="broker") or 0) >= 1,
        15,
        what="the poll to fail certificate verification",
        contains="celery_exporter",
    )
    assert m.get_value("celery_exporter_broker_connected") == 0
    assert wrong.get("/-/ready")[0] == 503
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.proc.log_text()
