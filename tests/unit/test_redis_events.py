"""Decoding kombu's Redis message envelope in the lean event reader."""

import base64
import json
import pickle
import socket

import pytest

from celery_exporter import internals, redis_events, streams
from celery_exporter.redis_events import decoder
from celery_exporter.streams import UndecodableMessage


def decode(data, accept):
    """One message decoded (a stream makes its decoder once for all its messages)."""
    return decoder(accept)(data)


@pytest.fixture(params=["orjson", "json"])
def json_decoder(request, monkeypatch):
    """Every decoding test runs with orjson and pybase64 (default dependencies) and with the
    standard library alone."""
    if request.param == "orjson":
        assert streams.fast_loads is not None, "orjson is a dependency: it must be installed"
        assert streams.fast_b64decode is not None, "pybase64 is a dependency: it must be installed"
    else:
        monkeypatch.setattr(streams, "fast_loads", None)
        monkeypatch.setattr(streams, "fast_b64decode", None)
    return request.param


def envelope(body, content_type="application/json", encoding="base64"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode() if encoding == "base64" else raw.decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"hostname": "w1@h"},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": "celeryev", "routing_key": "task.multi"},
                "priority": 0,
                "body_encoding": encoding,
                "delivery_tag": "x",
            },
        }
    ).encode()


def test_a_batch_and_a_single_event(json_decoder):
    batch = [{"type": "task-started", "uuid": "u1"}, {"type": "task-succeeded", "uuid": "u1", "runtime": 0.1}]
    assert decode(envelope(batch), ("json",)) == batch
    assert decode(envelope({"type": "worker-heartbeat"}), ("json",)) == {"type": "worker-heartbeat"}
    assert decode(envelope({"type": "x"}, encoding="utf-8"), ("json",)) == {"type": "x"}


def test_other_content_types_follow_accept_content(json_decoder):
    body = pickle.dumps({"type": "worker-heartbeat"})
    with pytest.raises(UndecodableMessage, match="ContentDisallowed"):
        decode(envelope(body, content_type="application/x-python-serialize"), ("json",))
    assert decode(envelope(body, content_type="application/x-python-serialize"), ("json", "pickle")) == {
        "type": "worker-heartbeat"
    }


def test_what_only_the_standard_library_reads_is_read_the_same(json_decoder):
    # kombu's json.dumps writes NaN for such floats and \ud800 for a lone surrogate; orjson
    # refuses both, and the standard library reads them as it always did
    data = envelope(None, encoding="utf-8").replace(b'"null"', b'"[NaN, -Infinity, \\"\\ud800\\", 7]"')
    value = decode(data, ("json",))
    assert value[0] != value[0] and value[1] == float("-inf") and value[2] == "\ud800" and value[3] == 7
    # the one difference: an integer beyond 64 bits (no Celery field) is a float to orjson
    huge = decode(envelope(None, encoding="utf-8").replace(b'"null"', b'"18446744073709551616"'), ("json",))
    assert huge == 2**64 and type(huge) is (float if json_decoder == "orjson" else int)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"no": "body"}',
        b'{"body": "%%%", "properties": {"body_encoding": "base64"}}',
        json.dumps({"body": base64.b64encode(b"{broken").decode(), "properties": {"body_encoding": "base64"}}).encode(),
        json.dumps({"body": "x", "properties": {"body_encoding": "rot13"}}).encode(),
    ],
)
def test_garbage_is_undecodable_not_a_crash(data, json_decoder):
    with pytest.raises(UndecodableMessage):
        decode(data, ("json",))


class FakePubSub:
    """What RedisEventStream uses of redis-py's PubSub: replies are queued by the test."""

    def __init__(self):
        self.replies = []
        self.pings = 0

    def psubscribe(self, *topics):
        self.replies.append([b"psubscribe", topics[0].encode(), 1])

    def ping(self):
        self.pings += 1

    def parse_response(self, block=False, timeout=0.0):
        return self.replies.pop(0) if self.replies else None


class FakeChannel:
    def __init__(self, pubsub):
        self.subclient = pubsub

    def _get_publish_topics(self, exchange, routing_key):
        return [f"/0.{exchange}/{routing_key}"]


class FakeConnection:
    def __init__(self, pubsub):
        self.default_channel = FakeChannel(pubsub)


def test_a_silent_subscription_is_pinged_and_a_dead_one_raises(monkeypatch):
    from celery_exporter import redis_events

    now = [100.0]
    monkeypatch.setattr(redis_events.time, "monotonic", lambda: now[0])
    pubsub = FakePubSub()
    stream = redis_events.RedisEventStream(FakeConnection(pubsub), "celeryev")
    assert stream.read_many(0.5) == [] and stream.subscribed  # the psubscribe confirmation
    now[0] += redis_events.PING_AFTER - 0.1
    assert stream.read_many(0.5) == [] and pubsub.pings == 0
    now[0] += 0.2
    stream.read_many(0.5)
    assert pubsub.pings == 1  # silent for PING_AFTER: pinged once
    pubsub.replies.append([b"pong", b""])
    now[0] += 1.0
    assert stream.read_many(0.5) == []  # the pong counts as a reply
    now[0] += redis_events.PING_AFTER
    stream.read_many(0.5)
    assert pubsub.pings == 2
    now[0] += redis_events.PING_TIMEOUT - 0.1
    assert stream.read_many(0.5) == []  # still waiting for the reply
    pubsub.replies.append([b"pmessage", b"*", b"/0.celeryev/task.multi", b"{}"])
    assert stream.read_many(0.5) == [b"{}"]  # any message is a reply: the ping is settled
    now[0] += redis_events.PING_AFTER
    stream.read_many(0.5)
    assert pubsub.pings == 3
    now[0] += redis_events.PING_TIMEOUT + 0.1
    with pytest.raises(ConnectionError, match="did not answer PING"):
        stream.read_many(0.5)


# -- the socket reader ----------------------------------------------------------------


class FakeRedisConnection:
    """What HiredisEventStream uses of a redis-py Connection: `connect`, `_sock`,
    `send_command` (written to the socket as RESP, as redis-py does) and `disconnect`.
    The test plays the server on the other end of a socket pair."""

    def __init__(self, sock):
        self._sock = None
        self._pending = sock
        self.sent = []

    def connect(self):
        self._sock = self._pending

    def send_command(self, *args, check_health=True):
        assert check_health is False, "redis-py's health check would read a reply itself"
        self.sent.append(args)
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))

    def disconnect(self):
        if isinstance(getattr(self, "_sock", None), socket.socket):
            self._sock.close()


class FakePool:
    def __init__(self, conn):
        self.conn = conn

    def make_connection(self):
        return self.conn


def push(*items, resp3=True):
    """A PUB/SUB reply as the server writes it: a RESP3 push or a RESP2 array."""
    out = [b">%d\r\n" % len(items) if resp3 else b"*%d\r\n" % len(items)]
    for item in items:
        out.append(b":%d\r\n" % item if isinstance(item, int) else b"$%d\r\n%s\r\n" % (len(item), item))
    return b"".join(out)


@pytest.fixture
def socket_stream():
    ours, server = socket.socketpair()
    conn = FakeRedisConnection(ours)
    pubsub = FakePubSub()
    pubsub.connection_pool = FakePool(conn)
    stream = redis_events.HiredisEventStream(FakeConnection(pubsub), "celeryev")
    yield stream, conn, server
    stream.close()
    server.close()


def test_the_socket_reader_subscribes_and_returns_every_message_of_one_read(socket_stream):
    stream, conn, server = socket_stream
    assert conn.sent == [("PSUBSCRIBE", "/0.celeryev/*")]
    assert server.recv(100) == b"*2\r\n$10\r\nPSUBSCRIBE\r\n$13\r\n/0.celeryev/*\r\n"
    server.sendall(
        push(b"psubscribe", b"/0.celeryev/*", 1)
        + push(b"pmessage", b"/0.celeryev/*", b"/0.celeryev/task.multi", b"one")
        + push(b"pmessage", b"/0.celeryev/*", b"/0.celeryev/worker.heartbeat", b"two", resp3=False)
        + push(b"message", b"/0.celeryev/x", b"three")
    )
    assert stream.open(1.0) == [b"one", b"two", b"three"]
    assert stream.subscribed and stream.replies == 4
    # a message split across reads comes out whole, once
    whole = push(b"pmessage", b"/0.celeryev/*", b"/0.celeryev/task.multi", b"x" * 1000)
    server.sendall(whole[:500])
    assert stream.read_many(0.2) == []
    server.sendall(whole[500:])
    assert stream.read_many(0.2) == [b"x" * 1000]
    assert stream.read_many(0.01) == []  # nothing came: an empty read after the timeout


def test_the_socket_reader_counts_the_bytes_of_its_last_read(socket_stream):
    stream, conn, server = socket_stream
    server.recv(100)
    confirmation = push(b"psubscribe", b"/0.celeryev/*", 1)
    server.sendall(confirmation)
    stream.open(1.0)
    assert stream.last_read == len(confirmation)
    stream.gather(10.0)  # a socket pair: no pause (see test_streams)


def test_the_socket_reader_pings_a_quiet_connection(socket_stream, monkeypatch):
    stream, conn, server = socket_stream
    now = [100.0]
    monkeypatch.setattr(redis_events.time, "monotonic", lambda: now[0])
    stream._last_reply = now[0]
    server.sendall(push(b"psubscribe", b"/0.celeryev/*", 1))
    assert stream.read_many(0.5) == [] and stream.subscribed
    now[0] += redis_events.PING_AFTER
    assert stream.read_many(0.01) == []
    assert conn.sent[-1] == ("PING",)
    server.sendall(b"+PONG\r\n")  # RESP3: a plain reply, even while subscribed
    assert stream.read_many(0.5) == [] and stream._ping_sent is None and stream.replies == 2


@pytest.mark.parametrize(
    "server_says, error",
    [
        (None, "closed the connection"),
        (b"-NOPERM this user has no permissions to access one of the channels\r\n", "NOPERM"),
        (b"%%% not RESP\r\n", "unreadable reply"),
    ],
)
def test_the_socket_reader_raises_connection_errors(socket_stream, server_says, error):
    stream, _, server = socket_stream
    server.recv(100)  # the PSUBSCRIBE
    if server_says is None:
        server.close()
    else:
        server.sendall(server_says)
    with pytest.raises(Exception, match=error) as raised:
        stream.read_many(1.0)
    # the receiver treats it as a broker outage: reconnect with backoff
    assert isinstance(raised.value, ConnectionError)


def test_the_reader_falls_back_to_redis_pys_pubsub(monkeypatch, caplog):
    pubsub = FakePubSub()
    # no hiredis
    monkeypatch.setattr(redis_events, "_hiredis", None)
    monkeypatch.setattr(internals, "_WARNED", set())
    stream = redis_events.open_stream(FakeConnection(pubsub), "celeryev")
    assert stream.name == "redis-py" and isinstance(stream, redis_events.RedisEventStream)
    assert stream.open(1.0) == [] and stream.subscribed
    pubsub.replies.append([b"pmessage", b"*", b"/0.celeryev/task.multi", b"data"])
    assert stream.read_many(0.1) == [b"data"]
    assert "hiredis is not installed" in caplog.text and "kombu" in caplog.text


@pytest.mark.parametrize("missing", ["make_connection", "_sock", "socket type"])
def test_a_changed_redis_py_falls_back_too(monkeypatch, caplog, missing):
    """Each internal the socket reader needs, removed in turn: redis-py's PubSub reads."""
    ours, server = socket.socketpair()
    conn = FakeRedisConnection(ours)
    if missing == "socket type":
        conn._pending = object()
    pubsub = FakePubSub()
    if missing != "make_connection":
        pubsub.connection_pool = FakePool(conn)
    if missing == "_sock":
        conn.connect = lambda: None
        del conn._sock
    monkeypatch.setattr(internals, "_WARNED", set())
    stream = redis_events.open_stream(FakeConnection(pubsub), "celeryev")
    assert stream.name == "redis-py" and stream.open(1.0) == []
    pubsub.replies.append([b"pmessage", b"*", b"/0.celeryev/task.multi", b"data"])
    assert stream.read_many(0.1) == [b"data"]
    assert caplog.text.count("reading Redis events through redis-py's PubSub") == 1
    ours.close()
    server.close()


class FakeChannel53(FakeChannel):
    """kombu 5.3's Redis Channel: one topic per fanout message, no _get_publish_topics."""

    _get_publish_topics = None  # (shadowed: getattr finds None, as on kombu 5.3)

    def _get_publish_topic(self, exchange, routing_key):
        return f"/0.{exchange}/{routing_key}"


def test_kombu_53_topics_and_the_global_key_prefix():
    ours, server = socket.socketpair()
    conn = FakeRedisConnection(ours)
    pubsub = FakePubSub()
    pubsub.connection_pool = FakePool(conn)
    pubsub.global_keyprefix = "acme:"  # kombu's PrefixedRedisPubSub carries it
    connection = FakeConnection(pubsub)
    connection.default_channel = FakeChannel53(pubsub)
    stream = redis_events.HiredisEventStream(connection, "celeryev")
    try:
        assert stream.topics == ["/0.celeryev/*"]
        assert conn.sent == [("PSUBSCRIBE", "acme:/0.celeryev/*")]  # as kombu's consumer subscribes
    finally:
        stream.close()
        server.close()
    # the redis-py reader leaves the prefix to kombu's PubSub, which adds it itself
    fallback = redis_events.RedisEventStream(connection, "celeryev")
    assert fallback.topics == ["/0.celeryev/*"] and pubsub.replies[-1][1] == b"/0.celeryev/*"


def test_a_kombu_without_the_channel_internals_falls_back_to_kombus_consumer(monkeypatch, caplog):
    """kombu's Redis Channel without its topic layout (as a release that renamed it would
    be): neither reader can subscribe, open_stream says so, and the receiver then consumes
    with kombu's own consumer (and says so in the log and celery_exporter_event_reader_info)."""

    class Renamed(FakeChannel):
        _get_publish_topics = None  # (getattr finds None) and no _get_publish_topic either

    pubsub = FakePubSub()
    connection = FakeConnection(pubsub)
    connection.default_channel = Renamed(pubsub)
    monkeypatch.setattr(internals, "_WARNED", set())
    assert redis_events.open_stream(connection, "celeryev") is None
    assert "through kombu's consumer" in caplog.text and "kombu 5." in caplog.text


class CompatChannel:
    """kombu 5.7.0's Redis channel: `_fanout_compat_active` is a property."""

    def __init__(self, active):
        self.active = active

    @property
    def _fanout_compat_active(self):
        return self.active


class CompatChannelWithMethod:
    def __init__(self, active):
        self.active = active

    def _fanout_compat_active(self):
        return self.active


@pytest.mark.parametrize("kind", [CompatChannel, CompatChannelWithMethod])
@pytest.mark.parametrize("active", [True, False])
def test_sentinel_fanout_compat_is_read_as_kombu_has_it(kind, active):
    """With sentinel_fanout_compat active kombu publishes every event on two topics, and the
    lean readers (which subscribe to both) would count each twice: they must see it on."""
    assert internals.fanout_compat_active(kind(active)) is active
    assert internals.fanout_compat_active(object()) is False  # a kombu without it: off


@pytest.mark.parametrize(
    "data",
    [
        envelope(b"not json", content_type=""),  # no content type: kombu reads JSON, and refuses this
        envelope(b"a: 1", content_type="application/x-yaml").replace(
            b'"content-encoding": "utf-8"', b'"content-encoding": 7'
        ),
        envelope(b"a: [1", content_type="application/x-yaml"),
        json.dumps({"body": 5, "content-type": "application/json", "properties": {}}).encode(),
        json.dumps({"body": "!!", "properties": {"body_encoding": "base64"}}).encode(),
        envelope(b"\x80\x04garbage", content_type="application/x-python-serialize"),
    ],
)
def test_a_foreign_message_is_undecodable_never_an_error_of_another_kind(data):
    """The event thread takes any other error for a broken connection: it reconnects and loses
    the rest of the read. Whatever a message holds, decoding it fails only as undecodable."""
    for accept in (("json",), ("json", "pickle", "yaml")):
        with pytest.raises(UndecodableMessage):
            decode(data, accept)
