"""The event readers for RabbitMQ over py-amqp (streams.EventStream): the frames of the
exporter's event queue read from py-amqp's socket in bulk (`amqp-frames`), as
redis_events.py reads the Redis subscription, and py-amqp's own dispatch (`py-amqp`), the
fallback when the py-amqp internals the first one reads are gone.

kombu and py-amqp still do everything but the hot path: connecting (TLS, heartbeats,
failover URLs), declaring the exclusive, auto-delete queue with its message TTL and expiry,
and `basic.consume`. Then, instead of py-amqp parsing one frame per read and kombu wrapping
each delivery in a Message and a serializer lookup, this reader takes whatever the socket
holds (one `recv`), cuts every complete frame out of it, and decodes the `basic.deliver`
contents of its own consumer tag with orjson. Every other frame (heartbeats, a server's
`connection.close`, another channel's traffic) goes to py-amqp's own frame handler, as if
py-amqp had read it; py-amqp's received-frames counter is kept up, so its heartbeat check and
the exporter's "broker heard" signal work as before.

The profile behind it (benchmarks/README.md, rmq-burst): py-amqp's frame reading and
dispatch took about half of the event thread, kombu's Message and serializer about a tenth.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from kombu.connection import Connection
from kombu.entity import Queue

from celery_exporter import internals
from celery_exporter.kombu_events import DrainedStream
from celery_exporter.streams import (
    AMQP_FRAMES,
    AUTO,
    JSON,
    PY_AMQP,
    EventStream,
    Gatherer,
    ReaderUnavailable,
    UndecodableMessage,
    accepted,
    decode_body,
    loads,
)

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = 0xCE
BASIC_DELIVER = (60, 60)
RECV_SIZE = 256 * 1024
_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_BODY_SIZE_FLAGS = struct.Struct(">QH")
_TABLE_LENGTH = struct.Struct(">I")
COMPRESSION_KEY = b"\x0bcompression"  # a field table's key: its length octet, then the name
HEARTBEAT_RATE = 2  # check(): how often per heartbeat interval it runs, as kombu's heartbeat_check says

# (content type, content encoding, headers, body) of one delivery
Delivery = Tuple[str, str, Dict[str, Any], bytes]


class FrameError(ConnectionError):
    """The byte stream is not AMQP frames any more: the connection cannot be trusted."""


class AmqpEventStream:
    """Deliveries to `consumer_tag` on channel `channel_id` of py-amqp connection `amqp`,
    read from its socket. py-amqp must have sent basic.consume and seen its consume-ok."""

    name = AMQP_FRAMES

    def __init__(self, amqp: Any, channel_id: int, consumer_tag: str, accept: Iterable[str] = (JSON,)):
        self.decode = decoder(accept)
        self.amqp = amqp
        self.channel_id = channel_id
        self.tag = consumer_tag.encode()
        self.dispatch: Callable[[Tuple[int, int, Any]], Any] = amqp.on_inbound_frame
        # a frame longer than the negotiated frame_max is not AMQP: fail at once, not buffer
        self.frame_max = int(getattr(amqp, "frame_max", 0) or 131072)
        self.sock, self.recv, leftover = internals.amqp_reader(amqp)  # last: it takes py-amqp's buffer
        self._timeout = self.sock.gettimeout()
        self.buf = bytearray(leftover)
        # a delivery in progress: [content type, encoding, headers, body size, parts, bytes so far]
        self._pending: Optional[List[Any]] = None
        self._foreign = False  # a content-bearing method that py-amqp handles
        self._error: Optional[BaseException] = None  # raised by py-amqp's handler, re-raised next read
        self.last_read = 0  # bytes the last socket read brought
        self._gatherer = Gatherer(self.sock)

    def open(self, timeout: float) -> List[Delivery]:
        """Nothing to wait for: py-amqp saw basic.consume-ok before the stream was made."""
        return []

    def read_many(self, timeout: float) -> List[Delivery]:
        """Every delivery completed by what one read brought (waiting up to `timeout` s for
        the first byte), in order. When py-amqp's frame handler raises on a frame of its own
        (a server's connection.close, basic.cancel), the deliveries before that frame are
        still returned, and the error is raised by the next call."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        self.sock.settimeout(timeout)
        try:
            data = self.recv(RECV_SIZE)
        except socket.timeout:
            return []
        except OSError as exc:  # e.g. SSLWantRead after a partial TLS record: nothing yet
            if getattr(exc, "errno", None) in (2, 11, 4):  # ENOENT (ssl), EAGAIN, EINTR
                return []
            raise
        if not data:
            raise ConnectionError("Server unexpectedly closed connection")
        self.last_read = len(data)
        self.buf += data
        return self._frames()

    def gather(self, seconds: float) -> None:
        """Let more arrive before the next read (see streams.Gatherer); not when
        py-amqp's handler raised on a frame of this read (a server's connection.close, after
        which py-amqp has closed the socket): the next read raises that error at once."""
        if self._error is None:
            self._gatherer.wait(self.last_read, seconds)

    def check(self) -> int:
        """py-amqp's heartbeat check (it raises when the broker went silent, and sends our
        heartbeat when one is due), then its count of frames received, ours included. Not
        after py-amqp's handler raised (the next read raises that error): py-amqp may have
        closed the connection then."""
        if self._error is None:
            self.amqp.heartbeat_tick(rate=HEARTBEAT_RATE)
        received: int = self.amqp.bytes_recv
        return received

    def close(self) -> None:
        """Hand the connection back to py-amqp (which then closes it): the socket's timeout
        as it was, and the bytes read past the last whole frame. In the middle of one of our
        deliveries py-amqp could not parse what follows: the connection is dropped instead."""
        try:
            self.sock.settimeout(self._timeout)
        except OSError:  # already closed
            pass
        if self._pending is None and not self._foreign:
            internals.amqp_hand_back(self.amqp, bytes(self.buf))
        else:
            self.amqp.collect()
        self.buf = bytearray()

    def _frames(self) -> List[Delivery]:
        out: List[Delivery] = []
        buf = self.buf
        size = len(buf)
        pos = 0
        ours = 0
        frame_max = self.frame_max
        head = _FRAME_HEAD.unpack_from
        try:
            while size - pos >= 8:
                frame_type, channel, length = head(buf, pos)
                if length > frame_max:
                    raise FrameError(f"a frame of {length} bytes, above frame_max {frame_max}")
                end = pos + 7 + length
                if end >= size:
                    break
                if buf[end] != FRAME_END:
                    raise FrameError(f"no frame-end octet after a frame of type {frame_type}")
                start, pos = pos + 7, end + 1
                if channel == self.channel_id and self._ours(frame_type, buf, start, end, out):
                    ours += 1
                    continue
                try:  # py-amqp's frame handler counts the frame in bytes_recv itself
                    self.dispatch((frame_type, channel, bytes(buf[start:end])))
                except Exception as exc:
                    self._error = exc
                    break
        finally:
            # py-amqp's count of frames received: its heartbeat check, and the exporter's
            # "broker heard", read it
            self.amqp.bytes_recv += ours
            del buf[:pos]
        return out

    def _ours(self, frame_type: int, buf: bytearray, start: int, end: int, out: List[Delivery]) -> bool:
        """Whether this frame of our channel belongs to a delivery of our consumer (then
        it is consumed here)."""
        pending = self._pending
        if frame_type == FRAME_METHOD:
            if _METHOD_ID.unpack_from(buf, start) == BASIC_DELIVER:
                tag_length = buf[start + 4]
                if bytes(buf[start + 5 : start + 5 + tag_length]) == self.tag:
                    self._pending = [None, None, None, 0, [], 0]
                    self._foreign = False
                    return True
            self._foreign = True  # py-amqp's: its header and body frames follow to it
            return False
        if self._foreign or pending is None:
            return False
        if frame_type == FRAME_HEADER:
            body_size, flags = _BODY_SIZE_FLAGS.unpack_from(buf, start + 4)
            content_type, encoding, headers = _properties(buf, start + 14, flags)
            pending[0], pending[1], pending[2], pending[3] = content_type, encoding, headers, body_size
            if body_size == 0:
                out.append((content_type, encoding, headers, b""))
                self._pending = None
            return True
        if frame_type == FRAME_BODY:
            parts = pending[4]
            parts.append(bytes(buf[start:end]))
            pending[5] += end - start
            if pending[5] >= pending[3]:
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                out.append((pending[0], pending[1], pending[2], body))
                self._pending = None
            return True
        return False


def _properties(buf: bytearray, offset: int, flags: int) -> Tuple[str, str, Dict[str, Any]]:
    """content_type, content_encoding and headers of a basic content header. The first two
    are short strings at the start; headers, the third, is a table. Only its `compression`
    entry matters here, so py-amqp decodes the table only when that key is in it (Celery's
    events carry a few headers in every message: decoding them all cost 8 % of the thread)."""
    content_type = encoding = ""
    if flags & 0x8000:
        length = buf[offset]
        content_type = buf[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
        offset += 1 + length
    if flags & 0x4000:
        length = buf[offset]
        encoding = buf[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
        offset += 1 + length
    headers: Dict[str, Any] = {}
    if flags & 0x2000:
        length = _TABLE_LENGTH.unpack_from(buf, offset)[0]
        if length and buf.find(COMPRESSION_KEY, offset + 4, offset + 4 + length) >= 0:
            headers = internals.amqp_table(bytes(buf[offset : offset + 4 + length]), 0)
    return content_type, encoding, headers


def decoder(accept: Iterable[str]) -> Callable[[Delivery], Any]:
    """The event (a dict) or batch (a list) in one delivery, as kombu's consumer decodes
    it: compression from the `compression` header, then JSON (orjson first), or kombu's
    serializer registry for any other accepted content type. `accept`: content types or
    names (--accept-content), resolved here once."""
    accept = accept if isinstance(accept, frozenset) else accepted(accept)
    json_accepted = JSON in accept

    def decode(delivery: Delivery) -> Any:
        content_type, encoding, headers, body = delivery
        if not headers and content_type == JSON and json_accepted:  # the usual event: no call more
            try:
                return loads(body)
            except (ValueError, TypeError) as exc:  # not JSON; a body that is no text at all
                raise UndecodableMessage(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        compression = headers.get("compression") if headers else None
        return decode_body(body, content_type, encoding, compression, accept, json_accepted)

    return decode


class PyAmqpStream(DrainedStream):
    """py-amqp's own dispatch: basic.consume on the exporter's event queue (`queue`, see
    readers.event_queue) with a callback that appends each delivery to the batch, read by
    kombu's drain_events. Also what every AmqpEventStream is set up on: it takes over the
    consumer's deliveries from the socket, and then this callback is never called."""

    name = PY_AMQP

    def __init__(self, connection: Connection, queue: Queue, accept: Iterable[str]):
        super().__init__(connection)
        self.decode = decoder(accept)
        self.channel: Any = connection.channel()  # kombu's py-amqp transport: an amqp.Channel
        bound = queue(self.channel)
        bound.declare()
        self.tag: str = self.channel.basic_consume(bound.name, no_ack=True, callback=self._on_message)

    def _on_message(self, message: Any) -> None:
        properties = message.properties
        self.batch.append(
            (
                properties.get("content_type") or "",
                properties.get("content_encoding") or "",
                properties.get("application_headers") or {},
                message.body,
            )
        )


def open_stream(connection: Connection, queue: Queue, accept: Iterable[str], reader: str = AUTO) -> EventStream:
    """The consumer of `queue` read by `reader` (streams.AMQP_READERS), or with `auto` by the
    frame reader, and by py-amqp's dispatch when the py-amqp internals the frame reader
    uses are missing (logged once). A forced reader that cannot read here raises
    ReaderUnavailable instead: it never falls back."""
    consumer = PyAmqpStream(connection, queue, accept)
    if reader == PY_AMQP:
        return consumer
    try:
        return AmqpEventStream(connection.connection, consumer.channel.channel_id, consumer.tag, accept)
    except (AttributeError, TypeError) as exc:
        if reader != AUTO:
            raise ReaderUnavailable.because(reader, exc) from exc
        internals.fell_back("the AMQP frame reader cannot read py-amqp's socket; py-amqp reads the events", exc)
    return consumer
