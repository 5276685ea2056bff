"""The event handling alone, in one process: a scenario's task stream, made as event dicts
in the shapes the generator publishes, handed to the exporter's Handler and Store at a fake
clock (no broker, no threads, no decoding), with a text scrape every --scrape seconds of
stream time. It runs on whatever Python starts it, so it measures that Python's build:

    /tmp/before/.venv/bin/python benchmarks/replay.py -s sustained --scrape 0.1
    .venv/bin/python benchmarks/replay.py -s sustained --scrape 0.1 --instructions

Figures: CPU seconds per 100k events of the handling and of the scrapes, apart (median and
range over --repeats); with --instructions, the instructions of one warm replay per task, as
valgrind's callgrind counts them (the replay run twice in one process, minus run once: the
imports and the first run's warm-up cancel out). Instruction counts repeat to a few in ten
thousand where this VM's timings move by a fifth from one minute to the next, so they tell a
change of a few per cent in the handling that the full runs (run.py) cannot resolve. They
leave out what the full runs measure besides: reading and decoding, the GIL, the kernel.
With --profile FILE, one run under cProfile, the functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

from harness.scenarios import SCENARIOS
from loadgen.tasks import FAILURES, RETRY_EXC, TRACEBACK, queue_name, task_name
from loadgen.workers import worker_hostname

import celery_exporter
from celery_exporter.clock import FakeClock
from celery_exporter.collector import CeleryCollector
from celery_exporter.exposition import Encoders
from celery_exporter.handlers import Handler
from celery_exporter.settings import Settings
from celery_exporter.store import Store

T0 = 1_800_000_000.0
HEARTBEAT_EVERY = 2.0  # s of stream time, Celery's default
TICK_EVERY = 0.5  # s: the receiver's tick
Event = Dict[str, Any]


def _event(etype: str, hostname: str, ts: float, **fields: Any) -> Event:
    event = {"type": etype, "hostname": hostname, "utcoffset": 0, "pid": 4242, "clock": 1, "timestamp": ts}
    event.update(fields)
    return event


def stream(tasks: int, names: int, workers: int, queues: int, fail: float, retry: float, rate: float) -> List[Event]:
    """`tasks` tasks, one after the other, their events `1 / rate` s apart; each worker's
    heartbeat every HEARTBEAT_EVERY s. A retried task's next attempt (a new task-sent) comes
    before its task-retried, as Celery sends them, and then succeeds."""
    rng = random.Random(1)
    hosts = [worker_hostname(i) for i in range(workers)]
    processed = [0] * workers
    events: List[Event] = []
    clock = [T0, T0]  # now, next heartbeats

    def add(etype: str, hostname: str, **fields: Any) -> None:
        clock[0] += 1.0 / rate
        events.append(_event(etype, hostname, clock[0], **fields))
        if clock[0] >= clock[1]:
            clock[1] += HEARTBEAT_EVERY
            for w, host in enumerate(hosts):
                events.append(
                    _event(
                        "worker-heartbeat",
                        host,
                        clock[0],
                        freq=HEARTBEAT_EVERY,
                        active=1,
                        processed=processed[w],
                        loadavg=[0.5, 0.4, 0.3],
                        sw_ident="py-celery",
                        sw_ver="5.7.0",
                        sw_sys="Linux",
                    )
                )

    for i in range(tasks):
        uuid = f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
        name, queue = task_name(i % names), queue_name(i % names % queues)
        w = i % workers
        draw = rng.random()
        for retries in (0, 1) if fail <= draw < fail + retry else (0,):
            body = {"root_id": uuid, "parent_id": None, "name": name, "args": f"({i},)", "kwargs": "{}"}
            more = {"retries": retries, "eta": None, "expires": None}
            if retries == 0:
                add("task-sent", "gen@bench", uuid=uuid, queue=queue, exchange="", routing_key=queue, **body, **more)
            add("task-received", hosts[w], uuid=uuid, **body, **more)
            add("task-started", hosts[w], uuid=uuid)
            processed[w] += 1
            if draw < fail:
                cls, msg = rng.choice(FAILURES)
                tb = TRACEBACK.format(cls=cls, msg=msg)
                add("task-failed", hosts[w], uuid=uuid, exception=f"{cls}({msg!r})", traceback=tb)
            elif retries == 0 and draw < fail + retry:
                cls, msg = RETRY_EXC
                again = {**more, "retries": 1}
                add("task-sent", "gen@bench", uuid=uuid, queue=queue, exchange="", routing_key=queue, **body, **again)
                tb = TRACEBACK.format(cls=cls, msg=msg)
                add("task-retried", hosts[w], uuid=uuid, exception=f"{cls}({msg!r})", traceback=tb)
            else:
                add("task-succeeded", hosts[w], uuid=uuid, result="None", runtime=round(rng.lognormvariate(-3, 1.2), 6))
    return events


def replay(events: List[Event], scrape_every: float, fmt: str) -> Tuple[float, float, int, int]:
    """One replay into a new Handler and Store: (CPU s handling, CPU s scraping, scrapes,
    lines in the last scrape)."""
    settings = Settings()
    clock = FakeClock(T0)
    store = Store(settings)
    handler = Handler(store, settings)
    collector = CeleryCollector(store, settings, clock)
    encoders = Encoders()
    handling = scraping = 0.0
    scrapes = lines = 0
    next_tick, next_scrape = T0 + TICK_EVERY, (T0 + scrape_every if scrape_every else None)
    cpu = time.process_time
    for start in range(0, len(events), 64):  # (the clock is read per batch: its cost stays out)
        began = cpu()
        for event in events[start : start + 64]:
            now = clock.t = event["timestamp"]
            handler.handle(dict(event), now)  # (a copy: the receiver hands over a fresh dict)
        if clock.t >= next_tick:
            handler.tick(clock.t)
            next_tick += TICK_EVERY
        handling += cpu() - began
        if next_scrape is not None and clock.t >= next_scrape:
            began = cpu()
            body = encoders.encode(collector.families(), fmt)
            scraping += cpu() - began
            scrapes += 1
            lines = body.count(b"\n")
            next_scrape += scrape_every
    return handling, scraping, scrapes, lines


def instructions(argv: List[str], tasks: int) -> int:
    """Instructions of one warm replay (callgrind: two runs minus one), per task."""
    counts = []
    for runs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out"]
                + [sys.executable, os.path.abspath(__file__), *argv, "--repeats", str(runs), "--quiet"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise SystemExit(f"callgrind printed no count: {out.stderr[-500:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) // tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        "-s",
        default="sustained",
        choices=sorted(SCENARIOS),
        help="names, workers, queues, failures, retries and rate from this scenario",
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument(
        "--scrape", type=float, default=0.0, help="a scrape every this many seconds of stream time (0: none)"
    )
    parser.add_argument("--format", default="text", choices=["text", "openmetrics", "protobuf"])
    parser.add_argument("--repeats", "-r", type=int, default=5)
    parser.add_argument("--profile", metavar="FILE", help="one run under cProfile, its stats saved to FILE")
    parser.add_argument("--instructions", action="store_true", help="instructions per task, under valgrind")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = SCENARIOS[args.scenario]
    rate = s.rate or 10_000.0
    if args.instructions:
        argv = ["-s", args.scenario, "--tasks", str(args.tasks), "--scrape", str(args.scrape), "--format", args.format]
        per_task = instructions(argv, args.tasks)
        print(
            f"{args.scenario}, {args.tasks:,} tasks, scrape every {args.scrape:g} s: {per_task:,} instructions per task"
        )
        return
    events = stream(args.tasks, s.task_names, s.workers, s.queues, s.fail_fraction, s.retry_fraction, rate)
    logging.disable(logging.WARNING)  # (the diagnosis' warnings, once per name)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(replay, events, args.scrape, args.format)
        profile.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(30)
        return
    per_100k = 1e5 / len(events)
    handled, scraped = [], []
    for _ in range(args.repeats):
        handling, scraping, scrapes, lines = replay(events, args.scrape, args.format)
        handled.append(handling * per_100k)
        scraped.append(scraping * per_100k)
    if args.quiet:
        return
    where = os.path.dirname(celery_exporter.__file__)
    print(f"# celery_exporter from {where}; {args.scenario}: {len(events):,} events of {args.tasks:,} tasks", end="")
    print(f" at {rate:,.0f}/s, {args.repeats} repeats")
    for what, values in (("handling", handled), ("scraping", scraped)):
        print(f"{what}: {statistics.median(values):.3f} [{min(values):.3f} - {max(values):.3f}] CPU s per 100k events")
    if args.scrape:
        print(f"scrapes: {scrapes} per run, {lines:,} lines in the last")


if __name__ == "__main__":
    main()
