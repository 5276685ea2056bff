"""A real `celery beat` with a 2-second entry, a real worker, and the exporter reading the
schedule with -A: the entry's runs show, and once beat stops the entry falls behind its due
time, which is what CeleryBeatEntryOverdue reads."""

from __future__ import annotations

import os
import time

import pytest

from .rig import HERE, Metrics, Proc, clean_env, executable

pytestmark = pytest.mark.integration

LABELS = dict(entry="it-tick", task="it.succeed")


def overdue(m: Metrics) -> float:
    return m.after - m.get_value("celery_beat_schedule_next_due_timestamp_seconds", **LABELS)


def test_beat_entry_runs_then_falls_behind_when_beat_stops(make_rig, tmp_path):
    rig = make_rig("redis")
    env = {"IT_BROKER_URL": rig.broker_url, "PYTHONPATH": str(HERE)}
    exporter = rig.start_exporter("-A", "it_worker_app", env=env)
    rig.start_worker(exporter=exporter)
    m = exporter.metrics()
    assert m.get_value("celery_beat_schedule_info", schedule="every 2s", **LABELS) == 1
    assert m.get_value("celery_beat_schedule_interval_seconds", **LABELS) == 2

    beat_env = clean_env(
        IT_BROKER_URL=rig.broker_url,
        IT_TRUTH_URL=rig.truth.url,
        IT_TRUTH_PREFIX=rig.truth.prefix,
        PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    beat = Proc(
        "beat",
        [
            executable("celery"),
            "-A",
            "it_worker_app",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(tmp_path / "beat-schedule"),
            "--pidfile",
            str(tmp_path / "beat.pid"),
        ],
        tmp_path / "beat.log",
        beat_env,
        cwd=HERE,
    )
    rig.procs.append(beat)
    # runs arrive: the last run moves forward, and the entry is never overdue by much
    first = exporter.wait_for(
        lambda m: m.get_value("celery_beat_schedule_last_run_timestamp_seconds", **LABELS),
        30,
        what="a first run of the beat entry",
        contains="beat",
    )
    run1 = first.get_value("celery_beat_schedule_last_run_timestamp_seconds", **LABELS)
    m = exporter.wait_for(
        lambda m: (m.get_value("celery_beat_schedule_last_run_timestamp_seconds", **LABELS) or 0) >= run1 + 3.5,
        20,
        what="two more runs",
        contains="beat",
    )
    assert overdue(m) < 2, overdue(m)
    assert rig.truth.get("it.succeed", "celery", "succeeded") >= 3

    beat.stop()
    stopped = time.time()
    m = exporter.wait_for(lambda m: overdue(m) > 4, 20, what="the entry to fall behind its due time", contains="beat")
    last = m.get_value("celery_beat_schedule_last_run_timestamp_seconds", **LABELS)
    assert last <= stopped + 1
    assert m.get_value("celery_beat_schedule_next_due_timestamp_seconds", **LABELS) == pytest.approx(last + 2, abs=0.01)
