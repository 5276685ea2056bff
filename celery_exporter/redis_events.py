"""The lean readers of Celery's event stream on Redis (streams.EventStream).

On Redis, Celery events travel over PUB/SUB: kombu publishes each message, a JSON envelope
with a base64 body, to the topic `<fanout prefix><exchange>/<routing key>`. kombu's own
consumer turns every message into a virtual-AMQP delivery (queue lookup, QoS, a Message
object, content negotiation) before the body is decoded, which costs more than the
exporter's whole event handling. This module reads the same subscription directly:

- the connection, Sentinel master lookup, TLS, `global_keyprefix` and the fanout topic
  layout all come from kombu's own Redis channel (its client, pool and topic functions), so
  the exporter sees exactly what kombu would;
- each message is decoded with orjson and pybase64 (or `json` and `base64`) only, falling back to
  kombu's serialization registry for other accepted content types.

It is used only where it is exact: the Redis transports (redis, rediss, sentinel) without
`sentinel_fanout_compat` (whose double publishing kombu de-duplicates). Everything else goes
through kombu's consumer (kombu_events.py; the choice is readers.py's).
"""

from __future__ import annotations

import abc
import importlib
import socket
import ssl
import time
from types import ModuleType
from typing import Any, Callable, Iterable, List, Optional, Type

from kombu.connection import Connection

from celery_exporter import internals
from celery_exporter.streams import (
    AUTO,
    JSON,
    REDIS_HIREDIS,
    REDIS_PY,
    Gatherer,
    ReaderUnavailable,
    UndecodableMessage,
    accepted,
    b64decode,
    decode_body,
    loads,
)


def _import_hiredis() -> Optional[ModuleType]:
    try:
        return importlib.import_module("hiredis")
    except ImportError:  # not installed (it is a default dependency): redis-py's PubSub reads
        return None


_hiredis = _import_hiredis()


def hiredis_installed() -> bool:
    """Whether the socket reader (redis-hiredis) has its parser."""
    return _hiredis is not None


def usable(connection: Connection) -> bool:
    """Whether the lean readers can stand in for kombu's consumer on this connection."""
    if connection.transport.driver_type != "redis":
        return False
    return not internals.fanout_compat_active(connection.default_channel)


def decoder(accept: Iterable[str]) -> Callable[[Any], Any]:
    """The event (a dict) or batch (a list) inside one PUB/SUB message of kombu's envelope,
    as kombu's consumer decodes it: the body's base64, its `compression` header, then JSON
    (orjson first), or kombu's serializer registry for any other accepted content type.
    `accept`: content types or names (--accept-content), resolved here once."""
    accept = accept if isinstance(accept, frozenset) else accepted(accept)
    json_accepted = JSON in accept

    def decode(data: Any) -> Any:
        try:
            envelope = loads(data)
            body = envelope["body"]
            properties = envelope.get("properties") or {}
            content_type = envelope.get("content-type") or JSON
            encoding = properties.get("body_encoding")
            headers = envelope.get("headers")
            compression = headers.get("compression") if headers else None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise UndecodableMessage(f"not a kombu message envelope: {type(exc).__name__}: {exc}") from None
        if encoding == "base64":
            try:
                body = b64decode(body)
            except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
                raise UndecodableMessage(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        elif encoding not in (None, "", "utf-8"):
            raise UndecodableMessage(f"unknown body encoding {encoding!r}")
        if not compression and content_type == JSON and json_accepted:  # the usual event: no call more
            try:
                return loads(body)
            except (ValueError, TypeError) as exc:  # not JSON; a body that is no text at all
                raise UndecodableMessage(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return decode_body(body, content_type, envelope.get("content-encoding"), compression, accept, json_accepted)

    return decode


# A subscription with no message for PING_AFTER seconds is pinged; no reply at all within
# PING_TIMEOUT seconds of the ping means the connection is dead (reconnect, counted as an outage).
PING_AFTER = 5.0
PING_TIMEOUT = 10.0


class Subscription(abc.ABC):
    """What both readers of the subscription share: turning replies into event data,
    counting them, the confirmation of PSUBSCRIBE, and pinging a quiet connection."""

    topics: List[str]
    name: str  # the reader, for celery_exporter_event_reader_info

    def __init__(self, accept: Iterable[str]) -> None:
        self.decode = decoder(accept)
        self.subscribed = False
        self._last_reply = time.monotonic()
        self._ping_sent: Optional[float] = None
        self.replies = 0  # replies read: messages, pongs, confirmations

    @abc.abstractmethod
    def _replies(self, timeout: float) -> List[Any]:
        """The replies that arrive within `timeout` (none when none did)."""

    @abc.abstractmethod
    def gather(self, seconds: float) -> None:
        """Let more arrive before the next read, where the reader can (see Gatherer)."""

    @abc.abstractmethod
    def _ping(self) -> None:
        """Send PING on the subscription's connection."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the subscription's connection (quietly, if it is already gone)."""

    def read_many(self, timeout: float) -> List[bytes]:
        """The data of the event messages that arrived within `timeout`, in order (none when
        no message came, or only a subscription confirmation or a pong). Connection errors
        propagate, and so does silence: after PING_AFTER seconds without a reply the
        server is pinged, and without any reply PING_TIMEOUT seconds later the connection
        counts as dead (a vanished server or a NAT that dropped the flow send no reset)."""
        now = time.monotonic()
        if self._ping_sent is None:
            if now - self._last_reply >= PING_AFTER:
                self._ping()
                self._ping_sent = now
        elif now - self._ping_sent >= PING_TIMEOUT:
            raise ConnectionError(f"the Redis server did not answer PING within {PING_TIMEOUT:g} s")
        replies = self._replies(timeout)
        if not replies:
            return []
        self._last_reply = time.monotonic()
        self._ping_sent = None
        self.replies += len(replies)
        out = []
        for reply in replies:
            if isinstance(reply, list) and reply:  # (hiredis gives a RESP3 push as a list subclass)
                kind = reply[0]
                if kind == b"pmessage" or kind == "pmessage":
                    out.append(bytes(reply[3]))
                elif kind == b"message" or kind == "message":
                    out.append(bytes(reply[2]))
                elif kind == b"psubscribe" or kind == "psubscribe":
                    self.subscribed = True
            elif isinstance(reply, Exception):  # an error reply (hiredis hands them over as values)
                raise ConnectionError(f"the Redis server replied with an error: {reply}")
        return out

    def open(self, timeout: float) -> List[bytes]:
        """Wait for the broker to confirm the subscription; events read meanwhile are returned."""
        early: List[bytes] = []
        deadline = time.monotonic() + timeout
        while not self.subscribed and time.monotonic() < deadline:
            early.extend(self.read_many(0.05))
        if not self.subscribed:
            raise TimeoutError(f"no confirmation of PSUBSCRIBE {self.topics} within {timeout:g} s")
        return early

    def check(self) -> int:
        """The replies read so far (the reader pings a quiet connection itself, in read_many)."""
        return self.replies


class RedisEventStream(Subscription):
    """The subscription read through redis-py's PubSub, one reply per call: the reader
    when hiredis is not installed or the socket cannot be read directly."""

    name = REDIS_PY

    def __init__(self, connection: Connection, exchange: str, accept: Iterable[str] = (JSON,)):
        super().__init__(accept)
        self.pubsub, self.topics = internals.redis_subscription(connection, exchange)
        self.pubsub.psubscribe(*self.topics)

    def _replies(self, timeout: float) -> List[Any]:
        response = self.pubsub.parse_response(block=False, timeout=timeout)
        return [response] if response else []

    def gather(self, seconds: float) -> None:
        """Nothing: redis-py's PubSub hands out one reply per call, whatever has arrived."""

    def _ping(self) -> None:
        self.pubsub.ping()

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # the connection is already gone
            pass


READ_SIZE = 65536  # bytes per recv: under load one read brings dozens of messages


class HiredisEventStream(Subscription):
    """The subscription read straight from the connection's socket into a hiredis Reader:
    one `recv` and one parse for every message that has arrived, instead of redis-py's
    per-reply layers (retry wrapper, a readiness poll, the parser object) for each.

    The connection itself is redis-py's, made by kombu's pool: address, Sentinel master
    lookup, TLS, AUTH, HELLO and SELECT are all as kombu would have them. After that
    handshake nothing else is read from it by redis-py: PSUBSCRIBE and PING are sent with
    `send_command`, and every reply is read here. RESP2 and RESP3 replies alike (hiredis
    gives a RESP3 push as a list)."""

    name = REDIS_HIREDIS

    def __init__(self, connection: Connection, exchange: str, accept: Iterable[str] = (JSON,)):
        super().__init__(accept)
        if _hiredis is None:
            raise ImportError("hiredis is not installed")
        pubsub, self.topics = internals.redis_subscription(connection, exchange)
        self._conn = internals.redis_connection(pubsub)
        try:
            self._conn.connect()
            self._sock: socket.socket = internals.redis_socket(self._conn)
            self._gatherer = Gatherer(self._sock)
            self.last_read = 0  # bytes the last socket read brought
            self._reader = _hiredis.Reader()
            self._protocol_error: Type[Exception] = _hiredis.ProtocolError
            self._buffer = bytearray(READ_SIZE)
            self._timeout: Optional[float] = None
            # kombu's PubSub client adds the transport's global_keyprefix to the patterns
            prefix = getattr(pubsub, "global_keyprefix", "") or ""
            self._conn.send_command("PSUBSCRIBE", *(prefix + t for t in self.topics), check_health=False)
        except BaseException:
            self._conn.disconnect()
            raise

    def _replies(self, timeout: float) -> List[Any]:
        reader = self._reader
        try:
            reply = reader.gets()
            if reply is False:  # nothing parsed yet: wait for bytes
                sock = self._sock
                if timeout != self._timeout:  # (settimeout costs a system call)
                    sock.settimeout(timeout)
                    self._timeout = timeout
                try:
                    n = sock.recv_into(self._buffer)
                except (socket.timeout, ssl.SSLWantReadError):
                    return []
                if not n:
                    raise ConnectionError("the Redis server closed the connection")
                self.last_read = n
                reader.feed(self._buffer, 0, n)
                reply = reader.gets()
            replies = []
            while reply is not False:
                replies.append(reply)
                reply = reader.gets()
            return replies
        except self._protocol_error as exc:
            raise ConnectionError(f"unreadable reply from the Redis server: {exc}") from None

    def gather(self, seconds: float) -> None:
        """Let more arrive before the next read (see Gatherer)."""
        self._gatherer.wait(self.last_read, seconds)

    def _ping(self) -> None:
        # check_health=False: redis-py's own health check would read the reply itself
        self._conn.send_command("PING", check_health=False)

    def close(self) -> None:
        try:
            self._conn.disconnect()
        except Exception:  # the connection is already gone
            pass


def open_stream(
    connection: Connection, exchange: str, accept: Iterable[str] = (JSON,), reader: str = AUTO
) -> Optional[Subscription]:
    """The subscription read by `reader` (streams.REDIS_READERS), or with `auto` the fastest
    reader that works here: hiredis on the socket; else redis-py's PubSub (hiredis missing,
    or redis-py's connection without the socket it reads, as after a redis-py release that
    renamed it); else None, when kombu's Redis Channel lacks what both need (its PUB/SUB
    client or topic layout): then the caller uses kombu's own consumer. Each fallback is
    logged once, and the reader in use is a metric. A forced reader that cannot read here
    raises ReaderUnavailable instead: it never falls back."""
    if reader in (AUTO, REDIS_HIREDIS):
        try:
            return HiredisEventStream(connection, exchange, accept)
        except (ImportError, AttributeError, TypeError) as exc:
            if reader != AUTO:
                raise ReaderUnavailable.because(reader, exc) from exc
            internals.fell_back("reading Redis events through redis-py's PubSub, not the socket", exc)
    try:
        return RedisEventStream(connection, exchange, accept)
    except (AttributeError, TypeError) as exc:
        if reader != AUTO:
            raise ReaderUnavailable.because(reader, exc) from exc
        internals.fell_back("reading Redis events through kombu's consumer (slower)", exc)
    return None
