"""The AMQP frame reader (celery_exporter/amqp_events.py) on frames built here byte by byte
(properties serialized by py-amqp itself), over a real socket pair: deliveries of its
consumer split anywhere across reads, bodies over several frames, compression, and every
frame it does not own handed to py-amqp's frame handler. That the reader counts exactly
against real workers on RabbitMQ is tests/integration/test_task_events.py."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from typing import Any, List, Tuple

import pytest
from amqp.basic_message import Message
from amqp.serialization import dumps

from celery_exporter import amqp_events, internals
from celery_exporter.streams import UndecodableMessage, accepted

CHANNEL, TAG = 1, "ctag-exporter"
ACCEPT = accepted(["json"])


def decode(delivery, accept):
    """One delivery decoded (a stream makes its decoder once for all its deliveries)."""
    return amqp_events.decoder(accept)(delivery)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def deliver(tag: str = TAG, channel: int = CHANNEL, routing_key: str = "task.multi") -> bytes:
    args = dumps("sLbss", (tag, 7, False, "celeryev", routing_key))
    return frame(1, channel, struct.pack(">HH", 60, 60) + args)


def header(body_size: int, channel: int = CHANNEL, **properties: Any) -> bytes:
    flags_and_list = Message(**properties)._serialize_properties()
    return frame(2, channel, struct.pack(">HHQ", 60, 0, body_size) + flags_and_list)


def delivery(body: bytes, split: int = 0, tag: str = TAG, channel: int = CHANNEL, **properties: Any) -> bytes:
    props = {"content_type": "application/json", "content_encoding": "utf-8", **properties}
    out = deliver(tag, channel) + header(len(body), channel, **props)
    if split:
        return out + b"".join(frame(3, channel, body[i : i + split]) for i in range(0, len(body), split))
    return out + (frame(3, channel, body) if body else b"")


class FakeTransport:
    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self._quick_recv = sock.recv
        self._read_buffer = leftover


class FakeAmqp:
    """What the reader uses of py-amqp's Connection: its transport, its frame handler
    (recorded here; py-amqp's counts the frame in bytes_recv itself) and bytes_recv."""

    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.transport = FakeTransport(sock, leftover)
        self.bytes_recv = 0
        self.handled: List[Tuple[int, int, bytes]] = []

        self.collected = 0
        self.frame_max = 131072
        self.fail_on: Tuple[int, ...] = ()  # frame types py-amqp's handler raises on

    def on_inbound_frame(self, frame: Tuple[int, int, bytes]) -> None:
        self.bytes_recv += 1
        self.handled.append(frame)
        if frame[0] in self.fail_on:
            raise ConnectionAbortedError("connection.close from the server")

    def collect(self) -> None:
        self.collected += 1


@pytest.fixture
def pair():
    ours, broker = socket.socketpair()
    yield ours, broker
    ours.close()
    broker.close()


def stream(ours: socket.socket, leftover: bytes = b"") -> Tuple[amqp_events.AmqpEventStream, FakeAmqp]:
    amqp = FakeAmqp(ours, leftover)
    return amqp_events.AmqpEventStream(amqp, CHANNEL, TAG), amqp


def events(deliveries) -> List[Any]:
    return [decode(d, ACCEPT) for d in deliveries]


BATCH = [{"type": "task-received", "uuid": "u1", "timestamp": 1.5}, {"type": "task-started", "uuid": "u1"}]
ONE = {"type": "worker-heartbeat", "hostname": "w@h", "freq": 2.0}


def test_deliveries_in_one_read_come_out_in_order(pair):
    ours, broker = pair
    reader, amqp = stream(ours)
    broker.sendall(delivery(json.dumps(BATCH).encode()) + delivery(json.dumps(ONE).encode()))
    assert events(reader.read_many(1.0)) == [BATCH, ONE]
    assert amqp.bytes_recv == 6 and amqp.handled == []  # 3 frames each, counted for heartbeats
    assert reader.read_many(0.01) == []


def test_the_reader_counts_the_bytes_of_its_last_read(pair):
    ours, broker = pair
    reader, _ = stream(ours)
    data = delivery(json.dumps(ONE).encode())
    broker.sendall(data)
    assert events(reader.read_many(1.0)) == [ONE] and reader.last_read == len(data)
    reader.gather(10.0)  # a socket pair: no pause (streams.Gatherer is tested on TCP)


def test_a_delivery_split_at_every_byte_boundary_is_read_once(pair):
    ours, broker = pair
    data = delivery(json.dumps(BATCH).encode(), split=7)
    for cut in range(1, len(data)):
        reader, _ = stream(ours)
        broker.sendall(data[:cut])
        got = reader.read_many(1.0)
        broker.sendall(data[cut:])
        while not got:
            got = reader.read_many(1.0)
        assert events(got) == [BATCH], cut
        assert reader.buf == bytearray() and reader._pending is None


def test_bytes_py_amqp_read_ahead_are_taken_over(pair):
    ours, broker = pair
    data = delivery(json.dumps(ONE).encode())
    reader, _ = stream(ours, leftover=data[:10])
    broker.sendall(data[10:])
    assert events(reader.read_many(1.0)) == [ONE]


def test_frames_it_does_not_own_go_to_py_amqp(pair):
    ours, broker = pair
    reader, amqp = stream(ours)
    heartbeat = frame(8, 0, b"")
    other_tag = delivery(b'{"type": "x"}', tag="someone-else")
    other_channel = delivery(b'{"type": "y"}', channel=2)
    channel_close = frame(1, CHANNEL, struct.pack(">HH", 20, 40) + dumps("BsBB", (404, "gone", 50, 10)))
    broker.sendall(heartbeat + other_tag + delivery(json.dumps(ONE).encode()) + other_channel + channel_close)
    assert events(reader.read_many(1.0)) == [ONE]
    kinds = [(kind, channel) for kind, channel, _ in amqp.handled]
    assert kinds == [(8, 0), (1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2), (1, 1)]
    assert amqp.handled[-1][2] == struct.pack(">HH", 20, 40) + dumps("BsBB", (404, "gone", 50, 10))
    assert amqp.bytes_recv == 8 + 3  # py-amqp's count of its frames, and ours


def test_compressed_and_other_content_types_decode_as_kombu_would(pair):
    ours, broker = pair
    reader, _ = stream(ours)
    body = json.dumps(BATCH).encode()
    broker.sendall(
        delivery(zlib.compress(body), application_headers={"compression": "application/x-gzip"})
        + delivery(b"", content_type="application/json")
        + delivery(b"\x80\x04K\x01.", content_type="application/x-python-serialize", content_encoding="binary")
    )
    compressed, empty, pickled = reader.read_many(1.0)
    assert decode(compressed, ACCEPT) == BATCH
    with pytest.raises(UndecodableMessage):
        decode(empty, ACCEPT)  # no JSON in an empty body
    with pytest.raises(UndecodableMessage, match="ContentDisallowed"):
        decode(pickled, ACCEPT)  # pickle is not accepted unless asked for
    assert decode(pickled, accepted(["json", "pickle"])) == 1


def test_a_stream_that_is_not_frames_is_an_error(pair):
    ours, broker = pair
    reader, _ = stream(ours)
    broker.sendall(frame(3, CHANNEL, b"abc")[:-1] + b"\x00" + b"more bytes")
    with pytest.raises(amqp_events.FrameError):
        reader.read_many(1.0)


def test_a_closed_connection_raises(pair):
    ours, broker = pair
    reader, _ = stream(ours)
    broker.close()
    with pytest.raises(ConnectionError):
        reader.read_many(1.0)


def test_without_py_amqps_socket_internals_the_reader_refuses(pair):
    ours, _ = pair
    amqp = FakeAmqp(ours)
    del amqp.transport._quick_recv
    with pytest.raises(AttributeError):
        amqp_events.AmqpEventStream(amqp, CHANNEL, TAG)
    amqp.transport = type("T", (), {"sock": object(), "_quick_recv": None, "_read_buffer": b""})()
    with pytest.raises(TypeError):
        internals.amqp_reader(amqp)


def test_headers_are_decoded_only_for_compression(pair, monkeypatch):
    ours, broker = pair
    reader, _ = stream(ours)
    decoded = []
    real = internals.amqp_table
    monkeypatch.setattr(internals, "amqp_table", lambda buf, offset: decoded.append(offset) or real(buf, offset))
    body = json.dumps(ONE).encode()
    broker.sendall(
        delivery(body, application_headers={"hostname": "w@h", "compression_level": 5})
        + delivery(zlib.compress(body), application_headers={"hostname": "w@h", "compression": "application/x-gzip"})
    )
    plain, compressed = reader.read_many(1.0)
    assert plain[2] == {} and decode(plain, ACCEPT) == ONE
    assert compressed[2] == {"hostname": "w@h", "compression": "application/x-gzip"}
    assert decode(compressed, ACCEPT) == ONE
    assert len(decoded) == 1


def test_an_error_of_py_amqps_handler_keeps_the_deliveries_before_it(pair):
    ours, broker = pair
    reader, amqp = stream(ours)
    amqp.fail_on = (8,)
    body = json.dumps(ONE).encode()
    broker.sendall(delivery(body) + frame(8, 0, b"") + delivery(body))
    assert events(reader.read_many(1.0)) == [ONE]  # the one before the failing frame
    with pytest.raises(ConnectionAbortedError):
        reader.read_many(1.0)
    assert len(amqp.handled) == 1  # the failing frame went to py-amqp once
    assert amqp.bytes_recv == 3 + 1


def test_no_pause_after_a_read_whose_frame_closed_the_connection():
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    broker, _ = listener.accept()
    listener.close()
    try:
        reader, amqp = stream(ours)
        assert reader._gatherer.usable  # a TCP socket: it would pause
        amqp.fail_on = (8,)
        body = json.dumps(ONE).encode()
        broker.sendall(delivery(body) + frame(8, 0, b""))
        assert events(reader.read_many(1.0)) == [ONE]
        ours.close()  # as py-amqp does after a server's connection.close
        reader.gather(10.0)  # no pause, and no EBADF in place of the handler's error
        with pytest.raises(ConnectionAbortedError):
            reader.read_many(1.0)
    finally:
        broker.close()


def test_close_hands_py_amqp_the_rest_or_drops_the_connection(pair):
    ours, broker = pair
    ours.settimeout(7.0)
    body = json.dumps(ONE).encode()
    reader, amqp = stream(ours)
    broker.sendall(delivery(body) + frame(8, 0, b"")[:5])  # then half a heartbeat frame
    assert events(reader.read_many(1.0)) == [ONE]
    reader.close()
    assert amqp.transport._read_buffer == frame(8, 0, b"")[:5] and amqp.collected == 0
    assert ours.gettimeout() == 7.0
    # in the middle of a delivery of ours, py-amqp could not go on: the connection is dropped
    reader, amqp = stream(ours)
    broker.sendall(delivery(body)[:-20])
    assert reader.read_many(1.0) == []
    reader.close()
    assert amqp.collected == 1


def test_a_frame_longer_than_frame_max_is_an_error(pair):
    ours, broker = pair
    reader, amqp = stream(ours)
    broker.sendall(struct.pack(">BHI", 3, CHANNEL, amqp.frame_max + 1) + b"x" * 100)
    with pytest.raises(amqp_events.FrameError, match="frame_max"):
        reader.read_many(1.0)


def test_check_runs_py_amqps_heartbeat_tick_and_counts_frames(pair):
    ours, broker = pair
    reader, amqp = stream(ours)
    ticks = []
    amqp.heartbeat_tick = lambda rate: ticks.append(rate)
    broker.sendall(delivery(json.dumps(ONE).encode()))
    assert events(reader.read_many(1.0)) == [ONE]
    assert reader.check() == 3 and ticks == [amqp_events.HEARTBEAT_RATE]
    amqp.fail_on = (8,)
    broker.sendall(frame(8, 0, b""))
    assert reader.read_many(1.0) == []
    assert reader.check() == 4 and len(ticks) == 1  # py-amqp's handler raised: no tick; the read raises
    with pytest.raises(ConnectionAbortedError):
        reader.read_many(1.0)


@pytest.mark.parametrize(
    "delivery",
    [
        ("", "", {}, b"not json at all"),  # no content type: kombu reads JSON, and refuses this
        ("application/x-yaml", "utf-8", {}, b"a: [1"),  # not accepted
        ("application/json", "utf-8", {"compression": "application/x-gzip"}, b"not gzip"),
        ("application/json", "utf-8", {}, b"\xff\xfe not utf-8"),
        ("application/x-python-serialize", "binary", {}, b"\x80\x04garbage"),
    ],
)
def test_a_foreign_delivery_is_undecodable_never_an_error_of_another_kind(delivery):
    """The event thread takes any other error for a broken connection: it reconnects and loses
    the rest of the read. Whatever a delivery holds, decoding it fails only as undecodable."""
    for accept in (ACCEPT, accepted(["json", "pickle", "yaml"])):
        with pytest.raises(UndecodableMessage):
            decode(delivery, accept)
