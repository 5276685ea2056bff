"""The contract of every event reader (celery_exporter/streams.py, EventStream): fed the same
broker stream, each reader a broker offers hands out the same decoded events, and refuses
the same messages as undecodable, as what was published.

The stream, published on the real Redis and the real RabbitMQ through one channel (so in one
order) by Celery's own EventDispatcher and kombu's Producer: single events, `task.multi`
batches (the dispatcher's buffered task group), compressed messages (zlib, bzip2, lzma; a
batch too), a body that is not JSON, a pickled event (refused unless --accept-content has
pickle), a content type no serializer knows, and a body whose compression is corrupt. Each
reader is forced by the function the exporter chooses with (readers.open_stream), on a
connection of its own, all of them subscribed at once."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Tuple

import pytest
from celery import Celery
from kombu import Connection, Producer
from kombu.transport.redis import SentinelChannel

from celery_exporter import readers
from celery_exporter.streams import EventStream, ReaderUnavailable, UndecodableMessage

from .rig import BROKERS, RedisSentinel, RedisServer, Rig, wait_for

pytestmark = pytest.mark.integration

EXCHANGE = "celeryev"
READERS = {"redis": ("redis-hiredis", "redis-py", "kombu"), "rabbitmq": ("amqp-frames", "py-amqp", "kombu")}
UNDECODABLE = "undecodable"
PROBE = "probe-ready"  # the type of the events that show every reader is subscribed


class Recording(Producer):
    """kombu's Producer, noting what each publish should come out as at a reader: the
    body (through JSON, as every reader decodes it) or UNDECODABLE."""

    def __init__(self, *args: Any, published: List[Any], expect: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.published = published
        self.expect = expect  # None: the body itself

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        self.published.append(json.loads(json.dumps(body)) if self.expect is None else self.expect)
        return super().publish(body, *args, **kwargs)


def open_readers(url: str, names: Tuple[str, ...], accept: Tuple[str, ...], options: Dict[str, Any]):
    """{name: (connection, stream)}, each stream open (subscribed, consuming)."""
    opened: Dict[str, Tuple[Connection, EventStream]] = {}
    try:
        for name in names:
            connection = Connection(url, transport_options=dict(options), connect_timeout=5)
            connection.connect()
            opened[name] = (connection, readers.open_stream(connection, name, EXCHANGE, accept))
            assert opened[name][1].name == name
            assert opened[name][1].open(10.0) == []
    except BaseException:
        close_readers(opened)
        raise
    return opened


def close_readers(opened: Dict[str, Tuple[Connection, EventStream]]) -> None:
    for connection, stream in opened.values():
        stream.close()
        connection.release()


def decoded(stream: EventStream, payloads: List[Any]) -> List[Any]:
    out = []
    for payload in payloads:
        try:
            out.append(stream.decode(payload))
        except UndecodableMessage:
            out.append(UNDECODABLE)
    return out


def wait_until_subscribed(app: Celery, opened: Dict[str, Tuple[Connection, EventStream]]) -> None:
    """Publish probes until every reader has read one (a subscription the broker has not
    set up yet would miss the start of the stream), then drain the readers."""
    seen = set()

    def all_heard() -> bool:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(PROBE)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and len(seen) < len(opened):
            for name, (_, stream) in opened.items():
                if any(isinstance(e, dict) and e.get("type") == PROBE for e in decoded(stream, stream.read_many(0.05))):
                    seen.add(name)
        return len(seen) == len(opened)

    wait_for(all_heard, 20, what="every reader to read a probe", describe=lambda: f"read by {sorted(seen)}")
    for _, stream in opened.values():
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            stream.read_many(0.05)


def publish_the_stream(app: Celery, connection: Connection, accept: Tuple[str, ...]) -> List[Any]:
    """The contract's stream, through one channel; what each message should decode to."""
    published: List[Any] = []
    channel = connection.channel()

    dispatcher = app.events.Dispatcher(channel=channel, buffer_group=["task"], buffer_limit=3)

    def producer(**kwargs: Any) -> Recording:
        # the event exchange as Celery declares it (a fanout exchange on Redis, topic on AMQP)
        return Recording(channel, exchange=dispatcher.exchange, published=published, **kwargs)

    dispatcher.producer = producer(serializer="json")
    # single events, and task events that the dispatcher batches in `task.multi` lists
    dispatcher.send("worker-online", freq=2.0, active=0, processed=0, sw_ident="py-celery")
    for i in range(3):  # the third one fills the buffer: a batch of 3
        dispatcher.send("task-received", uuid=f"u{i}", name="t.add", args="(1, 2)", kwargs="{}", retries=0)
    dispatcher.send("worker-heartbeat", freq=2.0, active=1, processed=3, loadavg=[0.1, 0.2, 0.3])
    dispatcher.send("task-started", uuid="u0")
    dispatcher.send("task-succeeded", uuid="u0", result="3", runtime=0.25)
    dispatcher.flush()  # a batch of 2
    # compressed, through a dispatcher's publish and as a batch (a dispatcher of their own: the
    # compressing producer writes the compression header into the dispatcher's headers)
    compressing = app.events.Dispatcher(channel=channel)
    for compression in ("zlib", "bzip2", "lzma"):
        compressing.publish(
            "task-failed", {"uuid": "u1", "exception": "ValueError('é')"}, producer(compression=compression)
        )
    batch = [{"type": "task-started", "uuid": "u2", "hostname": "w@h"}, {"type": "task-retried", "uuid": "u2"}]
    producer(compression="zlib").publish(batch, routing_key="task.multi", serializer="json")
    # messages that hold no event for --accept-content json
    bad = producer(expect=UNDECODABLE)
    bad.publish(b"{not json", routing_key="task.multi", content_type="application/json", content_encoding="utf-8")
    bad.publish(b"type: x", routing_key="task.sent", content_type="application/x-unknown", content_encoding="utf-8")
    bad.publish(
        b"not zlib at all",
        routing_key="task.started",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"compression": "application/x-gzip"},
    )
    pickled = producer(expect=None if "pickle" in accept else UNDECODABLE)
    pickled.publish(
        {"type": "worker-heartbeat", "freq": 2.0, "hostname": "w@h"},
        routing_key="worker.heartbeat",
        serializer="pickle",
    )
    # and a last good one after the bad ones
    dispatcher.send("worker-offline", freq=2.0, active=0, processed=3)
    dispatcher.close()
    compressing.close()
    return published


@pytest.mark.parametrize("accept", [("json",), ("json", "pickle")], ids=["json", "json+pickle"])
@pytest.mark.parametrize("kind", BROKERS)
def test_every_reader_decodes_the_same_stream(make_rig, kind: str, accept: Tuple[str, ...]):
    rig: Rig = make_rig(kind)
    names = READERS[kind]
    opened = open_readers(rig.broker_url, names, accept, {})
    app = Celery(f"it-readers-{rig.id}", broker=rig.broker_url, set_as_current=False)
    app.conf.event_serializer = "json"
    try:
        wait_until_subscribed(app, opened)
        with Connection(rig.broker_url) as publisher:
            expected = publish_the_stream(app, publisher, accept)
        assert len(expected) == 13 and expected.count(UNDECODABLE) == (4 if accept == ("json",) else 3)
        assert [len(e) for e in expected if isinstance(e, list)] == [3, 2, 2]

        got: Dict[str, List[Any]] = {}
        for name, (_, stream) in opened.items():
            payloads: List[Any] = []
            wait_for(
                lambda stream=stream, payloads=payloads: payloads.extend(stream.read_many(0.2)) or len(payloads) >= 13,
                20,
                what=f"{name} to read the stream",
                describe=lambda payloads=payloads: f"{len(payloads)} read",
            )
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # and nothing more: no message read twice
                payloads.extend(stream.read_many(0.1))
            got[name] = decoded(stream, payloads)
        undecodable = expected.count(UNDECODABLE)
        assert {name: got[name].count(UNDECODABLE) for name in names} == dict.fromkeys(names, undecodable)
        for name in names:
            assert got[name] == expected, name
    finally:
        app.close()
        close_readers(opened)


def test_a_forced_reader_that_cannot_serve_the_broker_is_refused(make_rig):
    rig: Rig = make_rig("rabbitmq")
    connection = Connection(rig.broker_url, connect_timeout=5)
    try:
        connection.connect()
        for name in READERS["redis"][:2]:
            with pytest.raises(ReaderUnavailable, match=name):
                readers.open_stream(connection, name, EXCHANGE, ("json",))
    finally:
        connection.release()


@pytest.mark.skipif(
    not hasattr(SentinelChannel, "_fanout_compat_active"), reason="sentinel_fanout_compat is new in kombu 5.7"
)
def test_sentinel_fanout_compat_is_read_by_kombus_consumer_once(make_rig, tmp_path):
    """With kombu 5.7's sentinel_fanout_compat every fanout message is published on two
    topics and only kombu's consumer drops the copy: `auto` takes it, each event comes once,
    and a lean Redis reader, forced, refuses to read (it would count everything twice)."""
    master = RedisServer(tmp_path)
    master.start()
    sentinel = RedisSentinel(tmp_path, master)
    sentinel.start()
    rig: Rig = make_rig(sentinel.url)
    rig.procs.extend([master.proc, sentinel.proc])
    options = {"master_name": RedisSentinel.MASTER, "sentinel_fanout_compat": True}
    opened = open_readers(rig.broker_url, ("kombu",), ("json",), options)
    connection = Connection(rig.broker_url, transport_options=options, connect_timeout=5)
    app = Celery(f"it-readers-{rig.id}", broker=rig.broker_url, set_as_current=False)
    app.conf.broker_transport_options = options
    try:
        connection.connect()
        auto = readers.open_stream(connection, "auto", EXCHANGE, ("json",))
        try:
            assert auto.name == "kombu"
        finally:
            auto.close()
        for name in READERS["redis"][:2]:
            with pytest.raises(ReaderUnavailable, match="sentinel_fanout_compat"):
                readers.open_stream(connection, name, EXCHANGE, ("json",))
        wait_until_subscribed(app, opened)
        with app.events.default_dispatcher() as dispatcher:
            for i in range(5):
                dispatcher.send("worker-heartbeat", freq=2.0, active=i)
        stream = opened["kombu"][1]
        payloads: List[Any] = []
        wait_for(lambda: payloads.extend(stream.read_many(0.2)) or len(payloads) >= 5, 20, what="5 heartbeats")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            payloads.extend(stream.read_many(0.1))
        assert [e["active"] for e in decoded(stream, payloads)] == [0, 1, 2, 3, 4]
    finally:
        app.close()
        connection.release()
        close_readers(opened)


# sitecustomize runs at the exporter's start: the py-amqp internals the frame reader reads are gone
NO_FRAME_READER = (
    "import celery_exporter.internals as internals\n\n\n"
    "def renamed(amqp_connection):\n"
    "    raise AttributeError(\"'TCPTransport' has no attribute '_quick_recv' (hidden by the test)\")\n\n\n"
    "internals.amqp_reader = renamed\n"
)


def test_a_forced_reader_that_breaks_at_run_time_is_retried_never_replaced(make_rig, tmp_path):
    """--event-reader amqp-frames on a py-amqp without what the frame reader reads: where
    auto falls back to py-amqp's dispatch (test_task_events), the forced reader says why,
    stays not ready and reconnects with backoff, with the same reader. It is no broker
    outage: logged once as an error naming the reader, not counted as a reconnect."""
    rig: Rig = make_rig("rabbitmq")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_FRAME_READER)
    exporter = rig.start_exporter("--event-reader", "amqp-frames", env={"PYTHONPATH": str(shim)}, wait_ready=False)
    refusal = "--event-reader amqp-frames cannot read on this connection (AttributeError: 'TCPTransport'"
    wait_for(
        lambda: exporter.proc.log_text().count(refusal) >= 2,  # the warning, then a retry (logged at debug)
        20,
        what="the exporter to refuse the reader twice",
        describe=lambda: exporter.proc.log_text(4000),
    )
    log = exporter.proc.log_text()
    assert "ERROR" in log.split(refusal)[0].splitlines()[-1]  # the first time as an error, then at debug
    assert "unavailable" not in log
    assert "reader: py-amqp" not in log and "receiving events" not in log
    assert exporter.get("/-/ready")[0] == 503
    m = exporter.metrics()
    assert m.get_value("celery_exporter_broker_connected") == 0
    assert m.get_value("celery_exporter_broker_reconnects_total") == 0
    assert not m.select("celery_exporter_event_reader_info")
