"""Publishing: one kombu connection and producer for every dispatcher, Celery's
EventDispatcher counting exactly what it hands to the broker, and kombu publish batches
(one Redis pipeline per loop iteration)."""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from typing import Any, ContextManager, Iterator, Optional

from celery import Celery
from celery.events import EventDispatcher
from kombu import Connection, Producer


class CountingDispatcher(EventDispatcher):  # type: ignore[misc]
    """Celery's EventDispatcher, counting what it actually hands to the broker. With
    buffer_while_offline=False a failed publish raises instead of being buffered silently."""

    def __init__(self, *args: Any, published: Counter, messages: Counter, **kwargs: Any):
        self.published = published
        self.messages = messages
        super().__init__(*args, **kwargs)

    def _publish(self, event: Any, producer: Any, routing_key: str, **kwargs: Any) -> None:
        super()._publish(event, producer, routing_key, **kwargs)
        if producer is None:
            return
        if isinstance(event, list):
            for e in event:
                self.published[e["type"]] += 1
            self.messages["task.multi"] += 1
            self.messages["task.multi events"] += len(event)
            self.messages["max batch"] = max(self.messages["max batch"], len(event))
        else:
            self.published[event["type"]] += 1
            self.messages["single"] += 1


def reuse_redis_client(conn: Connection) -> None:
    """kombu's Redis channel builds a new redis.Redis object for every publish
    (Channel.conn_or_acquire -> _create_client), about 170 us of CPU each, which makes a
    single generator slower than the consumers it must out-run. Reuse one client instead.
    Only the publisher's overhead changes: the commands and message bytes are the same."""
    channel = conn.default_channel
    if conn.transport.driver_type != "redis":
        return
    client = channel._create_client()

    @contextlib.contextmanager
    def conn_or_acquire(client_: Optional[Any] = None) -> Iterator[Any]:
        yield client_ or client

    channel.conn_or_acquire = conn_or_acquire


class Publisher:
    """The connection, the counts of what was published, the client's dispatcher (task-sent)
    and the one producer every dispatcher publishes through."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.app = Celery("bench-generator", broker=args.broker_url, set_as_current=False)
        self.app.conf.event_serializer = "json"
        self.conn = Connection(args.broker_url)
        self.conn.ensure_connection(max_retries=5)
        if not args.client_per_publish:
            reuse_redis_client(self.conn)
        self.published: Counter = Counter()
        self.messages: Counter = Counter()
        # the client: a disabled dispatcher whose publish() gets a producer, as in send_task_message
        self.client = CountingDispatcher(
            self.conn,
            enabled=False,
            app=self.app,
            published=self.published,
            messages=self.messages,
            buffer_while_offline=False,
        )
        # One producer for every dispatcher (they share the connection's channel anyway), so
        # one kombu publish batch (a Redis pipeline) can carry a whole loop iteration.
        self.producer = Producer(self.conn)

    def task_sent(self, fields: dict) -> None:
        self.client.publish("task-sent", fields, self.producer)

    def worker_dispatcher(self, hostname: str) -> CountingDispatcher:
        """A worker's dispatcher: buffer_limit caps a task.multi batch (EventDispatcher.send()
        flushes as soon as the buffer holds that many; Celery's default, 24). 0: no buffering."""
        limit = self.args.buffer_limit
        d = CountingDispatcher(
            self.conn,
            hostname=hostname,
            app=self.app,
            buffer_group=["task"] if limit > 0 else None,
            buffer_limit=max(1, limit),
            buffer_while_offline=False,
            published=self.published,
            messages=self.messages,
        )
        d.producer = self.producer
        return d

    def batch(self) -> ContextManager[Any]:
        """One publish batch (a Redis pipeline), unless --no-pipeline."""
        if self.args.no_pipeline:
            return contextlib.nullcontext()
        batch: ContextManager[Any] = self.producer.batch(max_size=self.args.pipeline_max)
        return batch

    def counts(self) -> dict:
        """Exactly what was handed to the broker."""
        total = sum(self.published.values())
        multi = self.messages["task.multi"]
        return {
            "published": dict(sorted(self.published.items())),
            "total_events": total,
            "messages": self.messages["single"] + multi,
            "task_multi_messages": multi,
            "mean_batch": round(self.messages["task.multi events"] / multi, 2) if multi else None,
            "max_batch": self.messages["max batch"] or None,
        }

    def release(self) -> None:
        self.conn.release()
