"""Choosing the event reader (readers.py), kombu's consumer and py-amqp's dispatch as
EventStreams (kombu_events.py, amqp_events.PyAmqpStream), and the receiver's one loop over
any of them. kombu's consumer runs on kombu's in-memory transport here; every reader
against the real brokers is tests/integration/test_readers.py."""

from __future__ import annotations

import json
import socket
import threading
import uuid
import zlib

import pytest
from amqp.basic_message import Message as AmqpMessage
from kombu import Connection, Exchange, Producer

from celery_exporter import amqp_events, internals, readers, redis_events
from celery_exporter.kombu_events import DrainedStream, decode_message
from celery_exporter.receiver import TICK_INTERVAL, Receiver
from celery_exporter.streams import AUTO, CHOICES, ReaderUnavailable, UndecodableMessage

from .conftest import heartbeat, received
from .test_redis_events import FakeConnection, FakePubSub

# -- refusal at start ---------------------------------------------------------------------

LEAN = ("redis-hiredis", "redis-py", "amqp-frames", "py-amqp")


@pytest.mark.parametrize(
    "url, serves",
    [
        ("redis://h:6379/0", {"redis-hiredis", "redis-py"}),
        ("rediss://h:6379/0", {"redis-hiredis", "redis-py"}),
        ("sentinel://h:26379/0;sentinel://g:26379/0", {"redis-hiredis", "redis-py"}),
        ("amqp://u:p@h//", {"amqp-frames", "py-amqp"}),
        ("amqps://h//", {"amqp-frames", "py-amqp"}),
        ("pyamqp://h//", {"amqp-frames", "py-amqp"}),
        ("memory://", set()),
        ("redis://h:6379/0;amqp://h//", set()),  # (no lean reader reads both)
    ],
)
def test_a_forced_reader_must_serve_every_broker_url(url, serves):
    assert readers.refusal(AUTO, url, {}) is None and readers.refusal("kombu", url, {}) is None
    for reader in LEAN:
        reason = readers.refusal(reader, url, {})
        assert (reason is None) == (reader in serves), (reader, reason)
        if reason is not None:
            assert reason.startswith(reader) and "p@h" not in reason


def test_lean_redis_readers_are_refused_with_sentinel_fanout_compat_and_hiredis_when_missing(monkeypatch):
    compat = {"master_name": "m", "sentinel_fanout_compat": True}
    for reader in ("redis-hiredis", "redis-py"):
        assert "sentinel_fanout_compat" in readers.refusal(reader, "sentinel://h:26379/0", compat)
        assert readers.refusal(reader, "sentinel://h:26379/0", {**compat, "sentinel_fanout_compat": False}) is None
    assert readers.refusal("kombu", "sentinel://h:26379/0", compat) is None
    monkeypatch.setattr(redis_events, "_hiredis", None)
    assert "hiredis" in readers.refusal("redis-hiredis", "redis://h/0", {})
    assert readers.refusal("redis-py", "redis://h/0", {}) is None
    assert "not one of" in readers.refusal("fastest", "redis://h/0", {})
    assert set(CHOICES) == {"auto", "kombu", *LEAN}


# -- a forced reader never falls back -----------------------------------------------------


def test_a_forced_redis_reader_raises_where_auto_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(redis_events, "_hiredis", None)
    monkeypatch.setattr(internals, "_WARNED", set())
    with pytest.raises(ReaderUnavailable, match="redis-hiredis cannot read on this connection .ImportError"):
        redis_events.open_stream(FakeConnection(FakePubSub()), "celeryev", reader="redis-hiredis")
    assert caplog.text == ""  # no fallback was taken, so none is logged
    assert redis_events.open_stream(FakeConnection(FakePubSub()), "celeryev", reader="redis-py").name == "redis-py"

    class Renamed:  # kombu's Redis channel without its topic layout
        subclient = FakePubSub()

    connection = FakeConnection(FakePubSub())
    connection.default_channel = Renamed()
    with pytest.raises(ReaderUnavailable, match="redis-py cannot read on this connection .AttributeError"):
        redis_events.open_stream(connection, "celeryev", reader="redis-py")
    assert redis_events.open_stream(connection, "celeryev", reader=AUTO) is None  # auto: kombu's consumer


# -- kombu's consumer -----------------------------------------------------------------------


@pytest.fixture
def memory():
    """A connection to kombu's in-memory transport, an event exchange of the test's own
    (the transport's state is shared by the whole process) and a producer on it."""
    connection = Connection("memory://")
    connection.connect()
    exchange = f"celeryev-{uuid.uuid4().hex[:8]}"
    producer = Producer(connection.channel(), exchange=Exchange(exchange, type="topic"))
    yield connection, exchange, producer
    connection.release()


def read_all(stream, n, tries=50):
    out = []
    for _ in range(tries):
        if len(out) >= n:
            break
        out.extend(stream.read_many(0.01))
    return out


def decoded(stream, payloads):
    out = []
    for payload in payloads:
        try:
            out.append(stream.decode(payload))
        except UndecodableMessage as exc:
            out.append(f"undecodable: {exc}")
    return out


def test_kombus_consumer_is_an_event_stream(memory):
    connection, exchange, producer = memory
    stream = readers.open_stream(connection, "kombu", exchange, ("json",))
    assert stream.name == "kombu" and stream.open(10.0) == []
    batch = [received("u1"), heartbeat()]
    producer.publish(batch, routing_key="task.multi", serializer="json")
    producer.publish(heartbeat(), routing_key="worker.heartbeat", serializer="json", compression="zlib")
    producer.publish(b"{no", routing_key="task.multi", content_type="application/json", content_encoding="utf-8")
    producer.publish(heartbeat(), routing_key="worker.heartbeat", serializer="pickle")
    producer.publish(
        b"not zlib",
        routing_key="x",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"compression": "application/x-gzip"},
    )
    got = decoded(stream, read_all(stream, 5))
    assert got[:2] == [batch, heartbeat()]
    assert [g.split(":")[:2] for g in got[2:]] == [
        ["undecodable", " DecodeError"],  # (kombu wraps the JSON error)
        ["undecodable", " ContentDisallowed"],
        ["undecodable", " error"],  # zlib.error, where kombu would have raised out of drain_events
    ]
    assert stream.read_many(0.01) == []
    assert stream.check() is None  # the memory transport counts nothing: heard while up
    stream.close()


def test_kombu_is_what_auto_takes_on_other_transports(memory):
    connection, exchange, _ = memory
    assert readers.open_stream(connection, AUTO, exchange, ("json",)).name == "kombu"
    for reader in LEAN:
        with pytest.raises(
            ReaderUnavailable, match=f"{reader} cannot read on this connection .the broker's transport is memory."
        ):
            readers.open_stream(connection, reader, exchange, ("json",))


class FakeDrainConnection:
    """What DrainedStream uses of a kombu Connection: drain_events (delivering the
    prepared messages to `deliver`, then raising the prepared error), heartbeat_check and
    the transport's connection."""

    def __init__(self):
        self.deliver = None
        self.rounds = []  # per drain: (messages, error or None)
        self.heartbeat_checks = 0
        self.connection = type("AmqpConnection", (), {"bytes_recv": 7})()

    def drain_events(self, timeout):
        messages, error = self.rounds.pop(0) if self.rounds else ([], socket.timeout())
        for message in messages:
            self.deliver(message)
        if error is not None:
            raise error

    def heartbeat_check(self):
        self.heartbeat_checks += 1


def test_a_drained_stream_keeps_what_came_before_an_error():
    connection = FakeDrainConnection()
    stream = DrainedStream(connection)
    connection.deliver = stream.batch.append
    connection.rounds = [(["a", "b"], None), ([], None), (["c"], ConnectionResetError("gone")), ([], OSError("x"))]
    assert stream.read_many(0.5) == ["a", "b"]
    assert stream.read_many(0.5) == []
    assert stream.read_many(0.5) == ["c"]  # the message before the error is handled...
    with pytest.raises(ConnectionResetError):
        stream.read_many(0.5)  # ...and the error raised next
    with pytest.raises(OSError):
        stream.read_many(0.5)  # an error with nothing before it: at once
    assert stream.read_many(0.5) == []  # a timeout: nothing came
    assert stream.check() == 7 and connection.heartbeat_checks == 1


def test_decode_message_refuses_what_kombu_cannot_decode():
    class Broken:
        def decode(self):
            raise ValueError("x" * 500)

    with pytest.raises(UndecodableMessage) as raised:
        decode_message(Broken())
    assert str(raised.value) == "ValueError: " + "x" * 200
    marker = UndecodableMessage("BadCompression: y")
    with pytest.raises(UndecodableMessage) as raised:
        decode_message(marker)
    assert raised.value is marker


# -- py-amqp's dispatch ---------------------------------------------------------------------


class FakeAmqpChannel:
    channel_id = 1

    def __init__(self):
        self.callback = None

    def basic_consume(self, queue, no_ack, callback):
        assert queue == FakeQueue.name and no_ack
        self.callback = callback
        return "ctag-1"


class FakeQueue:
    """The exporter's event queue (readers.event_queue), as far as py-amqp's dispatch uses it."""

    name = "celeryev.exporter.test"

    def __init__(self):
        self.bound_to = None
        self.declared = False

    def __call__(self, channel):
        self.bound_to = channel
        return self

    def declare(self):
        self.declared = True


class FakeKombuAmqp(FakeDrainConnection):
    def __init__(self):
        super().__init__()
        self.amqp_channel = FakeAmqpChannel()

    def channel(self):
        return self.amqp_channel


def test_py_amqps_dispatch_hands_out_deliveries(monkeypatch, caplog):
    connection = FakeKombuAmqp()
    queue = FakeQueue()
    monkeypatch.setattr(internals, "_WARNED", set())
    stream = amqp_events.open_stream(connection, queue, frozenset({"application/json"}))
    # the fake has no py-amqp socket to read: auto falls back to py-amqp's dispatch, once logged
    assert stream.name == "py-amqp" and "py-amqp reads the events" in caplog.text
    assert queue.bound_to is connection.amqp_channel and queue.declared
    body = json.dumps([received("u1")]).encode()
    connection.deliver = connection.amqp_channel.callback
    connection.rounds = [
        (
            [
                AmqpMessage(body, content_type="application/json", content_encoding="utf-8"),
                AmqpMessage(zlib.compress(body), application_headers={"compression": "application/x-gzip"}),
            ],
            None,
        )
    ]
    payloads = stream.read_many(0.5)
    assert payloads[0] == ("application/json", "utf-8", {}, body)
    assert [stream.decode(p) for p in payloads] == [[received("u1")], [received("u1")]]
    # forced: the frame reader raises instead of falling back; py-amqp's dispatch is taken as asked
    with pytest.raises(ReaderUnavailable, match="amqp-frames cannot read on this connection"):
        amqp_events.open_stream(FakeKombuAmqp(), queue, frozenset({"application/json"}), "amqp-frames")
    assert amqp_events.open_stream(FakeKombuAmqp(), queue, frozenset(), "py-amqp").name == "py-amqp"


# -- the receiver's one loop --------------------------------------------------------------


class ScriptedStream:
    """An EventStream that hands out prepared reads and counts, then asks the receiver to stop."""

    name = "scripted"

    def __init__(self, early, reads, counts, stop_event):
        self.early, self.reads, self.counts, self.stop_event = early, list(reads), list(counts), stop_event
        self.decode = lambda payload: payload
        self.closed = False

    def open(self, timeout):
        return self.early

    def read_many(self, timeout):
        if not self.reads:
            self.stop_event.set()
            return []
        return self.reads.pop(0)

    def gather(self, seconds):
        pass

    def check(self):
        return self.counts.pop(0)

    def close(self):
        self.closed = True


def test_the_loop_handles_what_came_while_opening_then_each_read(rig):
    r = Receiver(rig.settings, rig.handler, rig.store, rig.clock, threading.Event())
    stream = ScriptedStream([received("u1")], [[heartbeat()], [heartbeat(), heartbeat()]], [1] * 9, r.stop_event)
    assert r._consume_stream(stream) and stream.closed
    assert rig.store.exporter.snapshot_locked().reader == "scripted"
    rig.settle()
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1
    assert rig.value("celery_exporter_events_total", type="worker-heartbeat") == 3


def test_the_broker_is_heard_when_the_count_moves_or_when_the_reader_cannot_count(rig):
    r = Receiver(rig.settings, rig.handler, rig.store, rig.clock, threading.Event())
    heard = []
    rig.store.exporter.heard = heard.append
    stream = ScriptedStream([], [], [3, 3, 4, None, None], r.stop_event)
    t0 = rig.clock.now()
    for i in range(1, 6):
        r._tick(t0 + i * TICK_INTERVAL, stream)
        r._tick(t0 + i * TICK_INTERVAL + TICK_INTERVAL / 2, stream)  # between ticks: no check
    assert heard == [t0 + i * TICK_INTERVAL for i in (1, 3, 4, 5)]
