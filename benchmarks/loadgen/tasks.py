"""The task stream of one shard: fresh tasks (task i gets name i mod --task-names, name n
goes to queue n mod --queues), each attempt's events in order (task-sent from the client;
task-received, task-started and the outcome from its worker), the outcomes drawn from a
seeded RNG, and the pipeline that interleaves tasks: each step publishes one task's
task-sent and moves the tasks already in flight one stage on, --pipeline-depth tasks apart.

A retried task publishes its next attempt (same uuid, retries+1, a new task-sent) before
the worker's task-retried, as Celery does; that attempt then succeeds."""

from __future__ import annotations

import argparse
import random
import uuid as uuidlib
from collections import Counter, deque
from typing import Callable, Deque, Optional, Set, Tuple

from loadgen.publish import Publisher
from loadgen.workers import Workers

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


class Attempt:
    __slots__ = ("uuid", "index", "name", "queue", "retries", "worker", "outcome", "exc")

    def __init__(self, uuid: str, index: int, name: str, queue: str, retries: int):
        self.uuid, self.index, self.name, self.queue, self.retries = uuid, index, name, queue, retries
        self.worker: Optional[int] = None
        self.outcome = "succeeded"
        self.exc: Optional[Tuple[str, str]] = None


class TaskStream:
    def __init__(self, args: argparse.Namespace, publisher: Publisher, workers: Workers, rng: random.Random):
        self.args, self.publisher, self.workers, self.rng = args, publisher, workers, rng
        self.tasks_for_shard: Optional[int] = None
        if args.tasks is not None:
            base, extra = divmod(args.tasks, args.shards)
            self.tasks_for_shard = base + (1 if args.shard_index < extra else 0)
        self.stop_new = False  # no more fresh tasks (the duration or the event budget is reached)
        self.next_task = 0  # fresh tasks created
        # the pipeline: attempts waiting for received / started / outcome
        self.stage_received: Deque[Attempt] = deque()
        self.stage_started: Deque[Attempt] = deque()
        self.stage_outcome: Deque[Attempt] = deque()
        self.events_emitted = 0  # task events handed to a dispatcher
        self.task_series: Set[Tuple[str, str]] = set()
        self.exception_series: Set[Tuple[str, str, str]] = set()
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
        self.publisher.task_sent(fields)
        self.events_emitted += 1

    def _received(self, a: Attempt) -> None:
        a.worker = self.workers.take()
        self.workers.send(
            a.worker,
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
        assert a.worker is not None
        self.workers.send(a.worker, "task-started", uuid=a.uuid)
        self.workers.processed[a.worker] += 1
        self.events_emitted += 1

    def _outcome(self, a: Attempt) -> None:
        assert a.worker is not None
        self.task_series.add((a.name, a.queue))
        if a.outcome == "retried":
            # The task called self.retry(): its pool child publishes the next attempt (same
            # uuid, retries+1, with its task-sent) before the worker's main process sends
            # task-retried, so the new task-sent (and often task-received) reach the broker
            # before the old attempt's task-retried. The old attempt's task-started went out
            # on an earlier loop tick (the task had to run to retry), so flush it first.
            self.workers.flush(a.worker)
            again = Attempt(a.uuid, a.index, a.name, a.queue, a.retries + 1)
            self._sent(again)
            self.stage_received.append(again)
        if a.outcome == "succeeded":
            result, runtime = f"'order-{a.index} done'", round(self.rng.lognormvariate(-3.0, 1.2), 6)
            self.workers.send(a.worker, "task-succeeded", uuid=a.uuid, result=result, runtime=runtime)
        else:
            assert a.exc is not None
            cls, msg = a.exc
            exception, traceback = f"{cls}({msg!r})", TRACEBACK.format(cls=cls, msg=msg)
            self.workers.send(a.worker, f"task-{a.outcome}", uuid=a.uuid, exception=exception, traceback=traceback)
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

    # -- the pipeline ----------------------------------------------------------------------

    def _advance(self, stage: Deque[Attempt], emit: Callable[[Attempt], None], draining: bool) -> Optional[Attempt]:
        """The stage's oldest attempt, its event sent, once the stage is full (or the stream
        drains: no fresh task came this step)."""
        if stage and (draining or len(stage) >= self.args.pipeline_depth):
            a = stage.popleft()
            emit(a)
            return a
        return None

    def step(self) -> bool:
        """One pipeline step; False once everything is published."""
        new = self._new_attempt()
        if new is not None:
            self._sent(new)
        draining = new is None
        # advance the pipeline from the end, so one task's events keep their order
        self._advance(self.stage_outcome, self._outcome, draining)
        started = self._advance(self.stage_started, self._started, draining)
        if started is not None:
            self.stage_outcome.append(started)
        received = self._advance(self.stage_received, self._received, draining)
        if received is not None:
            self.stage_started.append(received)
        if new is not None:
            self.stage_received.append(new)
        return bool(new is not None or self.stage_received or self.stage_started or self.stage_outcome)

    def more_tasks(self) -> bool:
        if self.tasks_for_shard is not None and self.next_task >= self.tasks_for_shard:
            return False
        return not self.stop_new
