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
The parts live in loadgen/ (see its __init__).

    python benchmarks/generate.py --broker-url redis://127.0.0.1:6390/0 --rate 5000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from loadgen.generator import Generator


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
