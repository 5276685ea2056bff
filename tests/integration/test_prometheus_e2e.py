"""The shipped dashboards and alerts against a real Prometheus (Debian's `prometheus`)
scraping the real exporter, with its default flags, while real workers process tasks:
every dashboard query and template variable returns data, and CeleryWorkerLost goes to
firing for a SIGKILLed worker (its `for:` shortened through the alert configuration, rendered by
alerts/generate.py) and for no other worker, and CeleryTasksInterrupted for the task name it
was running."""

from __future__ import annotations

import json
import signal
import time
from typing import Dict

import pytest

from .promstack import Load, Prometheus, app_env, dashboard_queries, rules_file, variable_queries
from .rig import wait_for

pytestmark = pytest.mark.integration


def test_dashboards_and_worker_lost_alert_on_a_real_prometheus(make_rig, tmp_path):
    rules = rules_file(tmp_path, {"alerts": {"CeleryWorkerLost": {"for": "5s"}}})

    rig = make_rig("redis")
    # the default timings (--worker-timeout 30s, --worker-ttl 15m); -A for the beat schedule panels
    exporter = rig.start_exporter("-A", "it_worker_app", short_timings=False, env=app_env(rig))
    doomed = rig.start_worker(queues=("celery", "q2"), concurrency=2, exporter=exporter)
    survivor = rig.start_worker(queues=("celery",), concurrency=1, exporter=exporter)
    prometheus = Prometheus(tmp_path, exporter.port, rules)
    rig.procs.append(prometheus.proc)
    rig.prime(exporter)

    load = Load(rig)
    load.start()
    try:
        # 1. Every query of every panel returns data (polled: rates need a few scrapes, and
        #    the per-queue worker counts the first inspect after the workers started).
        pending = dashboard_queries()
        assert len(pending) >= 40
        results: Dict[str, list] = {}

        def all_answer():
            for key, expr in list(pending.items()):
                result = prometheus.query(expr)
                if result:
                    results[key] = result
                    del pending[key]
            return not pending

        wait_for(
            all_answer,
            90,
            interval=1,
            what="every dashboard query to return data",
            describe=lambda: "no data yet:\n" + "\n".join(f"{k}: {v}" for k, v in pending.items()),
        )
        assert load.error is None, load.error

        for key, (selector, label) in variable_queries().items():
            values = prometheus.api("series", **{"match[]": selector})
            if label in ("cluster", "namespace"):
                # no such target labels here: the variable is empty, its All (".*") matches
                # every series, as the panel queries above showed (test_fleet_e2e sets them)
                assert values and {s.get(label) for s in values} == {None}, (key, values[:2])
                continue
            assert {s.get(label) for s in values} - {None}, (key, selector, label)

        # sanity of a few answers: the values are the exporter's, not just "something"
        up = {r["metric"]["hostname"]: float(r["value"][1]) for r in prometheus.query("celery_worker_up")}
        assert up == {doomed.hostname: 1.0, survivor.hostname: 1.0}
        assert prometheus.query('up{job="celery-exporter"}')[0]["value"][1] == "1"
        exceptions = {r["metric"]["exception"] for r in prometheus.query("celery_task_exceptions_total")}
        assert {"ValueError", "KeyError"} <= exceptions, exceptions
    finally:
        load.stop.set()
        load.join(5)

    # 2. SIGKILL one worker (its whole process group: no worker-offline is sent) while it runs
    #    two tasks of q2, which only it consumes.
    rig.send("it.hold", [300], queue="q2")
    rig.send("it.hold", [300], queue="q2")
    rig.truth.wait({("it.hold", "q2", "started"): 2})
    exporter.wait_for(
        lambda m: m.get_value("celery_task_running", name="it.hold", queue_name="q2") == 2,
        20,
        what="the doomed worker's two it.hold tasks to run",
        contains="it.hold",
    )
    killed_at = time.monotonic()
    doomed.proc.signal_group(signal.SIGKILL)

    def lost_alert():
        firing = prometheus.firing("CeleryWorkerLost")
        assert all(a["hostname"] == doomed.hostname for a in firing), f"wrong worker paged: {firing}"
        return firing

    firing = wait_for(
        lost_alert,
        90,
        interval=1,
        what="CeleryWorkerLost to fire for the killed worker",
        describe=lambda: json.dumps(prometheus.api("alerts"), indent=1)[:3000],
    )
    elapsed = time.monotonic() - killed_at
    assert firing == [
        {
            "alertname": "CeleryWorkerLost",
            "hostname": doomed.hostname,
            "job": "celery-exporter",
            "severity": "critical",
        }
    ]
    # up turns 0 after the 30 s default worker timeout, then 5 s of for:, plus scrape/eval steps
    assert 30 <= elapsed < 60, elapsed
    # the killed worker's series is still there (worker TTL 15 min), the survivor is up
    up = {r["metric"]["hostname"]: float(r["value"][1]) for r in prometheus.query("celery_worker_up")}
    assert up == {doomed.hostname: 0.0, survivor.hostname: 1.0}
    assert prometheus.firing("CeleryNoWorkerUp") == []

    # 3. CeleryTasksInterrupted (for: 0m) fires for the task name the lost worker was running.
    interrupted = wait_for(
        lambda: prometheus.firing("CeleryTasksInterrupted"),
        30,
        interval=1,
        what="CeleryTasksInterrupted to fire",
        describe=lambda: json.dumps(prometheus.query("celery_task_interrupted_total"), indent=1)[:3000],
    )
    assert interrupted == [
        {"alertname": "CeleryTasksInterrupted", "job": "celery-exporter", "name": "it.hold", "severity": "warning"}
    ]
    counted = {
        r["metric"]["queue_name"]: float(r["value"][1])
        for r in prometheus.query('celery_task_interrupted_total{name="it.hold"}')
    }
    assert counted == {"q2": 2.0, "celery": 0.0}, counted
    print(f"{len(results)} dashboard queries answered; CeleryWorkerLost fired {elapsed:.1f} s after SIGKILL")
