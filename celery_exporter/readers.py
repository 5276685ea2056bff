"""Which reader reads the events on a connection (streams.EventStream): what
--event-reader asks for, or with `auto` the fastest reader that works on the broker.

- `auto`: on Redis (redis, rediss, sentinel) the subscription's socket parsed with hiredis,
  else redis-py's PubSub, else kombu's consumer; on RabbitMQ over py-amqp (amqp, amqps,
  pyamqp) the event queue's frames read from py-amqp's socket, else py-amqp's dispatch;
  kombu's consumer on every other transport, and on Redis with `sentinel_fanout_compat`.
  Each fallback is logged once (internals.fell_back).
- any other name: that reader and no other. One that cannot serve the broker URL is refused
  at start (refusal()); one that cannot read on a connection raises ReaderUnavailable, and
  the event thread reconnects with it, as after any broker error.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping, Optional

from celery.events.event import get_exchange
from kombu.connection import Connection
from kombu.entity import Queue

from celery_exporter import amqp_events, redis_events
from celery_exporter.kombu_events import KombuStream
from celery_exporter.streams import (
    AMQP_READERS,
    AUTO,
    CHOICES,
    KOMBU,
    REDIS_HIREDIS,
    REDIS_READERS,
    EventStream,
    ReaderUnavailable,
    accepted,
)

# The exporter's event queue on RabbitMQ (and kombu's virtual queue on other transports):
# exclusive and auto-delete (RabbitMQ 4.3 rejects transient non-exclusive queues), so it
# vanishes with the connection. Events waiting longer than the message TTL are dropped by
# the broker, not held forever for a stuck exporter.
QUEUE_MESSAGE_TTL = 30.0
QUEUE_EXPIRES = 60.0

FANOUT_COMPAT = "sentinel_fanout_compat"


def event_queue(connection: Connection, exchange: str) -> Queue:
    """The exporter's own queue on the event exchange: every routing key, exclusive and
    auto-delete, with a message TTL and an expiry."""
    return Queue(
        f"celeryev.exporter.{uuid.uuid4().hex}",
        exchange=get_exchange(connection, name=exchange),
        routing_key="#",
        durable=False,
        auto_delete=True,
        exclusive=True,
        message_ttl=QUEUE_MESSAGE_TTL,
        expires=QUEUE_EXPIRES,
    )


def refusal(reader: str, broker_url: str, transport_options: Mapping[str, Any]) -> Optional[str]:
    """Why `reader` cannot serve `broker_url` (every URL of a ';' failover list), or None
    when it can. From the URLs' schemes, the transport options and the installed packages:
    no broker is contacted."""
    if reader not in CHOICES:
        return f"{reader!r} is not one of {', '.join(CHOICES)}"
    if reader in (AUTO, KOMBU):
        return None
    for part in broker_url.split(";"):
        transport = Connection(part.strip()).get_transport_cls()
        scheme = part.strip().partition("://")[0]
        if reader in REDIS_READERS and transport.driver_type != "redis":
            return f"{reader} reads Redis only (redis://, rediss://, sentinel://), not {scheme}://"
        if reader in AMQP_READERS and transport.driver_name != "py-amqp":
            return f"{reader} reads RabbitMQ over py-amqp only (amqp://, amqps://, pyamqp://), not {scheme}://"
    if reader == REDIS_HIREDIS and not redis_events.hiredis_installed():
        return f"{reader} needs the hiredis package, which cannot be imported"
    if reader in REDIS_READERS and transport_options.get(FANOUT_COMPAT):
        return (
            f"{reader} cannot read exactly with the transport option {FANOUT_COMPAT} (kombu publishes every "
            "event twice then, and only its consumer drops the copies): use kombu or auto"
        )
    return None


def open_stream(connection: Connection, reader: str, exchange: str, accept_content: Iterable[str]) -> EventStream:
    """The stream of Celery's events on `connection` (connected), read by `reader`
    (--event-reader) from the event exchange `exchange`, decoding the content types
    `accept_content` (--accept-content)."""
    accept = accepted(accept_content)
    transport = connection.transport
    if reader != KOMBU:
        if transport.driver_type == "redis" and reader in (AUTO, *REDIS_READERS):
            if redis_events.usable(connection):
                stream = redis_events.open_stream(connection, exchange, accept, reader)
                if stream is not None:
                    return stream
            elif reader != AUTO:
                raise ReaderUnavailable(reader, f"{FANOUT_COMPAT} is on: only kombu's consumer reads exactly then")
        elif transport.driver_name == "py-amqp" and reader in (AUTO, *AMQP_READERS):
            return amqp_events.open_stream(connection, event_queue(connection, exchange), accept, reader)
        elif reader != AUTO:
            raise ReaderUnavailable(reader, f"the broker's transport is {transport.driver_name}")
    return KombuStream(connection, event_queue(connection, exchange), accept)
