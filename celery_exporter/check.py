"""`celery-exporter check`: a one-shot diagnosis for first setup and CI.

It runs the exporter's own pieces for a while (the event thread with its handler and store,
then one inspect and one queue-length poll), takes one snapshot, and reports what it saw and
what the diagnosis (diagnosis.problems) found, each problem with its fix. Exit code 0 when
all is well, 1 when problems were found, 2 when the broker cannot be reached.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Dict, List, Optional

from celery_exporter import diagnosis
from celery_exporter.clock import Clock
from celery_exporter.diagnosis import Problem
from celery_exporter.handlers import Handler
from celery_exporter.poller import Inspector, QueuePoller
from celery_exporter.receiver import Receiver, mask_url
from celery_exporter.settings import Settings
from celery_exporter.store import Snapshot, Store

OK, PROBLEMS, UNREACHABLE = 0, 1, 2
# The check listens for a short while only: a task received after this much listening is
# judged for its missing task-sent (the exporter waits diagnosis.SENT_MISSING_GRACE).
SENT_MISSING_GRACE = 2.0
STOP_TIMEOUT = 3.0


@dataclasses.dataclass(frozen=True)
class Report:
    broker: str
    reachable: bool
    error: str
    listened: float
    reader: Optional[str]
    workers: List[Dict[str, Any]]
    task_sent_events: int
    task_events: int
    queues: Dict[str, int]
    undecodable: Dict[str, int]
    beat_entries: List[str]
    problems: List[Problem]

    @property
    def exit_code(self) -> int:
        if not self.reachable:
            return UNREACHABLE
        return PROBLEMS if self.problems else OK

    def as_json(self) -> str:
        body = dataclasses.asdict(self)
        body["exit_code"] = self.exit_code
        return json.dumps(body, indent=2, sort_keys=True)

    def as_table(self) -> str:
        rows: List[List[str]] = [
            ["broker", self.broker, "reachable" if self.reachable else f"UNREACHABLE: {self.error}"]
        ]
        if self.reachable:
            rows.append(["listened", f"{self.listened:.0f} s", f"reader {self.reader or '-'}"])
            rows.append(["workers heard", str(len(self.workers)), ", ".join(w["hostname"] for w in self.workers)])
            for w in self.workers:
                events = {True: "task events on", False: "task events OFF", None: "task events not known (no task)"}
                skew = f"clock skew {w['clock_skew']:+.2f} s" if w["clock_skew"] is not None else "clock skew -"
                interval = f"heartbeat {w['heartbeat_interval']:g} s" if w["heartbeat_interval"] else "heartbeat -"
                rows.append([f"  {w['hostname']}", events[w["task_events"]], f"{skew}, {interval}"])
            rows.append(["task events", str(self.task_events), "task-sent seen: " + str(self.task_sent_events)])
            queues = ", ".join(f"{q}={n}" for q, n in sorted(self.queues.items())) or "none known"
            rows.append(["queues", str(len(self.queues)), queues])
            bad = {k: n for k, n in self.undecodable.items() if n}
            rows.append(["undecodable events", str(sum(bad.values())), ", ".join(f"{k}={n}" for k, n in bad.items())])
            rows.append(["beat entries", str(len(self.beat_entries)), ", ".join(self.beat_entries)])
        width = [max(len(r[i]) for r in rows) for i in range(2)]
        lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}".rstrip() for r in rows]
        if self.problems:
            lines.append("")
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"- {p.line()}" for p in self.problems)
        elif self.reachable:
            lines.append("")
            lines.append("no problems found")
        return "\n".join(lines)


def reach(settings: Settings, receiver: Receiver) -> Optional[str]:
    """None when the broker answers a connection the way the event thread makes it; else why not."""
    connection = receiver.connection()
    try:
        connection.ensure_connection(max_retries=1, timeout=5)
        connection.default_channel.close()  # Redis connects lazily: a channel makes it talk
        return None
    except Exception as exc:  # any transport's error: the broker cannot be reached
        return f"{type(exc).__name__}: {exc}"
    finally:
        try:
            connection.release()
        except Exception:  # already broken
            pass


def run(settings: Settings, listen: float, clock: Optional[Clock] = None) -> Report:
    clock = clock or Clock()
    stop = threading.Event()
    store = Store(settings)
    handler = Handler(store, settings)
    handler.sent_missing_grace = SENT_MISSING_GRACE
    receiver = Receiver(settings, handler, store, clock, stop)
    url = mask_url(settings.broker_url)
    error = reach(settings, receiver)
    if error is not None:
        return Report(url, False, error, 0.0, None, [], 0, 0, {}, {}, [], [])
    started = time.monotonic()
    # the event thread, and the inspector as the exporter runs it (the queues workers consume
    # fix the labels of tasks without task-sent, as they do in the exporter)
    threads: List[threading.Thread] = [receiver]
    if settings.inspect:
        threads.append(Inspector(settings, store, clock, stop))
    for thread in threads:
        thread.start()
    stop.wait(listen)
    # the diagnosis of what the event thread heard while it was connected
    snap = store.snapshot(clock.now())
    found = diagnosis.problems(snap, settings)
    stop.set()
    for thread in threads:
        thread.join(STOP_TIMEOUT)
    listened = time.monotonic() - started
    if snap.exporter.reader is None:  # never got to read events
        return Report(url, False, "the event stream did not open", listened, None, [], 0, 0, {}, {}, [], [])
    poller = QueuePoller(settings, store, clock, threading.Event())  # one poll, of every queue known now
    try:
        poller.poll_once()
    finally:
        poller.close()
    queues = store.snapshot(clock.now()).queues.depths
    return _report(url, snap, found, listened, {q: d[0] for q, d in queues.items()})


def _report(url: str, snap: Snapshot, found: List[Problem], listened: float, queues: Dict[str, int]) -> Report:
    own = snap.exporter
    workers = [
        {
            "hostname": w.hostname,
            "up": w.up,
            "task_events": w.task_events,
            "clock_skew": round(w.skew, 3) if w.skew is not None else None,
            "heartbeat_interval": w.freq,
            "processed": w.processed,
        }
        for w in sorted(snap.workers.workers, key=lambda w: w.hostname)
    ]
    return Report(
        broker=url,
        reachable=True,
        error="",
        listened=round(listened, 1),
        reader=own.reader,
        workers=workers,
        task_sent_events=own.events.get("task-sent", 0),
        task_events=sum(n for t, n in own.events.items() if t.startswith("task-")),
        queues=queues,
        undecodable=dict(snap.diagnosis.undecodable),
        beat_entries=sorted(e.name for e in snap.schedule.entries),
        problems=found,
    )
