"""The event thread: its own broker connection, one consume loop over whichever reader
reads the events (streams.EventStream, chosen by readers.py from --event-reader),
reconnects with capped exponential backoff, and a clean stop when asked.

It consumes Celery's event exchange directly instead of through Celery's EventReceiver: it
binds to every routing key (worker task events arrive batched as `task.multi` lists), and
it never "localises" timestamps (EventReceiver shifts epoch timestamps by the
sender/receiver time-zone difference, which is wrong whenever the zones differ).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, List, Optional

from kombu.connection import Connection
from kombu.utils.url import maybe_sanitize_url

from celery_exporter import readers
from celery_exporter.clock import Clock
from celery_exporter.handlers import Handler
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.streams import EventStream, ReaderUnavailable, UndecodableMessage

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 0.5  # also bounds how long a stop request waits
TICK_INTERVAL = 0.5  # handler.tick(): release held events, forget finished tasks
SUBSCRIBE_TIMEOUT = 10.0  # how long a stream may take to open (Redis: the broker to confirm PSUBSCRIBE)
AMQP_HEARTBEAT = 10  # seconds; a dead AMQP peer is noticed within ~2 heartbeats
# After a small read that brought messages, the event thread waits up to this long before
# reading again, so that what arrives meanwhile is read, parsed and handled together: under a
# steady load of a few thousand messages a second each message otherwise costs a read of its
# own (a poll and a recv, the GIL given up and taken back, the loop's bookkeeping). The wait
# ends as soon as 32 KiB are waiting (streams.Gatherer), so it never holds back a
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
        self._tick_error_logged = False
        self._reader_refusal: Optional[str] = None  # what a forced reader last said, logged once
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

    def connection(self) -> Connection:
        """A new connection to the broker, as the event thread makes it (not connected yet)."""
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
        connection = self.connection()
        try:
            connection.connect()
            settings = self.settings
            stream = readers.open_stream(
                connection, settings.event_reader, settings.events_exchange, settings.accept_content
            )
            return self._consume_stream(stream)
        finally:
            self.store.exporter.set_connected(False)
            try:
                connection.release()
            except Exception:  # the connection is already broken; nothing left to close
                log.debug("error while closing the broker connection", exc_info=True)

    def _consume_stream(self, stream: EventStream) -> bool:
        """The one consume loop, whatever the reader: open, report connected, then read ->
        decode and handle -> tick -> gather after a read that brought messages; close."""
        try:
            early = stream.open(SUBSCRIBE_TIMEOUT)
            self._connected(stream.name)
            decode, read_many, gather = stream.decode, stream.read_many, stream.gather
            self._deliver(early, decode, self.clock.now())
            stop, clock = self.stop_event.is_set, self.clock
            while not stop():
                batch = read_many(DRAIN_TIMEOUT)
                now = clock.now()  # messages of one read arrived together
                if batch:
                    self._deliver(batch, decode, now)
                self._tick(now, stream)
                if batch:
                    gather(COALESCE_SECONDS)
            return True
        finally:
            stream.close()  # (py-amqp's frame reader hands the socket back; the connection closes after)

    def _deliver(self, batch: List[Any], decode: Callable[[Any], Any], now: float) -> None:
        """Each payload of one read decoded and its events handled (a `task.multi` list is a
        batch from one worker). The per-message path: no call here that it can do without."""
        handle = self.handler.handle
        for payload in batch:
            try:
                body = decode(payload)
            except UndecodableMessage as exc:
                self.handler.undecodable(exc)
                continue
            if isinstance(body, list):  # task.multi: a batch from one worker
                for event in body:
                    try:
                        handle(event, now)
                    except Exception:  # a bug in handling must not stop the receiver
                        self._handler_failed(event)
            else:
                try:
                    handle(body, now)
                except Exception:  # a bug in handling must not stop the receiver
                    self._handler_failed(body)
            # Let go of this message's objects before the next decode allocates its own, as
            # a call per message did: memory reused at once keeps what the handler retains
            # (task records) compact, and the collector's full passes over it cheap (measured:
            # without this, 10 % more CPU per event at the same work).
            body = event = None

    def _tick(self, now: float, stream: EventStream) -> None:
        """About every TICK_INTERVAL: the stream's check (AMQP heartbeats; a count of what
        the broker sent, pongs and heartbeat frames too, or None where it cannot count:
        then a connection that stays up counts as heard), and the upkeep."""
        if now - self._last_tick >= TICK_INTERVAL:
            self._last_tick = now
            received = stream.check()
            if received is None:
                self.store.exporter.heard(now)
            elif received != self._received:
                self._received = received
                self.store.exporter.heard(now)
            self._upkeep(now)

    def _upkeep(self, now: float) -> None:
        """On the event thread's tick, connected or not: release held events, and every
        --sweep-interval remove expired label sets from memory. The sweep takes the store's
        lock as event handling does, so it needs no thread of its own. A bug in either must
        neither end the thread (it runs in the backoff too) nor pass for a broker outage."""
        try:
            self._tick_and_sweep(now)
        except Exception:
            self.handler.drop("handler_error", "the tick raised")
            if not self._tick_error_logged:
                self._tick_error_logged = True
                log.exception("the event thread's tick failed (logged once)")

    def _tick_and_sweep(self, now: float) -> None:
        self.handler.tick(now)
        if self._next_sweep is None:
            self._next_sweep = now + self.settings.sweep_interval
        elif now >= self._next_sweep:
            self._next_sweep = now + self.settings.sweep_interval
            removed = self.store.sweep(now)
            if removed:
                log.debug("swept %d expired label sets", removed)

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
        if isinstance(exc, ReaderUnavailable):  # the broker answered: the forced reader cannot read
            if str(exc) != self._reader_refusal:
                self._reader_refusal = str(exc)
                log.error("%s; retrying with backoff up to %.0f s", exc, self.settings.reconnect_backoff[1])
            else:
                log.debug("still refused: %s", exc)
            return
        self._reader_refusal = None
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

    def _handler_failed(self, event: Any) -> None:
        self.handler.drop("handler_error", "the event handler raised")
        if not self._handler_error_logged:
            self._handler_error_logged = True
            log.exception("event handler failed on an event (logged once): %.300r", event)
