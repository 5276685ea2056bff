"""kombu's own consumer as an event reader (streams.EventStream): every transport kombu
speaks, through its public API only. The reader `auto` takes it where no lean reader works
(transports other than Redis and py-amqp, Redis with `sentinel_fanout_compat`, a kombu or
redis-py whose internals changed); `--event-reader kombu` forces it on any broker, for when a
lean reader misbehaves after a library upgrade.

kombu delivers a message to a callback from inside `Connection.drain_events`; here the
callback only appends it to the batch that read_many() returns, so the event thread
decodes and handles kombu's messages as it does every other reader's payloads.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterable, List, Optional

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer

from celery_exporter.streams import KOMBU, UndecodableMessage

OPEN_DRAIN = 0.01  # open(): one short drain, in which kombu's Redis transport subscribes


class DrainedStream:
    """What a reader that kombu's `Connection.drain_events` feeds shares: each message its
    callback is given is appended to `batch`, and read_many() hands out what one drain
    brought. A connection error after a message of the same drain is raised by the next
    read, so that the message is still handled (as a direct callback would have)."""

    name: str

    def __init__(self, connection: Connection):
        self.connection = connection
        self.batch: List[Any] = []
        self._error: Optional[BaseException] = None

    def open(self, timeout: float) -> List[Any]:
        """Nothing to wait for: the consumer was set up when the stream was made."""
        return []

    def read_many(self, timeout: float) -> List[Any]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        batch = self.batch
        try:
            self.connection.drain_events(timeout=timeout)
        except socket.timeout:
            pass
        except Exception as exc:  # the connection failed after delivering: raised next time
            if not batch:
                raise
            self._error = exc
        out = batch.copy()
        batch.clear()
        return out

    def gather(self, seconds: float) -> None:
        """Nothing: kombu reads what it reads, one message (or frame) at a time."""

    def check(self) -> Optional[int]:
        """kombu's heartbeat check (AMQP), then py-amqp's count of frames received; other
        transports count nothing (None)."""
        self.connection.heartbeat_check()
        received: Optional[int] = getattr(self.connection.connection, "bytes_recv", None)
        return received

    def close(self) -> None:
        """Nothing: the consumer goes with the connection."""


def decode_message(message: Any) -> Any:
    """The event or batch in a kombu Message, as kombu decodes it (with the consumer's
    accept list), or an UndecodableMessage that kombu's consumer refused before."""
    if isinstance(message, UndecodableMessage):
        raise message
    try:
        return message.decode()
    except Exception as exc:  # not JSON, disallowed content type...: each serializer has its own error
        content_type = getattr(message, "content_type", None)
        raise UndecodableMessage(
            f"{type(exc).__name__}: {str(exc)[:200]}", content_type if isinstance(content_type, str) else None
        ) from None


class KombuStream(DrainedStream):
    """kombu's Consumer on the exporter's own event queue (`queue`, see readers.event_queue)."""

    name = KOMBU

    def __init__(self, connection: Connection, queue: Queue, accept: Iterable[str]):
        super().__init__(connection)
        self.decode: Callable[[Any], Any] = decode_message
        self.consumer = Consumer(
            connection.channel(),
            queues=[queue],
            accept=list(accept),
            no_ack=True,
            on_message=self.batch.append,
            on_decode_error=self._undecodable,
        )
        self.consumer.consume()

    def open(self, timeout: float) -> List[Any]:
        """kombu's Redis transport sends PSUBSCRIBE lazily, on the first drain: one short
        drain before the stream counts as open, so /-/ready never says yes while events
        still go unheard. The messages it brought."""
        return self.read_many(min(timeout, OPEN_DRAIN))

    def _undecodable(self, message: Any, exc: BaseException) -> None:
        """kombu's consumer found the message broken before it reached on_message (its
        compression could not be undone): counted like any undecodable message, where
        kombu's default would raise out of drain_events and drop the connection."""
        content_type = getattr(message, "content_type", None)
        self.batch.append(
            UndecodableMessage(
                f"{type(exc).__name__}: {str(exc)[:200]}", content_type if isinstance(content_type, str) else None
            )
        )
