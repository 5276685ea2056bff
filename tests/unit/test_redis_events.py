"""Decoding kombu's Redis message envelope in the lean event reader."""

import base64
import json
import pickle

import pytest

from celery_exporter import redis_events
from celery_exporter.redis_events import UndecodableMessage, decode


@pytest.fixture(params=["orjson", "json"])
def json_decoder(request, monkeypatch):
    """Every decoding test runs with orjson (a default dependency) and without it."""
    if request.param == "orjson":
        assert redis_events.fast_loads is not None, "orjson is a dependency: it must be installed"
    else:
        monkeypatch.setattr(redis_events, "fast_loads", None)
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
    assert stream.read(0.5) is None and stream.subscribed  # the psubscribe confirmation
    now[0] += redis_events.PING_AFTER - 0.1
    assert stream.read(0.5) is None and pubsub.pings == 0
    now[0] += 0.2
    stream.read(0.5)
    assert pubsub.pings == 1  # silent for PING_AFTER: pinged once
    pubsub.replies.append([b"pong", b""])
    now[0] += 1.0
    assert stream.read(0.5) is None  # the pong counts as a reply
    now[0] += redis_events.PING_AFTER
    stream.read(0.5)
    assert pubsub.pings == 2
    now[0] += redis_events.PING_TIMEOUT - 0.1
    assert stream.read(0.5) is None  # still waiting for the reply
    pubsub.replies.append([b"pmessage", b"*", b"/0.celeryev/task.multi", b"{}"])
    assert stream.read(0.5) == b"{}"  # any message is a reply: the ping is settled
    now[0] += redis_events.PING_AFTER
    stream.read(0.5)
    assert pubsub.pings == 3
    now[0] += redis_events.PING_TIMEOUT + 0.1
    with pytest.raises(ConnectionError, match="did not answer PING"):
        stream.read(0.5)
