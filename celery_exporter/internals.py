"""Every use of kombu's, redis-py's and py-amqp's internals, in one place.

The exporter's fast paths read a few attributes that these libraries do not document. Each
is read here, with the releases it was checked on. A release that renames or changes one
makes these functions raise AttributeError or TypeError; their callers then take the slower
documented path (logged once, and named in a self-metric), unless --event-reader forces the
reader that needs it (then it raises: streams.ReaderUnavailable):

- kombu Redis `Channel._fanout_compat_active`: whether kombu de-duplicates a double
  publish (a property in kombu 5.7.0; read with getattr: absent means off);
- kombu Redis `Channel.subclient`, `_get_publish_topic(s)`: the PUB/SUB client and the event
  topics (fallback: kombu's consumer);
- redis-py `ConnectionPool.make_connection`, `Connection._sock`: the socket the hiredis
  reader reads (fallback: redis-py's PubSub);
- kombu Redis `Channel.client`, `priority_steps`, `sep`: queue lengths, LLEN of every
  priority list (fallback: a passive queue declare);
- py-amqp `Connection.transport` and its `sock`, `_quick_recv`, `_read_buffer`, and
  `amqp.serialization.loads`: the socket the AMQP frame reader reads, and a header table
  (fallback: py-amqp's own dispatch).
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Dict, List, Set, Tuple

from kombu import __version__ as kombu_version
from kombu.connection import Connection
from redis import __version__ as redis_version

log = logging.getLogger(__name__)
_WARNED: Set[str] = set()


def fell_back(what: str, exc: BaseException) -> None:
    """Log a fallback from one of these internals once per process and kind, with the
    versions that lack it (what an operator reports)."""
    if what not in _WARNED:
        _WARNED.add(what)
        log.warning("%s (%s: %s; redis-py %s, kombu %s)", what, type(exc).__name__, exc, redis_version, kombu_version)


def fanout_compat_active(channel: Any) -> bool:
    """Whether kombu's Redis channel publishes fanout messages twice and de-duplicates them
    (`sentinel_fanout_compat`): only kombu's consumer is exact then. kombu 5.7.0's
    `Channel._fanout_compat_active`, a property (a method is called too); absent means off."""
    compat = getattr(channel, "_fanout_compat_active", False)
    if callable(compat):
        compat = compat()
    return bool(compat)


def redis_subscription(connection: Connection, exchange: str) -> Tuple[Any, List[str]]:
    """kombu's PUB/SUB client for the connection and the patterns to subscribe to: what
    kombu would subscribe to for a queue bound to `exchange` with routing key '#' (kombu
    turns '#' into the pattern '*'). kombu's Redis Channel: `subclient` and
    `_get_publish_topic` (kombu 5.3.0 to 5.7.0), and `_get_publish_topics`, every topic a
    fanout message goes to (kombu 5.7; without it, the one topic)."""
    channel: Any = connection.default_channel
    # The pubsub client first: creating kombu's pool fills in the {db} of the fanout prefix.
    pubsub = channel.subclient
    topics_of = getattr(channel, "_get_publish_topics", None)
    if topics_of is not None:
        return pubsub, list(topics_of(exchange, "*"))
    return pubsub, [channel._get_publish_topic(exchange, "*")]


def redis_connection(pubsub: Any) -> Any:
    """A connection of kombu's pool for `pubsub`, of our own (outside the pool's
    bookkeeping), not yet connected: redis-py's `ConnectionPool.make_connection`
    (redis-py 4.5.2 to 8.2.0)."""
    return pubsub.connection_pool.make_connection()


def redis_socket(conn: Any) -> socket.socket:
    """The socket of a connected redis-py Connection: `Connection._sock` (redis-py 4.5.2 to
    8.2.0; an SSL socket with TLS)."""
    sock = conn._sock
    if not isinstance(sock, socket.socket):
        raise TypeError(f"redis-py's connection has no socket to read ({type(sock).__name__})")
    return sock


def redis_lists(channel: Any) -> Tuple[Any, List[Any], str]:
    """What the Redis length poll reads of kombu's Redis Channel: its client (which adds
    global_keyprefix to every key), its priority steps and the separator of the priority
    lists' names (kombu 5.3.0 to 5.7.0)."""
    client, steps, sep = channel.client, list(channel.priority_steps), channel.sep
    if not isinstance(sep, str) or not callable(client.pipeline):
        raise TypeError(f"kombu's Redis channel: sep {type(sep).__name__}, pipeline {type(client.pipeline).__name__}")
    return client, steps, sep


def amqp_reader(amqp_connection: Any) -> Tuple[socket.socket, Callable[[int], bytes], bytes]:
    """The socket of a py-amqp connection, its receive function (`sock.recv`, or the TLS
    socket's `read`) and the bytes py-amqp already read past its last frame, handed over:
    py-amqp's `Connection.transport` with `sock`, `_quick_recv` and `_read_buffer` (py-amqp
    5.1.1 to 5.4.x, plain TCP and TLS transports)."""
    transport = amqp_connection.transport
    sock = transport.sock
    if not isinstance(sock, socket.socket):
        raise TypeError(f"py-amqp's transport.sock is a {type(sock).__name__}, not a socket")
    recv = transport._quick_recv
    leftover = bytes(transport._read_buffer)
    transport._read_buffer = b""
    return sock, recv, leftover


def amqp_table(buf: bytes, offset: int) -> Dict[str, Any]:
    """An AMQP field table at `offset`, decoded by py-amqp (`amqp.serialization.loads`)."""
    from amqp.serialization import loads

    values, _ = loads("F", buf, offset)
    return dict(values[0])


def amqp_hand_back(amqp_connection: Any, leftover: bytes) -> None:
    """Give py-amqp back the bytes read past the last whole frame (`_read_buffer`), so that
    its own reader goes on where the frame reader stopped."""
    amqp_connection.transport._read_buffer = leftover
