"""benchmarks/replay.py: the stream it makes is the scenario's, and a replay hands every
event to the exporter, which counts each one (so its figures are of the whole handling)."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from replay import T0, replay, stream  # noqa: E402

from celery_exporter.clock import FakeClock  # noqa: E402
from celery_exporter.collector import CeleryCollector  # noqa: E402
from celery_exporter.handlers import Handler  # noqa: E402
from celery_exporter.settings import Settings  # noqa: E402
from celery_exporter.store import Store  # noqa: E402


def test_the_stream_has_the_scenarios_shape():
    events = stream(1000, names=20, workers=4, queues=4, fail=0.1, retry=0.1, rate=1000.0)
    by_type = Counter(e["type"] for e in events)
    failed, retried = by_type["task-failed"], by_type["task-retried"]
    assert 60 < failed < 140 and 60 < retried < 140  # 10 % each of 1,000, drawn
    assert by_type["task-sent"] == by_type["task-received"] == by_type["task-started"] == 1000 + retried
    assert by_type["task-succeeded"] == 1000 - failed  # a retried task's next attempt succeeds
    assert {e["hostname"] for e in events if e["type"] == "worker-heartbeat"} == {
        f"celery@worker-{i:03d}" for i in range(4)
    }
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps) and stamps[-1] - T0 < (len(events) + 1) / 1000.0
    # a retried task: its next attempt's task-sent comes before its task-retried, as Celery sends them
    uuid = next(e["uuid"] for e in events if e["type"] == "task-retried")
    mine = [(e["type"], e.get("retries")) for e in events if e.get("uuid") == uuid]
    assert mine.index(("task-sent", 1)) < mine.index(("task-retried", None)) < mine.index(("task-received", 1))


def test_a_replay_counts_every_event_and_scrapes_on_stream_time(caplog):
    events = stream(500, names=5, workers=2, queues=2, fail=0.1, retry=0.1, rate=1000.0)
    handling, scraping, scrapes, lines = replay(events, 0.25, "text")
    assert handling > 0 and scraping > 0 and lines > 100
    span = events[-1]["timestamp"] - T0
    assert int(span / 0.25) - 1 <= scrapes <= int(span / 0.25) + 1
    # what the exporter made of the same stream: every task event counted, none dropped
    settings = Settings()
    store = Store(settings)
    handler = Handler(store, settings)
    with caplog.at_level(logging.ERROR):
        for event in events:
            handler.handle(dict(event), event["timestamp"])
    handler.tick(events[-1]["timestamp"] + 60)
    collector = CeleryCollector(store, settings, FakeClock(events[-1]["timestamp"] + 60))
    totals = Counter()
    for family in collector.families():
        if family.name.startswith("celery_task_") and family.kind == "counter":
            totals[family.name] += sum(m.value for m in family.metrics)
    by_type = Counter(e["type"] for e in events)
    for state in ("sent", "received", "started", "succeeded", "failed", "retried"):
        assert totals[f"celery_task_{state}"] == by_type[f"task-{state}"], state
