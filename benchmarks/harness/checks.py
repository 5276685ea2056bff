"""The consumers' counters against the generator's ground truth."""

from __future__ import annotations

from typing import Dict, List

from harness.measure import Samples, metric_sum


def exporter_checks(samples: Samples, gen: dict) -> List[dict]:
    """The exporter's own counters against the generator's ground truth."""
    p = gen["published"]
    attempts_started = p.get("task-started", 0)
    expect = [
        ("celery_task_sent_total", p.get("task-sent", 0)),
        ("celery_task_received_total", p.get("task-received", 0)),
        ("celery_task_started_total", p.get("task-started", 0)),
        ("celery_task_succeeded_total", p.get("task-succeeded", 0)),
        ("celery_task_failed_total", p.get("task-failed", 0)),
        ("celery_task_retried_total", p.get("task-retried", 0)),
        ("celery_task_exceptions_total", p.get("task-failed", 0) + p.get("task-retried", 0)),
        ("celery_task_runtime_seconds_count", p.get("task-succeeded", 0)),
        ("celery_task_queue_wait_seconds_count", attempts_started),
        ("celery_task_prefetch_wait_seconds_count", attempts_started),
        ("celery_exporter_events_dropped_total", 0),
        ("celery_exporter_broker_reconnects_total", 0),
        ("celery_exporter_broker_connected", 1),
        ("celery_worker_up", len(gen["workers"])),
        ("celery_exporter_series{kind=task}", gen["task_series"]),
        ("celery_exporter_series{kind=exception}", gen["exception_series"]),
        ("celery_exporter_series{kind=worker}", len(gen["workers"])),
    ]
    for etype, n in p.items():
        expect.append((f"celery_exporter_events_total{{type={etype}}}", n))
    checks = []
    for name, want in expect:
        if "{" in name:
            base, label = name[:-1].split("{")
            key, value = label.split("=")
            got = metric_sum(samples, base, **{key: value})
        else:
            got = metric_sum(samples, name)
        checks.append({"metric": name, "expected": want, "got": got, "ok": got == want})
    return checks


def reference_checks(by_type: Dict[str, int], gen: dict) -> List[dict]:
    """The reference's own per-type counts against the ground truth."""
    return [
        {"metric": f"events{{type={t}}}", "expected": n, "got": by_type.get(t, 0), "ok": by_type.get(t, 0) == n}
        for t, n in gen["published"].items()
    ]
