"""The event thread: its own broker connection, a capture loop, reconnects with capped
exponential backoff, and a clean stop when asked.

It consumes Celery's event exchange directly with kombu instead of Celery's EventReceiver:
it binds to every routing key (worker task events arrive batched as `task.multi` lists),
and it never "localises" timestamps (EventReceiver shifts epoch timestamps by the
sender/receiver time-zone difference, which is wrong whenever the zones differ).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from typing import Any, FrozenSet, Optional

from celery.events.event import get_exchange
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer
from kombu.utils.url import maybe_sanitize_url

from celery_exporter import amqp_events, internals, redis_events
from celery_exporter.clock import Clock
from celery_exporter.handlers import Handler
from celery_exporter.settings import Settings
from celery_exporter.store import Store

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 0.5  # also bounds how long a stop request waits
TICK_INTERVAL = 0.5  # handler.tick(): release held events, forget finished tasks
SUBSCRIBE_TIMEOUT = 10.0  # Redis: how long to wait for the broker to confirm PSUBSCRIBE
AMQP_HEARTBEAT = 10  # seconds; a dead AMQP peer is noticed within ~2 heartbeats
# The exporter's event queue on RabbitMQ: exclusive and auto-delete (RabbitMQ 4.3 rejects
# transient non-exclusive queues), so it vanishes with the connection. Events waiting longer
# than the message TTL are dropped by the broker, not held forever for a stuck exporter.
QUEUE_MESSAGE_TTL = 30.0
QUEUE_EXPIRES = 60.0
# After a small read that brought messages, the event thread waits up to this long before
# reading again, so that what arrives meanwhile is read, parsed and handled together: under a
# steady load of a few thousand messages a second each message otherwise costs a read of its
# own (a poll and a recv, the GIL given up and taken back, the loop's bookkeeping). The wait
# ends as soon as 32 KiB are waiting (redis_events.Gatherer), so it never holds back a
# backlog; events are handled at most this much later.
COALESCE_SECONDS = 0.005


def mask_url(url: str) -> str:
    """The broker URL(s) with any password replaced by **."""
    return ";".join(str(maybe_sanitize_url(part.strip())) for part in url.split(";"))


class Receiver(threading.Thread):
    def __init__(self, settings: Settings, handler: Handler, store: Store, clock: Clock, stop_event: threading.Event):
        super().__init__(name="event-receiver", daemon=True)
        self.settings = settings
        self.handler = handler
        self.store = store
        self.clock = clock
        self.stop_event = stop_event
        self._last_tick = 0.0
        self._received: Optional[int] = None  # the connection's reply/frame count at the last tick
        self._next_sweep: Optional[float] = None
        self._handler_error_logged = False
        self._outage_since: Optional[float] = None

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        first, cap = self.settings.reconnect_backoff
        delay = first
        while not self.stop_event.is_set():
            try:
                consumed = self._consume()
            except Exception as exc:  # any broker or transport failure: report and retry
                consumed = False
                self._lost(exc)
            if self.stop_event.is_set():
                break
            delay = first if consumed else min(delay * 2, cap)
            self._wait(delay)
        self.store.exporter.set_connected(False)

    def _connection(self) -> Connection:
        extra = {}
        if self.settings.broker_ssl is not None:  # else what the URL says (amqps://, rediss://)
            extra["ssl"] = self.settings.broker_ssl
        return Connection(
            self.settings.broker_url,
            transport_options=dict(self.settings.transport_options),
            heartbeat=AMQP_HEARTBEAT,
            connect_timeout=5,
            **extra,
        )

    def _consume(self) -> bool:
        """Connect and consume until stopped. Returns True if it got connected (so the
        next reconnect starts from the shortest delay); raises on broker errors."""
        connection = self._connection()
        try:
            connection.connect()
            if redis_events.usable(connection):
                stream = redis_events.open_stream(connection, self.settings.events_exchange)
                if stream is not None:
                    return self._consume_redis(stream)
            if connection.transport.driver_name == "py-amqp":
                return self._consume_amqp(connection)
            return self._consume_kombu(connection)
        finally:
            self.store.exporter.set_connected(False)
            try:
                connection.release()
            except Exception:  # the connection is already broken; nothing left to close
                log.debug("error while closing the broker connection", exc_info=True)

    def _consume_redis(self, stream: redis_events.Subscription) -> bool:
        """Redis: read the PUB/SUB subscription directly (redis_events.py)."""
        try:
            early = stream.wait_subscribed(SUBSCRIBE_TIMEOUT)
            self._connected(stream.name)
            accept = redis_events.accepted(self.settings.accept_content)  # once, not per message
            for first in early:
                self._on_data(first, accept, self.clock.now())
            on_data, stop = self._on_data, self.stop_event.is_set
            while not stop():
                batch = stream.read_many(DRAIN_TIMEOUT)
                now = self.clock.now()  # messages of one read arrived together
                for data in batch:
                    on_data(data, accept, now)
                self._tick(now, received=stream.replies)
                if batch:
                    stream.gather(COALESCE_SECONDS)
            return True
        finally:
            stream.close()

    def _on_data(self, data: bytes, accept: FrozenSet[str], now: float) -> None:
        try:
            body = redis_events.decode(data, accept)
        except redis_events.UndecodableMessage as exc:
            self.handler.drop("undecodable", str(exc))
            return
        self._on_body(body, now)

    def _tick(self, now: float, connection: Optional[Connection] = None, received: Optional[int] = None) -> None:
        """About every TICK_INTERVAL: check AMQP heartbeats, note whether the broker was
        heard since the last tick (`received`: a count of replies or frames that grows with
        anything the broker sends, pongs and AMQP heartbeats too), and the upkeep."""
        if now - self._last_tick >= TICK_INTERVAL:
            self._last_tick = now
            if connection is not None:
                connection.heartbeat_check()
                # py-amqp counts every frame it reads; other kombu transports: trust the connection
                received = getattr(connection.connection, "bytes_recv", None)
                if received is None:
                    self.store.exporter.heard(now)
            if received is not None and received != self._received:
                self._received = received
                self.store.exporter.heard(now)
            self._upkeep(now)

    def _upkeep(self, now: float) -> None:
        """On the event thread's tick, connected or not: release held events, and every
        --sweep-interval remove expired label sets from memory. The sweep takes the store's
        lock as event handling does, so it needs no thread of its own."""
        self.handler.tick(now)
        if self._next_sweep is None:
            self._next_sweep = now + self.settings.sweep_interval
        elif now >= self._next_sweep:
            self._next_sweep = now + self.settings.sweep_interval
            removed = self.store.sweep(now)
            if removed:
                log.debug("swept %d expired label sets", removed)

    def _event_queue(self, connection: Connection) -> Queue:
        """The exporter's own queue on the event exchange: every routing key, exclusive and
        auto-delete, with a message TTL and an expiry."""
        return Queue(
            f"celeryev.exporter.{uuid.uuid4().hex}",
            exchange=get_exchange(connection, name=self.settings.events_exchange),
            routing_key="#",
            durable=False,
            auto_delete=True,
            exclusive=True,
            message_ttl=QUEUE_MESSAGE_TTL,
            expires=QUEUE_EXPIRES,
        )

    def _consume_amqp(self, connection: Connection) -> bool:
        """RabbitMQ over py-amqp: kombu connects and declares the queue, py-amqp sends
        basic.consume, and amqp_events reads the deliveries' frames from the socket. Without
        the py-amqp internals it reads, py-amqp dispatches each delivery to a callback."""
        channel: Any = connection.channel()  # kombu's py-amqp transport: an amqp.Channel
        queue = self._event_queue(connection)(channel)
        queue.declare()
        accept = redis_events.accepted(self.settings.accept_content)  # once, not per message

        def on_delivery(delivery: amqp_events.Delivery, now: float) -> None:
            try:
                body = amqp_events.decode(delivery, accept)
            except redis_events.UndecodableMessage as exc:
                self.handler.drop("undecodable", str(exc))
                return
            self._on_body(body, now)

        def on_message(message: Any) -> None:  # what py-amqp itself dispatches
            properties = message.properties
            delivery = (
                properties.get("content_type") or "",
                properties.get("content_encoding") or "",
                properties.get("application_headers") or {},
                message.body,
            )
            on_delivery(delivery, self.clock.now())

        tag = channel.basic_consume(queue.name, no_ack=True, callback=on_message)
        try:
            stream: Optional[amqp_events.AmqpEventStream] = amqp_events.AmqpEventStream(
                connection.connection, channel.channel_id, tag
            )
        except (AttributeError, TypeError) as exc:
            internals.fell_back("the AMQP frame reader cannot read py-amqp's socket; py-amqp reads the events", exc)
            stream = None
        self._connected(stream.name if stream is not None else "py-amqp")
        stop = self.stop_event.is_set
        try:
            while not stop():
                if stream is not None:
                    batch = stream.read_many(DRAIN_TIMEOUT)
                    now = self.clock.now()  # deliveries of one read arrived together
                    for delivery in batch:
                        on_delivery(delivery, now)
                    if batch:
                        stream.gather(COALESCE_SECONDS)
                else:
                    self._drain(connection, DRAIN_TIMEOUT)
                    now = self.clock.now()
                self._tick(now, connection)
        finally:
            if stream is not None:
                stream.close()  # py-amqp closes the connection after this
        return True

    def _consume_kombu(self, connection: Connection) -> bool:
        """Other transports (and Redis where redis_events cannot read: sentinel_fanout_compat,
        or a kombu without the Channel internals it uses): kombu's consumer on an exclusive,
        auto-delete queue of our own."""
        channel = connection.channel()
        queue = self._event_queue(connection)
        consumer = Consumer(
            channel,
            queues=[queue],
            accept=list(self.settings.accept_content),
            no_ack=True,
            on_message=self._on_message,
        )
        consumer.consume()
        # kombu's Redis transport (used here only with sentinel_fanout_compat) sends
        # PSUBSCRIBE lazily, on the first drain: do one before reporting ready, so /-/ready
        # never says yes while events still go unheard.
        self._drain(connection, 0.01)
        self._connected("kombu")
        while not self.stop_event.is_set():
            self._drain(connection, DRAIN_TIMEOUT)
            self._tick(self.clock.now(), connection)
        return True

    @staticmethod
    def _drain(connection: Connection, timeout: float) -> None:
        try:
            connection.drain_events(timeout=timeout)
        except socket.timeout:
            pass

    def _wait(self, delay: float) -> None:
        """Back off, still releasing held events on time."""
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop_event.wait(min(TICK_INTERVAL, remaining))
            self._upkeep(self.clock.now())

    def _connected(self, reader: str) -> None:
        self.store.exporter.set_connected(True, self.clock.now(), reader)
        url = mask_url(self.settings.broker_url)
        if self._outage_since is None:
            log.info("receiving events from %s (reader: %s)", url, reader)
        else:
            log.info(
                "reconnected to %s after %.1f s; receiving events again", url, time.monotonic() - self._outage_since
            )
            self._outage_since = None

    def _lost(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.store.exporter.count_reconnect()
            log.warning(
                "broker %s unavailable (%s: %s); retrying with backoff up to %.0f s, logging again once it is back",
                mask_url(self.settings.broker_url),
                type(exc).__name__,
                exc,
                self.settings.reconnect_backoff[1],
            )
        else:
            log.debug("broker still unavailable: %s: %s", type(exc).__name__, exc)

    # -- messages -----------------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        now = self.clock.now()
        try:
            body = message.decode()
        except Exception as exc:  # not JSON, disallowed content type, bad compression...
            self.handler.drop("undecodable", f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        self._on_body(body, now)

    def _on_body(self, body: Any, now: float) -> None:
        if isinstance(body, list):  # task.multi: a batch from one worker
            for event in body:
                self._handle(event, now)
        else:
            self._handle(body, now)

    def _handle(self, event: Any, now: float) -> None:
        try:
            self.handler.handle(event, now)
        except Exception:  # a bug in handling must not stop the receiver
            self.handler.drop("handler_error", "the event handler raised")
            if not self._handler_error_logged:
                self._handler_error_logged = True
                log.exception("event handler failed on an event (logged once): %.300r", event)
