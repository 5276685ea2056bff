"""The generator's loop: worker-online from every worker, then one publish batch per
iteration (the heartbeats due, the pipeline steps the pacing allows, and the workers'
buffers flushed every --flush-interval), until every task has ended; then what it published."""

from __future__ import annotations

import argparse
import os
import random
import time

from loadgen.pacing import Pacing
from loadgen.publish import Publisher
from loadgen.tasks import TaskStream
from loadgen.workers import HeartbeatSchedule, Workers


class Generator:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed * 1000 + args.shard_index)
        self.publisher = Publisher(args)
        self.workers = Workers(args, self.publisher, self.rng)
        self.stream = TaskStream(args, self.publisher, self.workers, self.rng)
        self.pacing = Pacing(args)

    @property
    def events_emitted(self) -> int:
        return self.stream.events_emitted + self.workers.heartbeats_sent

    def iteration(self, now: float, elapsed: float, heartbeats: HeartbeatSchedule) -> int:
        """One loop iteration, one publish batch (a Redis pipeline) unless --no-pipeline: the
        heartbeats due, then the pipeline steps. Returns the steps it was allowed; -1 once
        the stream has ended."""
        stream = self.stream
        if not stream.stop_new and self.pacing.stop_new(self.events_emitted, elapsed):
            stream.stop_new = True
        steps = self.pacing.steps(self.events_emitted, elapsed)
        with self.publisher.batch():
            for i in heartbeats.due(now):
                self.workers.heartbeat(i)
            busy = all(stream.step() for _ in range(steps))  # stops at the first False
            if now >= self.next_flush or not busy:
                self.workers.flush_all()
                self.next_flush = now + self.args.flush_interval
        return steps if busy else -1

    def run(self) -> dict:
        t_start = time.time()
        m0 = time.monotonic()
        cpu0 = time.process_time()
        heartbeats = HeartbeatSchedule(self.workers.ids, self.args.heartbeat_interval, m0)
        self.next_flush = m0 + self.args.flush_interval
        with self.publisher.batch():
            for i in self.workers.ids:
                self.workers.heartbeat(i, "worker-online")
        while True:
            now = time.monotonic()
            steps = self.iteration(now, now - m0, heartbeats)
            if steps < 0:
                break
            if self.pacing.rate and steps == 0:
                self.sleep_until_due(m0, heartbeats)
        self.workers.check_nothing_left()
        elapsed = time.monotonic() - m0
        t_end = time.time()
        self.publisher.release()
        return self.result(t_start, t_end, elapsed, cpu0)

    def sleep_until_due(self, m0: float, heartbeats: HeartbeatSchedule) -> None:
        """Paced and not behind: sleep until the next flush, heartbeat or events are due."""
        wake = min(self.next_flush, heartbeats.soonest(), self.pacing.next_event_at(m0, self.events_emitted))
        delay = wake - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def result(self, t_start: float, t_end: float, elapsed: float, cpu0: float) -> dict:
        args, stream = self.args, self.stream
        counts = self.publisher.counts()
        return {
            "shard": [args.shard_index, args.shards],
            "pid": os.getpid(),
            **counts,
            "tasks": stream.next_task,
            "outcomes": dict(stream.outcomes),
            "workers": self.workers.hostnames(),
            "task_series": sorted(list(k) for k in stream.task_series),
            "exception_series": sorted(list(k) for k in stream.exception_series),
            "t_start": t_start,
            "t_end": t_end,
            "elapsed_s": round(elapsed, 4),
            "events_per_s": round(counts["total_events"] / elapsed, 1) if elapsed > 0 else None,
            "cpu_s": round(time.process_time() - cpu0, 3),
        }
