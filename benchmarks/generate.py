"""Load generator: publishes a realistic Celery event stream straight into the broker.

It uses Celery's own dispatcher and message format (celery.events.EventDispatcher on a
kombu connection), the way real processes do:

* clients publish `task-sent` one event per message, through a disabled dispatcher's
  publish() with a producer, exactly as celery.app.amqp.send_task_message does (with the
  queue, exchange and routing_key fields);
* each worker hostname has its own dispatcher with buffer_group=['task'] (as a worker
  with the event loop, e.g. prefork, has on Redis and AMQP): task-received, task-started
  and task-succeeded/-failed/-retried are buffered and published as `task.multi` list
  messages, flushed every --flush-interval seconds (the worker's loop tick) or as soon as
  --buffer-limit events (24, EventDispatcher's default) are buffered, so no batch holds
  more than 24 events; --buffer-limit 0 turns the buffering off (buffer_group=None, as
  eventlet/gevent workers send): one message per task event, routing key task.<state>;
* each worker sends worker-online once, then worker-heartbeat every --heartbeat-interval
  seconds (unbatched, like Celery's Heart).

Tasks are pipelined so events of different tasks interleave: each step publishes one
task's task-sent and moves the tasks already in flight one stage on (received, started,
outcome), --pipeline-depth tasks apart. A retried task publishes its next attempt (same
uuid, retries+1, a new task-sent) *before* the worker's task-retried, as Celery does (the
pool child publishes the retry while the main process still holds task-retried in its
buffer); that attempt then succeeds. Task i gets name i mod --task-names (every name
appears once per cycle), name n goes to queue n mod --queues, workers take tasks in turn.
Outcomes come from a seeded RNG (--fail-fraction, --retry-fraction).

On Redis, publishing uses kombu's publish batches (one Redis pipeline per loop iteration)
and one reused redis client, so that one generator process out-runs the consumers; the
messages and their order are the same as with one round trip each (--no-pipeline,
--client-per-publish turn both off). On AMQP (py-amqp) kombu has no publish batches: each
message is one basic.publish written to the socket (no publisher confirms), and the
connection's close handshake at the end returns only after the broker has processed
every frame sent before it.

At the end it prints one JSON object on stdout: exactly how many events of each type (and
how many messages) it handed to the broker, the derived ground truth the exporter's
counters must match, and when it started and finished (epoch seconds).

    python benchmarks/generate.py --broker-url redis://127.0.0.1:6390/0 --rate 5000 --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import time
import uuid as uuidlib
from collections import Counter, deque
from typing import Deque, Dict, List, Optional

import celery
from celery import Celery
from celery.events import EventDispatcher
from kombu import Connection, Producer

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, in __protected_call__\n'
    "    return self.run(*args, **kwargs)\n"
    '  File "/app/myproject/apps/orders/tasks.py", line 88, in run\n'
    "    raise {cls}({msg!r})\n"
    "{cls}: {msg}\n"
)
FAILURES = [("ValueError", "invalid order state"), ("KeyError", "customer_id"), ("TimeoutError", "upstream timed out")]
RETRY_EXC = ("ConnectionError", "upstream connection refused")


def task_name(i: int) -> str:
    return f"myproject.apps.orders.tasks.process_order_{i:05d}"


def queue_name(i: int) -> str:
    return "celery" if i == 0 else f"queue_{i:03d}"


def worker_hostname(i: int) -> str:
    return f"celery@worker-{i:03d}"


class CountingDispatcher(EventDispatcher):
    """Celery's EventDispatcher, counting what it actually hands to the broker. With
    buffer_while_offline=False a failed publish raises instead of being buffered silently."""

    def __init__(self, *args, published: Counter, messages: Counter, **kwargs):
        self.published = published
        self.messages = messages
        super().__init__(*args, **kwargs)

    def _publish(self, event, producer, routing_key, **kwargs):
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
    def conn_or_acquire(client_=None):
        yield client_ or client

    channel.conn_or_acquire = conn_or_acquire


class Attempt:
    __slots__ = ("uuid", "index", "name", "queue", "retries", "worker", "outcome", "exc")

    def __init__(self, uuid: str, index: int, name: str, queue: str, retries: int):
        self.uuid, self.index, self.name, self.queue, self.retries = uuid, index, name, queue, retries
        self.worker: Optional[int] = None
        self.outcome = "succeeded"
        self.exc = None


class Generator:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed * 1000 + args.shard_index)
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
        # this shard's workers: hostnames i with i % shards == shard_index
        self.worker_ids = [i for i in range(args.workers) if i % args.shards == args.shard_index]
        if not self.worker_ids:
            raise SystemExit(f"shard {args.shard_index}/{args.shards} owns none of {args.workers} workers")
        # buffer_limit caps a task.multi batch: EventDispatcher.send() flushes as soon as
        # the buffer holds buffer_limit events (Celery's default, 24). 0: no buffering.
        self.workers: Dict[int, CountingDispatcher] = {
            i: CountingDispatcher(
                self.conn,
                hostname=worker_hostname(i),
                app=self.app,
                buffer_group=["task"] if args.buffer_limit > 0 else None,
                buffer_limit=max(1, args.buffer_limit),
                buffer_while_offline=False,
                published=self.published,
                messages=self.messages,
            )
            for i in self.worker_ids
        }
        for d in self.workers.values():
            d.producer = self.producer
        self.processed = {i: 0 for i in self.worker_ids}
        self.next_worker = 0
        self.next_task = 0  # fresh tasks created
        # the pipeline: attempts waiting for received / started / outcome
        self.stage_received: Deque[Attempt] = deque()
        self.stage_started: Deque[Attempt] = deque()
        self.stage_outcome: Deque[Attempt] = deque()
        self.events_emitted = 0
        self.task_series = set()
        self.exception_series = set()
        self.outcomes: Counter = Counter()

    # -- events --------------------------------------------------------------------------

    def _sent(self, a: Attempt) -> None:
        fields = {
            "uuid": a.uuid,
            "root_id": a.uuid,
            "parent_id": None,
            "name": a.name,
            "args": f"({a.index}, 'order-{a.index}')",
            "kwargs": "{'priority': 'normal'}",
            "retries": a.retries,
            "eta": None,
            "expires": None,
            "queue": a.queue,
            "exchange": "",
            "routing_key": a.queue,
        }
        self.client.publish("task-sent", fields, self.producer)
        self.events_emitted += 1

    def _received(self, a: Attempt) -> None:
        a.worker = self.worker_ids[self.next_worker % len(self.worker_ids)]
        self.next_worker += 1
        self.workers[a.worker].send(
            "task-received",
            uuid=a.uuid,
            name=a.name,
            args=f"({a.index}, 'order-{a.index}')",
            kwargs="{'priority': 'normal'}",
            root_id=a.uuid,
            parent_id=None,
            retries=a.retries,
            eta=None,
            expires=None,
        )
        self.events_emitted += 1

    def _started(self, a: Attempt) -> None:
        self.workers[a.worker].send("task-started", uuid=a.uuid)
        self.processed[a.worker] += 1
        self.events_emitted += 1

    def _outcome(self, a: Attempt) -> None:
        d = self.workers[a.worker]
        self.task_series.add((a.name, a.queue))
        if a.outcome == "retried":
            # The task called self.retry(): its pool child publishes the next attempt (same
            # uuid, retries+1, with its task-sent) before the worker's main process sends
            # task-retried, so the new task-sent (and often task-received) reach the broker
            # before the old attempt's task-retried. The old attempt's task-started went out
            # on an earlier loop tick (the task had to run to retry), so flush it first.
            d.flush(errors=False)
            again = Attempt(a.uuid, a.index, a.name, a.queue, a.retries + 1)
            self._sent(again)
            self.stage_received.append(again)
        if a.outcome == "succeeded":
            d.send(
                "task-succeeded",
                uuid=a.uuid,
                result=f"'order-{a.index} done'",
                runtime=round(self.rng.lognormvariate(-3.0, 1.2), 6),
            )
        else:
            cls, msg = a.exc
            d.send(
                f"task-{a.outcome}",
                uuid=a.uuid,
                exception=f"{cls}({msg!r})",
                traceback=TRACEBACK.format(cls=cls, msg=msg),
            )
            self.exception_series.add((a.name, a.queue, cls))
        self.outcomes[a.outcome] += 1
        self.events_emitted += 1

    def _new_attempt(self) -> Optional[Attempt]:
        if not self.more_tasks():
            return None
        i = self.next_task
        self.next_task += 1
        n = self.args.task_names
        # spread the shards' tasks over all names: shard s takes names s, s+K, ... first
        name_index = (i * self.args.shards + self.args.shard_index) % n
        a = Attempt(str(uuidlib.uuid4()), i, task_name(name_index), queue_name(name_index % self.args.queues), 0)
        r = self.rng.random()
        if r < self.args.fail_fraction:
            a.outcome, a.exc = "failed", self.rng.choice(FAILURES)
        elif r < self.args.fail_fraction + self.args.retry_fraction:
            a.outcome, a.exc = "retried", RETRY_EXC
        return a

    def step(self) -> bool:
        """One pipeline step; False once everything is published."""
        new = self._new_attempt()
        if new is not None:
            self._sent(new)
        # advance the pipeline from the end, so one task's events keep their order
        if self.stage_outcome and (new is None or len(self.stage_outcome) >= self.args.pipeline_depth):
            self._outcome(self.stage_outcome.popleft())
        if self.stage_started and (new is None or len(self.stage_started) >= self.args.pipeline_depth):
            a = self.stage_started.popleft()
            self._started(a)
            self.stage_outcome.append(a)
        if self.stage_received and (new is None or len(self.stage_received) >= self.args.pipeline_depth):
            a = self.stage_received.popleft()
            self._received(a)
            self.stage_started.append(a)
        if new is not None:
            self.stage_received.append(new)
        return bool(new is not None or self.stage_received or self.stage_started or self.stage_outcome)

    def more_tasks(self) -> bool:
        if self.args.tasks is not None and self.next_task >= self.tasks_for_shard:
            return False
        if self.stop_new:
            return False
        return True

    def heartbeat(self, i: int, etype: str = "worker-heartbeat") -> None:
        self.workers[i].send(
            etype,
            freq=self.args.heartbeat_interval,
            active=self.rng.randint(0, 8),
            processed=self.processed[i],
            loadavg=[1.2, 1.1, 0.9],
            sw_ident="py-celery",
            sw_ver=celery.__version__,
            sw_sys=platform.system(),
        )
        self.events_emitted += 1

    def batch(self):
        if self.args.no_pipeline:
            return contextlib.nullcontext()
        return self.producer.batch(max_size=self.args.pipeline_max)

    def flush_workers(self) -> None:
        for d in self.workers.values():
            d.flush(errors=False)

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        self.tasks_for_shard = None
        if args.tasks is not None:
            base, extra = divmod(args.tasks, args.shards)
            self.tasks_for_shard = base + (1 if args.shard_index < extra else 0)
        self.stop_new = False
        rate = args.rate / args.shards if args.rate else 0.0
        budget = int(rate * args.duration) if (rate and args.duration and args.tasks is None) else None

        t_start = time.time()
        m0 = time.monotonic()
        cpu0 = time.process_time()
        hb_interval = args.heartbeat_interval
        # stagger heartbeats over the interval, as independent workers would be
        next_hb = {i: m0 + hb_interval * (k + 1) / len(self.worker_ids) for k, i in enumerate(self.worker_ids)}
        next_flush = m0 + args.flush_interval
        with self.batch():
            for i in self.worker_ids:
                self.heartbeat(i, "worker-online")
        busy = True
        while busy:
            now = time.monotonic()
            elapsed = now - m0
            if not self.stop_new:
                if budget is not None and self.events_emitted >= budget:
                    self.stop_new = True
                elif args.duration and args.tasks is None and elapsed >= args.duration:
                    self.stop_new = True
            if rate:
                behind = rate * elapsed - self.events_emitted
                steps = min(args.chunk, int(behind // 4) + 1) if behind >= 1 else 0
            else:
                steps = args.chunk
            # one loop iteration = one publish batch (a Redis pipeline) unless --no-pipeline
            with self.batch():
                for i, due in next_hb.items():
                    if now >= due:
                        self.heartbeat(i)
                        next_hb[i] = due + hb_interval
                for _ in range(steps):
                    if not self.step():
                        busy = False
                        break
                if now >= next_flush or not busy:
                    self.flush_workers()
                    next_flush = now + args.flush_interval
            if rate and busy and steps == 0:
                wake = min(next_flush, min(next_hb.values()), m0 + (self.events_emitted + 4) / rate)
                delay = wake - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        for d in self.workers.values():
            leftover = sum(len(v) for v in d._group_buffer.values()) + len(d._outbound_buffer)
            if leftover:
                raise RuntimeError(f"{leftover} events left unpublished in {d.hostname}'s buffer")
        m1 = time.monotonic()
        t_end = time.time()
        elapsed = m1 - m0
        total = sum(self.published.values())
        multi = self.messages["task.multi"]
        self.conn.release()
        return {
            "shard": [args.shard_index, args.shards],
            "pid": os.getpid(),
            "published": dict(sorted(self.published.items())),
            "total_events": total,
            "messages": self.messages["single"] + multi,
            "task_multi_messages": multi,
            "mean_batch": round(self.messages["task.multi events"] / multi, 2) if multi else None,
            "max_batch": self.messages["max batch"] or None,
            "tasks": self.next_task,
            "outcomes": dict(self.outcomes),
            "workers": [worker_hostname(i) for i in self.worker_ids],
            "task_series": sorted(list(k) for k in self.task_series),
            "exception_series": sorted(list(k) for k in self.exception_series),
            "t_start": t_start,
            "t_end": t_end,
            "elapsed_s": round(elapsed, 4),
            "events_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "cpu_s": round(time.process_time() - cpu0, 3),
        }


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--broker-url", required=True, help="Redis (or AMQP) broker URL")
    size = p.add_argument_group("how much (give --tasks, or --duration with or without --rate)")
    size.add_argument("--tasks", type=int, help="fresh tasks to publish (each ~4 task events, retries more)")
    size.add_argument("--duration", type=float, help="seconds: with --rate, publish rate x duration events")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events/s over all shards, paced (heartbeats included); 0 = as fast as possible",
    )
    p.add_argument("--task-names", type=int, default=20, help="distinct task names")
    p.add_argument("--workers", type=int, default=4, help="worker hostnames (over all shards)")
    p.add_argument("--queues", type=int, default=4, help="queues; task name i is routed to queue i mod queues")
    p.add_argument("--fail-fraction", type=float, default=0.02, help="tasks ending in task-failed")
    p.add_argument(
        "--retry-fraction",
        type=float,
        default=0.02,
        help="tasks that raise Retry once (task-retried, then sent again and succeed)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.005,
        help="seconds between flushes of the workers' task.multi buffers (a worker's loop tick)",
    )
    p.add_argument(
        "--buffer-limit",
        type=int,
        default=24,
        help="EventDispatcher buffer_limit: most events in one task.multi message (Celery's default 24); "
        "0 = no buffering, one message per task event (as eventlet/gevent workers send)",
    )
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="worker heartbeat interval (freq)")
    p.add_argument(
        "--pipeline-depth", type=int, default=2, help="tasks between one task's consecutive events (interleaving)"
    )
    p.add_argument(
        "--chunk", type=int, default=16, help="pipeline steps (tasks) per loop iteration / publish batch when not paced"
    )
    p.add_argument(
        "--no-pipeline",
        action="store_true",
        help="one Redis round trip per message instead of kombu publish batches per loop iteration",
    )
    p.add_argument("--pipeline-max", type=int, default=200, help="kombu publish batch max_size (commands)")
    p.add_argument(
        "--client-per-publish",
        action="store_true",
        help="keep kombu's new redis client per publish (slower generator; same messages)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--shard",
        default="0/1",
        help="i/K: this process is shard i of K generator processes "
        "(owns workers j with j mod K == i; rate and tasks are split)",
    )
    args = p.parse_args(argv)
    if args.tasks is None and args.duration is None:
        p.error("give --tasks or --duration")
    try:
        i, k = (int(x) for x in args.shard.split("/"))
        assert 0 <= i < k
    except (ValueError, AssertionError):
        p.error("--shard must be i/K with 0 <= i < K")
    args.shard_index, args.shards = i, k
    if args.buffer_limit < 0:
        p.error("--buffer-limit must be >= 0")
    if not 0 <= args.fail_fraction + args.retry_fraction <= 1:
        p.error("fail + retry fractions must be within [0, 1]")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    result = Generator(args).run()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
