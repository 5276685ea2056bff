"""The simulated workers of one shard: each hostname has its own dispatcher (buffering task
events into task.multi messages, as a prefork worker's does), counts the tasks it started,
and sends worker-online once, then worker-heartbeat every --heartbeat-interval seconds
(unbatched, like Celery's Heart), staggered over the interval."""

from __future__ import annotations

import argparse
import platform
import random
from typing import Any, Dict, List

import celery

from loadgen.publish import CountingDispatcher, Publisher


def worker_hostname(i: int) -> str:
    return f"celery@worker-{i:03d}"


class Workers:
    def __init__(self, args: argparse.Namespace, publisher: Publisher, rng: random.Random):
        self.args, self.rng = args, rng
        # this shard's workers: hostnames i with i % shards == shard_index
        self.ids = [i for i in range(args.workers) if i % args.shards == args.shard_index]
        if not self.ids:
            raise SystemExit(f"shard {args.shard_index}/{args.shards} owns none of {args.workers} workers")
        self.dispatchers: Dict[int, CountingDispatcher] = {
            i: publisher.worker_dispatcher(worker_hostname(i)) for i in self.ids
        }
        self.processed = {i: 0 for i in self.ids}
        self.next_worker = 0
        self.heartbeats_sent = 0  # worker-online and worker-heartbeat events

    def take(self) -> int:
        """The worker that receives the next task: they take tasks in turn."""
        worker = self.ids[self.next_worker % len(self.ids)]
        self.next_worker += 1
        return worker

    def send(self, worker: int, etype: str, **fields: Any) -> None:
        self.dispatchers[worker].send(etype, **fields)

    def flush(self, worker: int) -> None:
        self.dispatchers[worker].flush(errors=False)

    def flush_all(self) -> None:
        for d in self.dispatchers.values():
            d.flush(errors=False)

    def heartbeat(self, i: int, etype: str = "worker-heartbeat") -> None:
        self.dispatchers[i].send(
            etype,
            freq=self.args.heartbeat_interval,
            active=self.rng.randint(0, 8),
            processed=self.processed[i],
            loadavg=[1.2, 1.1, 0.9],
            sw_ident="py-celery",
            sw_ver=celery.__version__,
            sw_sys=platform.system(),
        )
        self.heartbeats_sent += 1

    def check_nothing_left(self) -> None:
        """Every buffered event was published."""
        for d in self.dispatchers.values():
            leftover = sum(len(v) for v in d._group_buffer.values()) + len(d._outbound_buffer)
            if leftover:
                raise RuntimeError(f"{leftover} events left unpublished in {d.hostname}'s buffer")

    def hostnames(self) -> List[str]:
        return [worker_hostname(i) for i in self.ids]


class HeartbeatSchedule:
    """When each worker's next heartbeat is due: staggered over the interval from the start,
    as independent workers would be, then every interval."""

    def __init__(self, ids: List[int], interval: float, start: float):
        self.interval = interval
        self.next_at = {i: start + interval * (k + 1) / len(ids) for k, i in enumerate(ids)}

    def due(self, now: float) -> List[int]:
        """The workers due at `now`, each moved on by one interval."""
        out = []
        for i, at in self.next_at.items():
            if now >= at:
                out.append(i)
                self.next_at[i] = at + self.interval
        return out

    def soonest(self) -> float:
        return min(self.next_at.values())
