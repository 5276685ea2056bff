"""Queue depth and worker capacity, polled in a background thread.

The poller has its own broker connection. Scrapes read the last values from the store and
never wait on it; a failed poll keeps the previous values and is reported in
celery_exporter_queue_poll_* metrics.

Queue lengths come from a passive queue declare, which works on both brokers: on Redis
kombu sums the list of every priority step (honouring priority_steps, sep and
global_keyprefix from the transport options), and on RabbitMQ it is the count of *ready*
messages (prefetched and unacknowledged ones are not in the queue). A queue that does not
exist answers 404, which is 0 on Redis (Redis deletes empty lists) and on RabbitMQ.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple

from celery import Celery
from kombu import Connection

from celery_exporter.clock import Clock
from celery_exporter.settings import Settings
from celery_exporter.store import Store

log = logging.getLogger(__name__)

# (messages ready, consumers or None where the broker cannot tell)
QueueDepth = Tuple[int, Optional[int]]


class PollError(Exception):
    """A poll failed; `reason` is a short fixed word for the errors metric."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    return code == 404 or str(code) == "404" or "NOT_FOUND" in str(exc)


class KombuBackend:
    """Talks to the broker. One instance per poller thread; not thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._connection: Optional[Connection] = None
        self._app: Optional[Celery] = None

    def _connect(self) -> Connection:
        if self._connection is None:
            options = {"socket_timeout": self.settings.poll_timeout,
                       "socket_connect_timeout": self.settings.poll_timeout}
            options.update(self.settings.transport_options)
            extra = {}
            if self.settings.broker_ssl is not None:
                extra["ssl"] = self.settings.broker_ssl
            connection = Connection(self.settings.broker_url, transport_options=options,
                                    connect_timeout=self.settings.poll_timeout, **extra)
            if connection.transport.driver_type == "amqp":
                # py-amqp takes socket read/write timeouts from the transport options
                connection.transport_options.setdefault("read_timeout", self.settings.poll_timeout)
                connection.transport_options.setdefault("write_timeout", self.settings.poll_timeout)
            connection.connect()
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # already broken; nothing to release
                log.debug("error closing the poller connection", exc_info=True)
            self._connection = None

    def queue_depths(self, queues: Iterable[str]) -> Dict[str, QueueDepth]:
        try:
            connection = self._connect()
            channel = connection.default_channel
            if connection.transport.driver_type == "redis":
                return self._redis_depths(channel, list(queues))
            return self._amqp_depths(connection, list(queues))
        except Exception as exc:
            self.close()
            raise PollError("broker", f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _redis_depths(channel, queues: Sequence[str]) -> Dict[str, QueueDepth]:
        """LLEN of every priority list of every queue, in one pipeline. kombu names the list
        of priority step N `<queue><sep><N>` (step 0 is the bare name), and its client adds
        global_keyprefix to every key. A missing list is an empty queue: LLEN answers 0.
        (kombu's passive queue_declare is not used: with global_keyprefix it answers 404 for
        queues that exist, because its EXISTS check is not prefixed.)"""
        steps = list(channel.priority_steps)
        with channel.client.pipeline() as pipe:
            for queue in queues:
                for step in steps:
                    pipe.llen(f"{queue}{channel.sep}{step}" if step else queue)
            sizes = pipe.execute()
        depths: Dict[str, QueueDepth] = {}
        for i, queue in enumerate(queues):
            depths[queue] = (sum(int(n) for n in sizes[i * len(steps):(i + 1) * len(steps)]), None)
        return depths

    @staticmethod
    def _amqp_depths(connection: Connection, queues: Sequence[str]) -> Dict[str, QueueDepth]:
        """Passive declare per queue: ready messages and consumers. A missing queue (404)
        is 0 and closes the channel, so each 404 gets a fresh one."""
        depths: Dict[str, QueueDepth] = {}
        channel = connection.channel()
        try:
            for queue in queues:
                try:
                    _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
                except connection.channel_errors as exc:
                    if not _is_not_found(exc):
                        raise
                    depths[queue] = (0, 0)
                    channel = connection.channel()
                    continue
                depths[queue] = (int(messages), int(consumers))
        finally:
            try:
                channel.close()
            except Exception:  # the broker already closed it
                pass
        return depths

    def inspect(self, expected_replies: int) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int]]:
        """worker -> queues it consumes, worker -> pool processes (broadcast + replies)."""
        if self._app is None:
            app = Celery("celery-exporter", broker=self.settings.broker_url, set_as_current=False)
            app.conf.broker_transport_options = dict(self.settings.transport_options)
            if self.settings.broker_ssl is not None:
                app.conf.broker_use_ssl = self.settings.broker_ssl
            app.conf.accept_content = list(self.settings.accept_content)
            self._app = app
        try:
            inspect = self._app.control.inspect(timeout=self.settings.inspect_timeout,
                                                limit=expected_replies or None)
            queues_reply = inspect.active_queues() or {}
            stats_reply = inspect.stats() or {}
        except Exception as exc:
            raise PollError("inspect", f"{type(exc).__name__}: {exc}") from exc
        worker_queues = {
            worker: tuple(q["name"] for q in (reply or []) if isinstance(q, dict) and isinstance(q.get("name"), str))
            for worker, reply in queues_reply.items()
            if isinstance(reply, list)
        }
        processes = {}
        for worker, stats in stats_reply.items():
            pool = (stats or {}).get("pool") or {}
            count = pool.get("max-concurrency")
            if not isinstance(count, int):
                count = len(pool.get("processes") or [])
            processes[worker] = count
        return worker_queues, processes


class QueuePoller(threading.Thread):
    def __init__(self, settings: Settings, store: Store, clock: Clock, stop_event: threading.Event,
                 backend=None):
        super().__init__(name="queue-poller", daemon=True)
        self.settings = settings
        self.store = store
        self.clock = clock
        self.stop_event = stop_event
        self.backend = backend or KombuBackend(settings)
        self._next_inspect = 0.0
        self._inspect_queues: Set[str] = set()
        self._failing: Set[str] = set()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self.poll_once()
                except Exception:  # a bug must not end polling for good
                    log.exception("queue poll failed unexpectedly")
                    self.store.queue_poll_failed("error", 0.0)
                self.stop_event.wait(self.settings.queue_poll_interval)
        finally:
            self.backend.close()

    def queues_to_poll(self, now: float) -> Sequence[str]:
        """Configured queues, queues seen in task events, and queues workers consume."""
        names = set(self.settings.queues)
        names.update(self.store.task_queue_names(now))
        names.update(self._inspect_queues)
        names.discard("unknown")
        return sorted(names)

    def poll_once(self) -> None:
        now = self.clock.now()
        if self.settings.inspect and now >= self._next_inspect:
            self._next_inspect = now + self.settings.inspect_interval
            self._run_inspect(now)
        started = time.monotonic()
        queues = self.queues_to_poll(now)
        try:
            depths = self.backend.queue_depths(queues) if queues else {}
        except PollError as exc:
            self.store.queue_poll_failed(exc.reason, time.monotonic() - started)
            self._log_failure("queue lengths", exc)
            return
        self.store.queue_poll_succeeded(depths, time.monotonic() - started, self.clock.now())
        self._log_recovery("queue lengths")

    def _run_inspect(self, now: float) -> None:
        expected = self.store.workers_up(now)
        try:
            worker_queues, processes = self.backend.inspect(expected)
        except PollError as exc:
            self.store.queue_poll_failed(exc.reason, 0.0)
            self._log_failure("inspect", exc)
            return
        self._log_recovery("inspect")
        if not worker_queues:
            # Nobody answered (all workers down, or remote control off): keep the last map.
            # Per-queue worker counts still drop at once, as they count only workers up by heartbeat.
            return
        self._inspect_queues = {q for queues in worker_queues.values() for q in queues}
        self.store.set_worker_queues(worker_queues, processes)

    def _log_failure(self, what: str, exc: PollError) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("polling %s failed (%s); keeping the last values and retrying every %.0f s",
                        what, exc, self.settings.queue_poll_interval)

    def _log_recovery(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.info("polling %s works again", what)
