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
import math
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, cast

from celery import Celery
from celery.app.control import Control
from kombu.connection import Connection
from kombu.pidbox import Mailbox

from celery_exporter import internals, learned
from celery_exporter.clock import Clock
from celery_exporter.periodic import Periodic
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.store.queues import QueueDepth

log = logging.getLogger(__name__)


class PollError(Exception):
    """A poll failed; `reason` is a short fixed word for the errors metric."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    return code == 404 or str(code) == "404" or "NOT_FOUND" in str(exc)


class Backend(Protocol):
    """What the poller threads ask of the broker (KombuBackend; a fake in unit tests)."""

    method: Optional[str]  # how the last queue_depths read the lengths

    def queue_depths(self, queues: Iterable[str]) -> Dict[str, QueueDepth]: ...

    def inspect(self, expected_replies: int) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int]]: ...

    def enable_events(self, hostnames: Sequence[str]) -> None: ...
    def tasks(self, expected_replies: int) -> Tuple[Dict[str, Any], Dict[str, Any]]: ...

    def close(self) -> None: ...


class _OwnChannelMailbox(Mailbox):
    """Celery's remote-control mailbox, publishing on the channel of the connection it is
    given instead of a producer from kombu's process-wide pool: Celery's pool would keep
    connections of its own open, which no one closes on stop (and closing them would close
    them for every app in the process with the same broker URL)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["producer_pool"] = None
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # kombu's Mailbox is unannotated


class _Control(Control):  # type: ignore[misc]  # Celery's class is untyped (Any)
    Mailbox = _OwnChannelMailbox


class KombuBackend:
    """Talks to the broker. One instance per poller thread; not thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._connection: Optional[Connection] = None
        self._app: Optional[Celery] = None
        self.method: Optional[str] = None

    def _connect(self) -> Connection:
        """The poller's own connection, made once and kept; an error closes it, and the next
        poll connects again. No retries within one poll: the next poll is the retry."""
        if self._connection is None:
            options: Dict[str, object] = {
                "socket_timeout": self.settings.poll_timeout,
                "socket_connect_timeout": self.settings.poll_timeout,
            }
            options.update(self.settings.transport_options)
            extra = {}
            if self.settings.broker_ssl is not None:
                extra["ssl"] = self.settings.broker_ssl
            connection = Connection(
                self.settings.broker_url, transport_options=options, connect_timeout=self.settings.poll_timeout, **extra
            )
            if connection.transport.driver_type == "amqp":
                # py-amqp takes socket read/write timeouts from the transport options (kombu
                # types them Optional; a constructed Connection always holds a dict)
                transport_options = cast(Dict[str, Any], connection.transport_options)
                transport_options.setdefault("read_timeout", self.settings.poll_timeout)
                transport_options.setdefault("write_timeout", self.settings.poll_timeout)
            connection.ensure_connection(max_retries=0)
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
                try:
                    lists = internals.redis_lists(channel)
                except (AttributeError, TypeError) as exc:
                    internals.fell_back(
                        "reading Redis queue lengths with a passive declare; with a global_keyprefix they read 0", exc
                    )
                else:
                    self.method = "redis-lists"
                    return self._redis_depths(*lists, list(queues))
            self.method = "declare"
            return self._amqp_depths(connection, list(queues))
        except Exception as exc:
            self.close()
            raise PollError("broker", f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _redis_depths(client: Any, steps: List[Any], sep: str, queues: Sequence[str]) -> Dict[str, QueueDepth]:
        """LLEN of every priority list of every queue, in one pipeline. kombu names the list
        of priority step N `<queue><sep><N>` (step 0 is the bare name), and its client adds
        global_keyprefix to every key. A missing list is an empty queue: LLEN answers 0.
        (kombu's passive queue_declare is only the fallback: with global_keyprefix it answers
        404 for queues that exist, because its EXISTS check is not prefixed.)"""
        with client.pipeline() as pipe:
            for queue in queues:
                for step in steps:
                    pipe.llen(f"{queue}{sep}{step}" if step else queue)
            sizes = pipe.execute()
        depths: Dict[str, QueueDepth] = {}
        for i, queue in enumerate(queues):
            depths[queue] = QueueDepth(sum(int(n) for n in sizes[i * len(steps) : (i + 1) * len(steps)]), None)
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
                    depths[queue] = QueueDepth(0, 0)
                    channel = connection.channel()
                    continue
                depths[queue] = QueueDepth(int(messages), int(consumers))
        finally:
            try:
                channel.close()
            except Exception:  # the broker already closed it
                pass
        return depths

    def _control(self) -> Any:
        """Celery's remote control, of an app made once with the exporter's broker settings."""
        if self._app is None:
            app = Celery("celery-exporter", broker=self.settings.broker_url, set_as_current=False, control=_Control)
            app.conf.broker_transport_options = dict(self.settings.transport_options)
            if self.settings.broker_ssl is not None:
                app.conf.broker_use_ssl = self.settings.broker_ssl
            app.conf.accept_content = list(self.settings.accept_content)
            self._app = app
        return self._app.control

    def _inspect(self, expected_replies: int) -> Any:
        """Celery's inspect API over the poller's connection, waiting up to --inspect-timeout,
        or until `expected_replies` replies came (0: the whole timeout)."""
        return self._control().inspect(
            timeout=self.settings.inspect_timeout, limit=expected_replies or None, connection=self._connect()
        )

    def enable_events(self, hostnames: Sequence[str]) -> None:
        """Broadcast `enable_events` to these workers (no reply awaited)."""
        try:
            self._control().enable_events(destination=list(hostnames), connection=self._connect())
        except Exception as exc:
            self.close()
            raise PollError("enable_events", f"{type(exc).__name__}: {exc}") from exc

    def inspect(self, expected_replies: int) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int]]:
        """worker -> queues it consumes, worker -> pool processes (broadcast + replies)."""
        try:
            inspect = self._inspect(expected_replies)
            queues_reply = inspect.active_queues() or {}
            stats_reply = inspect.stats() or {}
        except Exception as exc:
            self.close()
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

    def tasks(self, expected_replies: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The replies (worker -> list of task infos, unchecked: learned.parse checks them)
        to `inspect active` (arguments as reprs: nothing to deserialize) and `inspect
        reserved`."""
        try:
            inspect = self._inspect(expected_replies)
            active = inspect.active(safe=True) or {}
            reserved = inspect.reserved() or {}
        except Exception as exc:
            self.close()
            raise PollError("inspect", f"{type(exc).__name__}: {exc}") from exc
        return active, reserved


class _BrokerPoller(Periodic):
    """A periodic poll of the broker over the thread's own connection (closed on stop)."""

    def __init__(
        self,
        name: str,
        interval: float,
        settings: Settings,
        store: Store,
        clock: Clock,
        stop_event: threading.Event,
        backend: Optional[Backend] = None,
    ):
        super().__init__(name, interval, stop_event)
        self.settings = settings
        self.store = store
        self.clock = clock
        self.backend: Backend = backend or KombuBackend(settings)

    def count_error(self, reason: str) -> None:
        self.store.queues.count_error(reason)

    def close(self) -> None:
        self.backend.close()


class QueuePoller(_BrokerPoller):
    """Queue lengths of the configured queues, the queues seen in task events and the
    queues workers reported consuming, every --queue-poll-interval."""

    what = "queue lengths"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        stop_event: threading.Event,
        backend: Optional[Backend] = None,
    ):
        super().__init__("queue-poller", settings.queue_poll_interval, settings, store, clock, stop_event, backend)

    def queues_to_poll(self, now: float) -> Sequence[str]:
        names = set(self.settings.queues) | self.store.queue_names(now)
        names.discard("unknown")
        return sorted(names)

    def poll_once(self) -> None:
        now = self.clock.now()
        started = time.monotonic()
        queues = self.queues_to_poll(now)
        try:
            depths = self.backend.queue_depths(queues) if queues else {}
        except PollError as exc:
            self.store.queues.poll_failed(time.monotonic() - started)
            self.failed(exc.reason, str(exc))
            return
        self.store.queues.poll_succeeded(depths, time.monotonic() - started, self.clock.now(), self.backend.method)
        self.succeeded()


# A worker up by heartbeat that the last inspect did not report (the exporter started before
# it answered, a slow or new worker) is inspected again after this long, then after twice as
# long each time it is still missing, up to --inspect-interval. Until it is, tasks it receives
# without a task-sent are labelled queue_name="unknown".
INSPECT_RETRY = 2.0
INSPECT_CHECK = 1.0  # how often the thread checks whether an inspect is due


class Inspector(_BrokerPoller):
    """Remote-control inspect every --inspect-interval, in its own thread (a broadcast waits
    for replies, so it never delays the queue lengths): which queues each worker consumes
    and its pool size. Sooner for a worker up by heartbeat that no inspect reported yet.

    And what runs (learned.py): `inspect active` and `inspect reserved` once the event
    stream is connected, at start and after every reconnect (within INSPECT_CHECK of it),
    then on each cycle while runs learned so are not confirmed by their task-started; the
    replies go to the event thread (store.running.offer_learned), which applies them."""

    what = "inspect"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        stop_event: threading.Event,
        backend: Optional[Backend] = None,
    ):
        super().__init__("inspector", settings.inspect_interval, settings, store, clock, stop_event, backend)
        self._last: Optional[float] = None  # exporter clock at the last inspect
        self._retry = INSPECT_RETRY  # wait before inspecting again for an unreported worker
        self._learned_for: Optional[float] = None  # the event stream's connected_since last learned for
        self._learn_again = False  # the last learning failed: again on the next cycle
        self._again_first = False  # ... and it was the first for its connection (logged)

    def next_wait(self) -> float:
        return min(self.interval, INSPECT_CHECK)

    def due(self) -> bool:
        """The first time, every --inspect-interval, and `_retry` after the last inspect
        while a worker up by heartbeat is missing from what inspect reported; and once the
        event stream is (re)connected, to learn what runs."""
        return self._cycle_due() or self._learning(cycle=False) is True

    def _cycle_due(self) -> bool:
        now = self.clock.now()
        if self._last is None or now - self._last >= self.interval:
            return True
        if now - self._last < self._retry:
            return False
        return bool(self.store.workers.up_hosts(now) - set(self.store.queues.worker_queues))

    def _learning(self, cycle: bool) -> Optional[bool]:
        """True: learn now, the first time for this connection of the event stream; False:
        learn again on this `cycle` (learned runs are unconfirmed, or the last try failed;
        looked at on cycles only: counting learned runs goes through every run); None: not
        now (not connected: a task could end unseen before the stream is bound)."""
        since = self.store.exporter.connected_since  # (one attribute, written whole by the event thread)
        if since is None:
            return None
        if since != self._learned_for:
            return True
        if not cycle:
            return None
        return False if self._learn_again or self.store.running.learned_runs() else None

    def poll_once(self) -> None:
        if self._cycle_due():
            self._inspect_workers()
            learning = self._learning(cycle=True)
            if learning is not None:
                self._learn(learning or self._again_first)
        elif self._learning(cycle=False) is True:
            self._learn(True)

    def _inspect_workers(self) -> None:
        now = self.clock.now()
        if self._last is not None and now - self._last < self.interval:
            self._retry = min(self._retry * 2, self.interval)  # an early one: the next waits longer
        self._last = now
        try:
            worker_queues, processes = self.backend.inspect(self.store.workers.up_count(now))
        except PollError as exc:
            self.failed(exc.reason, str(exc))
            return
        self.succeeded()
        if not worker_queues:
            # Nobody answered (all workers down, or remote control off): keep the last map.
            # Per-queue worker counts still drop at once: they count only workers up by heartbeat.
            return
        self.store.queues.set_worker_queues(worker_queues, processes, now)
        if not self.store.workers.up_hosts(self.clock.now()) - set(worker_queues):
            self._retry = INSPECT_RETRY  # everyone up is reported: a new worker gets the short wait

    def _learn(self, first: bool) -> None:
        """Ask what runs and is reserved, and hand it to the event thread. The first time for
        a connection every worker gets the whole --inspect-timeout to answer."""
        since = self.store.exporter.connected_since
        if since is None:
            return
        self._learned_for = since
        asked_at = self.clock.now()
        try:
            active, reserved = self.backend.tasks(0 if first else self.store.workers.up_count(asked_at))
        except PollError as exc:
            self._learn_again, self._again_first = True, first
            self.failed(exc.reason, str(exc))
            return
        self._learn_again = self._again_first = False
        self.succeeded()
        answered, running, waiting, refused = learned.parse(active, reserved)
        self.store.running.offer_learned(learned.Learned(asked_at, since, first, answered, running, waiting, refused))


# --enable-events: how often the diagnosis is read, and how long before a worker still
# diagnosed off is asked again (its command may have been lost, or it restarted without -E).
ENABLE_EVENTS_CHECK = 10.0
ENABLE_EVENTS_RESEND = 30.0


class EventsEnabler(_BrokerPoller):
    """--enable-events: every ENABLE_EVENTS_CHECK seconds, Celery's `enable_events` remote
    control command to the workers up whose task events are diagnosed off (diagnosis.py),
    each at most every ENABLE_EVENTS_RESEND seconds; counted, and logged naming them."""

    what = "enable_events"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        stop_event: threading.Event,
        backend: Optional[Backend] = None,
    ):
        super().__init__("events-enabler", ENABLE_EVENTS_CHECK, settings, store, clock, stop_event, backend)
        self._asked: Dict[str, float] = {}  # hostname -> exporter clock when last asked

    def poll_once(self) -> None:
        now = self.clock.now()
        off = self.store.workers.events_off(now)
        self._asked = {h: at for h, at in self._asked.items() if h in off}  # forget those fixed or gone
        due = sorted(h for h in off if now - self._asked.get(h, -math.inf) >= ENABLE_EVENTS_RESEND)
        if not due:
            return
        try:
            self.backend.enable_events(due)
        except PollError as exc:
            self.failed(exc.reason, str(exc))
            return
        self.succeeded()
        for host in due:
            self._asked[host] = now
        self.store.diagnosis.enable_events_sent(len(due))
        log.info("sent enable_events to %d worker(s) with task events off: %s", len(due), ", ".join(due))
