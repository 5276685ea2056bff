"""The shipped dashboards and alerts against a real Prometheus (Debian's `prometheus`)
scraping the real exporter, with its default flags, while real workers process tasks:
every dashboard query and template variable returns data; the SLO recording rules give the
failure ratio and queue wait of the real workers' tasks (as the raw series give them) and the
failure budget's page fires for the one task name that fails, under its own objective; and
CeleryWorkerLost goes to firing for a SIGKILLed worker (its `for:` shortened through the alert
configuration, rendered by alerts/generate.py) and for no other worker, and
CeleryTasksInterrupted for the task name it was running."""

from __future__ import annotations

import json
import signal
import time
from typing import Dict, List

import pytest

from .promstack import Load, Prometheus, app_env, dashboard_queries, rules_file, variable_queries
from .rig import wait_for

pytestmark = pytest.mark.integration


def test_dashboards_and_worker_lost_alert_on_a_real_prometheus(make_rig, tmp_path):
    # it.fail fails every run: with its own objective of 95 % (a budget of 5 %) it burns 20x,
    # above the page's 14.4x, after two runs (the minimum-traffic guard: runs x 14.4 x 5 % > 1)
    rules = rules_file(
        tmp_path,
        {"alerts": {"CeleryWorkerLost": {"for": "5s"}}, "taskFailureSlo": {"taskTargets": {"it.fail": 0.95}}},
    )

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

        # 2. The SLO recording rules on the workers' series, and the failure budget's page.
        slo_rules_on_real_series(prometheus)
    finally:
        load.stop.set()
        load.join(5)

    # 3. SIGKILL one worker (its whole process group: no worker-offline is sent) while it runs
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

    # 4. CeleryTasksInterrupted (for: 0m) fires for the task name the lost worker was running.
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


def by_label(result: List[dict], label: str) -> Dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def slo_rules_on_real_series(prometheus: Prometheus) -> None:
    """The recording rules give what the exporter's series give: it.fail fails every run,
    it.succeed none; the objective is the configured one (95 % for it.fail, the default
    99.9 % for the others); every task waited less than the 60 s threshold. The rates are
    compared at the very time the rules recorded them."""
    objectives = by_label(prometheus.query("celery:task_slo:objective"), "name")
    assert objectives["it.fail"] == 0.95 and objectives["it.succeed"] == 0.999, objectives
    ratios = by_label(prometheus.query('celery:task_failed:ratio_rate5m{name=~"it.fail|it.succeed"}'), "name")
    assert ratios == {"it.fail": 1.0, "it.succeed": 0.0}, ratios
    for name in ("it.fail", "it.succeed"):
        stamp = float(prometheus.query(f'timestamp(celery:task_finished:rate5m{{name="{name}"}})')[0]["value"][1])
        recorded = float(prometheus.query(f'celery:task_finished:rate5m{{name="{name}"}}', stamp)[0]["value"][1])
        raw = (
            f'sum(rate(celery_task_succeeded_total{{name="{name}"}}[5m])) '
            f'+ sum(rate(celery_task_failed_total{{name="{name}"}}[5m]))'
        )
        assert recorded > 0 and recorded == float(prometheus.query(raw, stamp)[0]["value"][1]), name
    waits = by_label(prometheus.query("celery:queue_wait_slow:ratio_rate5m"), "queue_name")
    assert waits.get("celery") == 0.0 and set(waits) <= {"celery", "q2"}, waits
    thresholds = by_label(prometheus.query("celery:queue_wait_slo:threshold_seconds"), "queue_name")
    assert thresholds.get("celery") == 60.0, thresholds
    assert by_label(prometheus.query("celery:queue_wait_tasks:rate5m"), "queue_name")["celery"] > 0

    def paged():
        firing = prometheus.firing("CeleryTaskFailureBudgetFastBurn")
        assert all(a["name"] == "it.fail" for a in firing), f"wrong task paged: {firing}"
        return firing

    firing = wait_for(
        paged,
        60,
        interval=1,
        what="the failure budget's page for it.fail",
        describe=lambda: json.dumps(prometheus.query("celery:task_failed:ratio_rate1h"), indent=1)[:3000],
    )
    assert firing == [
        {
            "alertname": "CeleryTaskFailureBudgetFastBurn",
            "job": "celery-exporter",
            "name": "it.fail",
            "severity": "critical",
        }
    ]
