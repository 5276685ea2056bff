"""Reference consumer: the yardstick the exporter is measured against.

A no-op consumer built on Celery's own EventReceiver (app.events.Receiver) on its own
connection, with one handler for '*' that only counts events (per type), run with
capture(). Everything Celery does per event still happens: kombu's message decode, the
list unpacking of `task.multi` batches, event_from_message (Lamport clock, timestamp
localisation, local_received) and the handler dispatch.

Output, one JSON object per line on stdout:
  {"ready": true, ...}                       once the consumer is set up (on_consume_ready;
                                             on Redis the PSUBSCRIBE follows on the first
                                             drain, so the runner also checks CLIENT LIST;
                                             on AMQP basic.consume-ok has come back, and the
                                             runner checks `rabbitmqctl list_queues`)
  {"count": N, "last_event": t}              at most every --progress-interval s, when N changed
  {"final": true, "count": N, "by_type": {...}, ...}
                                             on SIGTERM/SIGINT, after --idle-timeout s without
                                             a message, or when the connection breaks ("error")

It works on any kombu transport EventReceiver supports (Redis, RabbitMQ):

    python benchmarks/reference.py --broker-url redis://127.0.0.1:6390/0
    python benchmarks/reference.py --broker-url amqp://guest:guest@127.0.0.1:5672/bench --queue-ttl 30

On AMQP its queue (celeryev.<uuid>, auto-delete) has Celery's event_queue_ttl as message
TTL unless --queue-ttl is given: the runner passes the exporter's (30 s), so that neither
consumer's queue drops events earlier than the other's.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Optional

from celery import Celery
from celery.events.receiver import EventReceiver


class Stop(Exception):
    pass


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class CountingReceiver(EventReceiver):
    """EventReceiver with a readiness line. Nothing else is changed."""

    def on_consume_ready(self, connection, channel, consumers, wakeup=True, **kwargs):
        super().on_consume_ready(connection, channel, consumers, wakeup=wakeup, **kwargs)
        emit({"ready": True, "t": time.time()})


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker-url", required=True)
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="exit after this many seconds without a message (0 = only on SIGTERM)",
    )
    p.add_argument("--progress-interval", type=float, default=0.1, help="seconds between progress lines (0 = none)")
    p.add_argument(
        "--wakeup",
        action="store_true",
        help="broadcast the 'heartbeat' wakeup to workers on connect (capture's default; "
        "off here: there are no workers and it adds pidbox traffic)",
    )
    p.add_argument(
        "--queue-ttl",
        type=float,
        default=None,
        help="AMQP: message TTL of the receiver's queue, s (default: Celery's event_queue_ttl, 5 s)",
    )
    args = p.parse_args(argv)

    counts: Counter = Counter()
    state = {"n": 0, "last": None}

    def on_event(event: dict) -> None:
        counts[event["type"]] += 1
        state["n"] += 1
        state["last"] = event["local_received"]

    app = Celery("bench-reference", broker=args.broker_url, set_as_current=False)
    connection = app.connection_for_read()
    receiver = CountingReceiver(connection, handlers={"*": on_event}, app=app, queue_ttl=args.queue_ttl)

    def on_signal(signum, frame):
        receiver.should_stop = True
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    done = threading.Event()

    def progress() -> None:
        last_sent = -1
        while not done.wait(args.progress_interval):
            n = state["n"]
            if n != last_sent:
                last_sent = n
                emit({"count": n, "last_event": state["last"]})

    if args.progress_interval > 0:
        threading.Thread(target=progress, name="progress", daemon=True).start()

    reason, error = "signal", None
    try:
        receiver.capture(limit=None, timeout=args.idle_timeout or None, wakeup=args.wakeup)
        reason = "stopped"
    except Stop:
        reason = "signal"
    except socket.timeout:
        reason = "idle_timeout"
    except Exception as exc:  # the broker dropped us (e.g. Redis output-buffer limit)
        reason, error = "error", f"{type(exc).__name__}: {exc}"
    done.set()
    emit(
        {
            "final": True,
            "reason": reason,
            "error": error,
            "count": state["n"],
            "by_type": dict(sorted(counts.items())),
            "last_event": state["last"],
        }
    )
    try:
        connection.release()
    except Exception:
        pass
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
