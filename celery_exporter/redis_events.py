"""A lean reader of Celery's event stream on Redis.

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
through kombu's consumer (see receiver.py).
"""

from __future__ import annotations

import abc
import base64
import binascii
import importlib
import json
import logging
import select
import socket
import ssl
import time
from types import ModuleType
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Type, Union

from kombu.connection import Connection
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads as kombu_loads
from kombu.serialization import prepare_accept_content

from celery_exporter import internals


def _import_hiredis() -> Optional[ModuleType]:
    try:
        return importlib.import_module("hiredis")
    except ImportError:  # not installed (it is a default dependency): redis-py's PubSub reads
        return None


_hiredis = _import_hiredis()

log = logging.getLogger(__name__)

JSON = "application/json"

# orjson: a C JSON decoder, about 2.5x the standard library's speed on an event envelope
fast_loads: Optional[Callable[[Union[bytes, str]], Any]]
try:
    from orjson import loads as fast_loads
except ImportError:  # not installed (it is a default dependency): the standard library alone
    fast_loads = None


def loads(data: Union[bytes, str]) -> Any:
    """JSON as the standard library reads it, orjson first. What orjson refuses and the
    standard library takes (NaN and Infinity, which kombu's json.dumps writes for such
    floats, and lone surrogates) is read again by `json`, so both give the same result or
    the same refusal. One difference stays: orjson reads an integer beyond 64 bits as a
    float (no field of a Celery event holds one; the handlers then refuse it as a count)."""
    if fast_loads is not None:
        try:
            return fast_loads(data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
    return json.loads(data)


# pybase64: a SIMD base64 decoder, about 10x the standard library's speed on an event body
fast_b64decode: Optional[Callable[..., bytes]]
try:
    from pybase64 import b64decode as fast_b64decode
except ImportError:  # not installed (it is a default dependency): the standard library alone
    fast_b64decode = None


def b64decode(data: Union[bytes, str]) -> bytes:
    """base64 as the standard library reads it, pybase64 first. pybase64 reads strictly
    (only the alphabet, padding only at the end); whatever it refuses is read again by
    `base64`, whose lenient rules (skipping other characters, stopping at padding) then
    decide, so both give the same result or the same refusal."""
    if fast_b64decode is not None:
        try:
            return fast_b64decode(data, validate=True)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            pass
    return base64.b64decode(data)


class UndecodableMessage(ValueError):
    pass


def usable(connection: Connection) -> bool:
    """Whether the lean reader can stand in for kombu's consumer on this connection."""
    if connection.transport.driver_type != "redis":
        return False
    return not internals.fanout_compat_active(connection.default_channel)


def accepted(accept: Iterable[str]) -> FrozenSet[str]:
    """Content types for names like "json" or "pickle", as kombu's consumer resolves them."""
    return frozenset(prepare_accept_content(list(accept)))


def decode(data: Any, accept: Iterable[str]) -> Any:
    """The event (a dict) or batch (a list) inside one PUB/SUB message of kombu's envelope.
    `accept`: accepted() of --accept-content (resolved once by the caller), or the names."""
    if not isinstance(accept, frozenset):
        accept = accepted(accept)
    try:
        envelope = loads(data)
        body = envelope["body"]
        properties = envelope.get("properties") or {}
        content_type = envelope.get("content-type") or JSON
        encoding = properties.get("body_encoding")
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UndecodableMessage(f"not a kombu message envelope: {type(exc).__name__}: {exc}") from None
    try:
        if encoding == "base64":
            body = b64decode(body)
        elif encoding not in (None, "", "utf-8"):
            raise UndecodableMessage(f"unknown body encoding {encoding!r}")
        if content_type == JSON and JSON in accept:
            return loads(body)
        return kombu_loads(body, content_type, envelope.get("content-encoding") or "utf-8", accept=accept)
    except UndecodableMessage:
        raise
    except (ContentDisallowed, ValueError, TypeError, binascii.Error) as exc:
        raise UndecodableMessage(f"{type(exc).__name__}: {str(exc)[:200]}") from None


# A subscription with no message for PING_AFTER seconds is pinged; no reply at all within
# PING_TIMEOUT seconds of the ping means the connection is dead (reconnect, counted as an outage).
PING_AFTER = 5.0
PING_TIMEOUT = 10.0


class Subscription(abc.ABC):
    """What both readers of the subscription share: turning replies into event data,
    counting them, the confirmation of PSUBSCRIBE, and pinging a quiet connection."""

    topics: List[str]
    name: str  # the reader, for celery_exporter_event_reader_info

    def __init__(self) -> None:
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

    def wait_subscribed(self, timeout: float) -> List[bytes]:
        """Wait for the broker to confirm the subscription; events read meanwhile are returned."""
        early: List[bytes] = []
        deadline = time.monotonic() + timeout
        while not self.subscribed and time.monotonic() < deadline:
            early.extend(self.read_many(0.05))
        if not self.subscribed:
            raise TimeoutError(f"no confirmation of PSUBSCRIBE {self.topics} within {timeout:g} s")
        return early


class RedisEventStream(Subscription):
    """The subscription read through redis-py's PubSub, one reply per call: the reader
    when hiredis is not installed or the socket cannot be read directly."""

    name = "redis-py"

    def __init__(self, connection: Connection, exchange: str):
        super().__init__()
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


# A pause after a small read (receiver.COALESCE_SECONDS) ends early once this many bytes are
# waiting (or a quarter of the socket's receive buffer, if that is less): a backlog is read
# at once, so the pause can never hold back a burst, whatever the buffer sizes.
GATHER_BYTES = 32768


class Gatherer:
    """Lets what follows a small read arrive before the next read: waits up to `seconds`,
    or until GATHER_BYTES are waiting (SO_RCVLOWAT, which the kernel's poll honours), for
    the reader of `sock`. Only on a plain TCP socket where the platform has both: a TLS
    read returns one record at most however much is waiting, and elsewhere it never waits."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.usable = (
            hasattr(select, "poll")
            and hasattr(socket, "SO_RCVLOWAT")
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and not isinstance(sock, ssl.SSLSocket)
        )
        if self.usable:
            buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.enough = max(1, min(GATHER_BYTES, buffer // 4))
            self._before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)  # set back after each wait
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def wait(self, last_read: int, seconds: float) -> None:
        """After a read of `last_read` bytes: wait for more, if that read was small (and the
        socket is still open: a frame handled meanwhile may have closed it)."""
        sock = self.sock
        if not self.usable or last_read >= self.enough or sock.fileno() < 0:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.enough)
        try:
            self._poll.poll(seconds * 1000)
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self._before)


class HiredisEventStream(Subscription):
    """The subscription read straight from the connection's socket into a hiredis Reader:
    one `recv` and one parse for every message that has arrived, instead of redis-py's
    per-reply layers (retry wrapper, a readiness poll, the parser object) for each.

    The connection itself is redis-py's, made by kombu's pool: address, Sentinel master
    lookup, TLS, AUTH, HELLO and SELECT are all as kombu would have them. After that
    handshake nothing else is read from it by redis-py: PSUBSCRIBE and PING are sent with
    `send_command`, and every reply is read here. RESP2 and RESP3 replies alike (hiredis
    gives a RESP3 push as a list)."""

    name = "redis-hiredis"

    def __init__(self, connection: Connection, exchange: str):
        super().__init__()
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


def open_stream(connection: Connection, exchange: str) -> Optional[Subscription]:
    """The fastest reader that works here: hiredis on the socket; else redis-py's PubSub
    (hiredis missing, or redis-py's connection without the socket it reads, as after a
    redis-py release that renamed it); else None, when kombu's Redis Channel lacks what both
    need (its PUB/SUB client or topic layout): then the caller uses kombu's own consumer.
    Each fallback is logged once, and the reader in use is a metric."""
    try:
        return HiredisEventStream(connection, exchange)
    except (ImportError, AttributeError, TypeError) as exc:
        internals.fell_back("reading Redis events through redis-py's PubSub, not the socket", exc)
    try:
        return RedisEventStream(connection, exchange)
    except (AttributeError, TypeError) as exc:
        internals.fell_back("reading Redis events through kombu's consumer (slower)", exc)
    return None
