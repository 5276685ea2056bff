"""Decoding kombu's Redis message envelope in the lean event reader."""

import base64
import json
import pickle

import pytest

from celery_exporter.redis_events import UndecodableMessage, decode


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


def test_a_batch_and_a_single_event():
    batch = [{"type": "task-started", "uuid": "u1"}, {"type": "task-succeeded", "uuid": "u1", "runtime": 0.1}]
    assert decode(envelope(batch), ("json",)) == batch
    assert decode(envelope({"type": "worker-heartbeat"}), ("json",)) == {"type": "worker-heartbeat"}
    assert decode(envelope({"type": "x"}, encoding="utf-8"), ("json",)) == {"type": "x"}


def test_other_content_types_follow_accept_content():
    body = pickle.dumps({"type": "worker-heartbeat"})
    with pytest.raises(UndecodableMessage, match="ContentDisallowed"):
        decode(envelope(body, content_type="application/x-python-serialize"), ("json",))
    assert decode(envelope(body, content_type="application/x-python-serialize"), ("json", "pickle")) == {
        "type": "worker-heartbeat"
    }


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
def test_garbage_is_undecodable_not_a_crash(data):
    with pytest.raises(UndecodableMessage):
        decode(data, ("json",))
