"""A lean reader of Celery's event stream on Redis.

On Redis, Celery events travel over PUB/SUB: kombu publishes each message, a JSON envelope
with a base64 body, to the topic `<fanout prefix><exchange>/<routing key>`. kombu's own
consumer turns every message into a virtual-AMQP delivery (queue lookup, QoS, a Message
object, content negotiation) before the body is decoded, which costs more than the
exporter's whole event handling. This module reads the same subscription directly:

- the connection, Sentinel master lookup, TLS, `global_keyprefix` and the fanout topic
  layout all come from kombu's own Redis channel (its client, pool and topic functions), so
  the exporter sees exactly what kombu would;
- each message is decoded with orjson (or `json`) and `base64` only, falling back to
  kombu's serialization registry for other accepted content types.

It is used only where it is exact: the Redis transports (redis, rediss, sentinel) without
`sentinel_fanout_compat` (whose double publishing kombu de-duplicates). Everything else goes
through kombu's consumer (see receiver.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Union

from kombu.connection import Connection
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads as kombu_loads
from kombu.serialization import prepare_accept_content

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


class UndecodableMessage(ValueError):
    pass


def usable(connection: Connection) -> bool:
    """Whether the lean reader can stand in for kombu's consumer on this connection."""
    if connection.transport.driver_type != "redis":
        return False
    channel = connection.default_channel
    compat = getattr(channel, "_fanout_compat_active", None)
    return not (callable(compat) and compat())


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
            body = base64.b64decode(body)
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


class RedisEventStream:
    """The PUB/SUB subscription to one event exchange, read message by message."""

    def __init__(self, connection: Connection, exchange: str):
        # kombu's Redis Channel: its pub/sub client and topic layout are transport internals
        channel: Any = connection.default_channel
        # The pubsub client first: creating kombu's pool fills in the {db} of the fanout prefix.
        self.pubsub = channel.subclient
        # What kombu would subscribe to for a queue bound to `exchange` with routing key '#'
        # (kombu turns '#' into the PUB/SUB pattern '*').
        self.topics: List[str] = channel._get_publish_topics(exchange, "*")
        self.pubsub.psubscribe(*self.topics)
        self.subscribed = False
        self._last_reply = time.monotonic()
        self._ping_sent: Optional[float] = None
        self.replies = 0  # replies read: messages, pongs, confirmations

    def read(self, timeout: float) -> Optional[bytes]:
        """The data of the next event message, or None when none came within `timeout`
        (or the next reply was a subscription confirmation or a pong). Connection errors
        propagate, and so does silence: after PING_AFTER seconds without a message the
        server is pinged, and without any reply PING_TIMEOUT seconds later the connection
        counts as dead (a vanished server or a NAT that dropped the flow send no reset)."""
        now = time.monotonic()
        if self._ping_sent is None:
            if now - self._last_reply >= PING_AFTER:
                self.pubsub.ping()
                self._ping_sent = now
        elif now - self._ping_sent >= PING_TIMEOUT:
            raise ConnectionError(f"the Redis server did not answer PING within {PING_TIMEOUT:g} s")
        response = self.pubsub.parse_response(block=False, timeout=timeout)
        if not response:
            return None
        self._last_reply = time.monotonic()
        self._ping_sent = None
        self.replies += 1
        kind = response[0]
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "pmessage":
            return bytes(response[3])
        if kind == "message":
            return bytes(response[2])
        if kind == "psubscribe":
            self.subscribed = True
        return None

    def wait_subscribed(self, timeout: float) -> List[bytes]:
        """Wait for the broker to confirm the subscription; events read meanwhile are returned."""
        early: List[bytes] = []
        deadline = time.monotonic() + timeout
        while not self.subscribed and time.monotonic() < deadline:
            data = self.read(0.05)
            if data is not None:
                early.append(data)
        if not self.subscribed:
            raise TimeoutError(f"no confirmation of PSUBSCRIBE {self.topics} within {timeout:g} s")
        return early

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # the connection is already gone
            pass
