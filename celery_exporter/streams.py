"""What every event reader is to the event thread (`EventStream`), their names, and the
pieces they share: the refusal of an undecodable message, the fast JSON and base64
decoders, decompression, and the pause that lets more arrive before the next read
(`Gatherer`).

The readers: on Redis, the subscription's socket parsed with hiredis (`redis-hiredis`) or
redis-py's PubSub (`redis-py`), in redis_events.py; on RabbitMQ, the event queue's frames
cut out of py-amqp's socket (`amqp-frames`) or py-amqp's own dispatch (`py-amqp`), in
amqp_events.py; kombu's consumer on any transport (`kombu`), in kombu_events.py. Which one
reads is decided in readers.py, from --event-reader.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import ssl
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Protocol, Union

# --event-reader: `auto` takes the fastest reader that works on the broker; the others force one
AUTO = "auto"
KOMBU = "kombu"
REDIS_HIREDIS = "redis-hiredis"
REDIS_PY = "redis-py"
AMQP_FRAMES = "amqp-frames"
PY_AMQP = "py-amqp"
REDIS_READERS = (REDIS_HIREDIS, REDIS_PY)
AMQP_READERS = (AMQP_FRAMES, PY_AMQP)
CHOICES = (AUTO, KOMBU, *REDIS_READERS, *AMQP_READERS)


class EventStream(Protocol):
    """One reader of Celery's event stream on a connected broker connection, as the event
    thread drives it: open(), then read_many() -> decode() each payload -> the handler,
    check() about every tick, gather() after a read that brought something, and close().
    Connection errors propagate from every method: the thread reconnects."""

    name: str  # the reader, for the log and celery_exporter_event_reader_info

    # The event (a dict) or batch (a `task.multi` list) in one payload of read_many();
    # raises UndecodableMessage for anything else. One function for the stream's life, so
    # that the thread reads it once, not once a message.
    decode: Callable[[Any], Any]

    def open(self, timeout: float) -> List[Any]:
        """Wait up to `timeout` s until the broker delivers to this stream (raise if it does
        not); the payloads that arrived meanwhile."""

    def read_many(self, timeout: float) -> List[Any]:
        """The payloads that arrived within `timeout` s, in order (none when none did)."""

    def gather(self, seconds: float) -> None:
        """After a read that brought payloads: let more arrive before the next read, for up
        to `seconds` (see Gatherer); nothing where the reader cannot tell what is waiting."""

    def check(self) -> Optional[int]:
        """The connection's own liveness check, where it has one (AMQP heartbeats: raises
        when the broker went silent), then a count that grows with everything the broker
        sends (events, pongs, heartbeat frames): the "broker heard" signal. None when the
        reader cannot count; then a connection that stays up counts as heard."""

    def close(self) -> None:
        """Stop reading (quietly, when the connection is already gone)."""


class UndecodableMessage(ValueError):
    """A message that holds no event: counted as dropped, reason `undecodable`, and by its
    content type (None: not known) for the diagnosis."""

    def __init__(self, message: str, content_type: Optional[str] = None):
        super().__init__(message)
        self.content_type = content_type


class ReaderUnavailable(RuntimeError):
    """The reader --event-reader forces cannot read on this connection (it never falls back
    to another): the event thread reconnects with it, as after any broker error."""

    def __init__(self, reader: str, why: str):
        super().__init__(f"--event-reader {reader} cannot read on this connection ({why}); it does not fall back")
        self.reader = reader

    @classmethod
    def because(cls, reader: str, exc: BaseException) -> "ReaderUnavailable":
        """For a reader that failed on what it needs (a library internal, a package)."""
        return cls(reader, f"{type(exc).__name__}: {exc}")


JSON = "application/json"


def accepted(accept: Iterable[str]) -> FrozenSet[str]:
    """Content types for names like "json" or "pickle", as kombu's consumer resolves them."""
    # kombu is imported where it is used in this module: the settings read the reader names
    # above for --help, which loads no broker library
    from kombu.serialization import prepare_accept_content

    return frozenset(prepare_accept_content(list(accept)))


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


def decompress(body: bytes, compression: str) -> bytes:
    """The body of a message with a `compression` header, as kombu's Message decompresses it.
    Whatever the codec refuses (an unknown one, a corrupt body) is an UndecodableMessage."""
    from kombu.compression import decompress as kombu_decompress  # (see accepted())

    try:
        data: bytes = kombu_decompress(body, compression)
    except Exception as exc:  # each codec has its own error: zlib.error, lzma.LZMAError, OSError...
        raise UndecodableMessage(f"compression {compression!r}: {type(exc).__name__}: {str(exc)[:200]}") from None
    return data


def decode_body(
    body: Any,
    content_type: str,
    content_encoding: str,
    compression: Optional[str],
    accept: FrozenSet[str],
    json_accepted: bool,
) -> Any:
    """A message's body as kombu's consumer decodes it, for every reader that takes messages
    apart itself: decompressed when the message names a compression, then JSON (orjson first)
    when it is JSON and JSON is accepted, else kombu's serializer registry (which refuses a
    content type not in `accept`). An empty content type is JSON, as kombu reads it.
    Whatever fails is an UndecodableMessage: a foreign message must never look like a broken
    connection to the event thread (each serializer and codec raises errors of its own)."""
    try:
        if compression:
            body = decompress(body, compression)
        if json_accepted and (content_type == JSON or not content_type):
            return loads(body)
        from kombu.serialization import loads as kombu_loads  # (see accepted())

        return kombu_loads(body, content_type or JSON, content_encoding or "utf-8", accept=accept)
    except UndecodableMessage as exc:
        raise UndecodableMessage(str(exc), content_type) from None
    except Exception as exc:  # refused content type, bad JSON, pickle or YAML errors, wrong field types...
        raise UndecodableMessage(f"{type(exc).__name__}: {str(exc)[:200]}", content_type) from None


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
