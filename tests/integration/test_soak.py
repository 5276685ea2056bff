"""Soak: a steady event rate with worker churn (a new worker name every few seconds, hundreds
in all) and task series that come and go. After the TTLs have turned over once, the
exporter's memory must stay flat and its series bounded by what is alive.

CI runs a short variant (SOAK_SECONDS, default 75). The longer run recorded in docs/failure-behaviour.md:
    SOAK_SECONDS=600 python -m pytest tests/integration/test_soak.py -s
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import List, Tuple

import pytest
from celery import Celery

from .rig import RedisServer

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("SOAK_SECONDS", "75"))
RATE = 400  # events/s
WORKER_LIFE = 0.25  # seconds before the next worker name takes over (300 names in 75 s)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Load(threading.Thread):
    """Worker heartbeats and task events, published with Celery's own dispatcher."""

    def __init__(self, url: str, seconds: float):
        super().__init__(daemon=True)
        self.app = Celery("soak", broker=url, set_as_current=False)
        self.seconds = seconds
        self.workers = 0
        self.events = 0
        self.error = None

    def run(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                start = time.monotonic()
                dispatcher = None
                born = -1e9
                i = 0
                while time.monotonic() - start < self.seconds:
                    now = time.monotonic()
                    if now - born >= WORKER_LIFE:  # churn: a new pod name; the old one just stops
                        self.workers += 1
                        dispatcher = self.app.events.Dispatcher(conn, hostname=f"pod-{uuid.uuid4().hex[:10]}@soak")
                        dispatcher.send("worker-online", freq=1.0, active=0, processed=0)
                        born = now
                        last_beat = now
                    if now - last_beat >= 1.0:
                        dispatcher.send("worker-heartbeat", freq=1.0, active=1, processed=i)
                        last_beat = now
                        self.events += 1
                    task_id = uuid.uuid4().hex
                    # task names churn too: a new batch of names every 10 s
                    name = f"soak.task{(i % 20)}.gen{int(now - start) // 10}"
                    ts = time.time()
                    dispatcher.send("task-received", uuid=task_id, name=name, retries=0, eta=None, timestamp=ts)
                    dispatcher.send("task-started", uuid=task_id, timestamp=ts + 0.001)
                    dispatcher.send("task-succeeded", uuid=task_id, runtime=0.001, timestamp=ts + 0.002)
                    self.events += 4
                    i += 1
                    time.sleep(max(0.0, start + self.events / RATE - time.monotonic()))
        except Exception as exc:  # shown by the test
            self.error = exc
        finally:
            self.app.close()


def test_memory_is_flat_under_worker_and_task_churn(make_rig, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    exporter = rig.start_exporter(
        "--worker-timeout",
        "1s",
        "--worker-ttl",
        "4s",
        "--series-ttl",
        "8s",
        "--sweep-interval",
        "1s",
        "--no-inspect",
        "--log-level",
        "INFO",
    )
    pid = exporter.proc.pid
    load = Load(server.url, SECONDS)
    load.start()
    samples: List[Tuple[float, float, float, float]] = []  # (t, rss MiB, worker series, task series)
    start = time.monotonic()
    while load.is_alive():
        m = exporter.metrics()
        samples.append(
            (
                time.monotonic() - start,
                rss_mib(pid),
                m.get_value("celery_exporter_series", kind="worker"),
                m.get_value("celery_exporter_series", kind="task"),
            )
        )
        time.sleep(1)
    load.join()
    assert load.error is None, load.error
    m = exporter.metrics()
    assert exporter.proc.running

    warm = [s for s in samples if s[0] >= 20]  # after every TTL has turned over a few times
    assert len(warm) >= 10, samples
    first_third = warm[: len(warm) // 3]
    last_third = warm[-(len(warm) // 3) :]
    early_peak = max(s[1] for s in first_third)
    late_peak = max(s[1] for s in last_third)
    print(
        f"soak {SECONDS:.0f} s at {RATE} events/s: {load.workers} worker names, {load.events} events; "
        f"RSS {samples[0][1]:.1f} MiB at start, peak {early_peak:.1f} MiB early vs {late_peak:.1f} MiB late; "
        f"worker series max {max(s[2] for s in warm):.0f}, task series max {max(s[3] for s in warm):.0f}; "
        f"expired: workers {m.get_value('celery_exporter_series_expired_total', kind='worker'):.0f}, "
        f"tasks {m.get_value('celery_exporter_series_expired_total', kind='task'):.0f}"
    )
    assert load.workers >= 0.9 * SECONDS / WORKER_LIFE
    # bounded series: only what lived within its TTL (+ the sweep interval) is kept
    assert max(s[2] for s in warm) <= (4 + 1) / WORKER_LIFE + 2
    assert max(s[3] for s in warm) <= 2 * 20 + 2
    alive = (4 + 1) / WORKER_LIFE + 2  # names still within --worker-ttl (+ the sweep) at the end
    assert m.get_value("celery_exporter_series_expired_total", kind="worker") >= load.workers - alive
    # flat memory: the late peak stays within 3 MiB of the early one
    assert late_peak - early_peak < 3.0, samples
    assert m.get_value("celery_exporter_events_dropped_total", reason="series_limit") == 0
