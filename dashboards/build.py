#!/usr/bin/env python3
"""Builds the Grafana dashboards in this folder: overview, tasks and workers.

The JSON files are what users import; this script is how they are kept consistent (the
same datasource and job variables, the same panel shapes). After a change, run
`python dashboards/build.py` and commit the JSON; tests/artifacts/test_dashboards.py fails
when the JSON and this script disagree. Standard library only.

Every panel reads the datasource from the `datasource` variable (no datasource UID of
anyone's Grafana is in the files) and filters by the `cluster`, `namespace` and `job`
variables (in the monitoring-mixin order), so several exporters, clusters and namespaces can
share a Prometheus. Where a label does not exist, its variable matches everything (".*").

Replicas: two exporters watching one broker export identical series that differ only in
`instance` and `pod`. Every query takes `max without (instance, pod)` of a series (or of its
rate) before it sums, so one or two replicas give the same numbers. Quantiles and means of
histograms need no such step: doubling every bucket, sum and count changes neither.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'
TASK = f'{JOB}, name=~"$name", queue_name=~"$queue"'
WORKER = f'{JOB}, hostname=~"$hostname"'
RATE = "$__rate_interval"
TAGS = ["celery", "celery-exporter"]


# -- building blocks ------------------------------------------------------------------------


class Layout:
    """Places panels on Grafana's 24-column grid, row by row."""

    def __init__(self):
        self.panels: List[dict] = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": self._id(),
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def one(expr: str) -> str:
    """The series of several exporter replicas as one: they differ only in instance and pod."""
    return f"max without (instance, pod) ({expr})"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def targets(*pairs) -> List[dict]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(
    title: str, description: str, tgts: List[dict], unit: str = "short", stack: bool = False, min_: Optional[float] = 0
) -> dict:
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min_ is not None:
        defaults["min"] = min_
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    expr: str,
    unit: str = "short",
    thresholds: Optional[List[dict]] = None,
    mappings: Optional[List[dict]] = None,
) -> dict:
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}, "mappings": mappings or []},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def table(title: str, description: str, expr: str, hide: List[str], rename: Dict[str, str]) -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}, "renameByName": rename}}
        ],
    }


def variable_query(name: str, label: str, query: str, metric_label: str) -> dict:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"query": f"label_values({query}, {metric_label})", "refId": f"{name}-values"},
        "definition": f"label_values({query}, {metric_label})",
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def variables(*extra: dict) -> dict:
    datasource = {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "hide": 0,
        "current": {},
        "options": [],
    }
    # the monitoring-mixin order: datasource, cluster, namespace, job; each narrows the next
    cluster = variable_query("cluster", "Cluster", "celery_exporter_build_info", "cluster")
    namespace = variable_query("namespace", "Namespace", 'celery_exporter_build_info{cluster=~"$cluster"}', "namespace")
    job = variable_query(
        "job", "Job", 'celery_exporter_build_info{cluster=~"$cluster", namespace=~"$namespace"}', "job"
    )
    return {"list": [datasource, cluster, namespace, job, *extra]}


def dashboard(uid: str, title: str, description: str, layout: Layout, templating: dict, links: bool = True) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["celery-exporter"],
                "asDropdown": False,
                "title": "Celery",
                "includeVars": True,
                "keepTime": True,
            }
        ]
        if links
        else [],
        "templating": templating,
        "panels": layout.panels,
    }


UP_MAPPINGS = [
    {"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}
]
RED_BELOW_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]


def state_rates(selector: str, by: str = "") -> List[dict]:
    group = f" by ({by})" if by else ""
    legend_prefix = f"{{{{{by}}}}} " if by else ""
    return targets(
        *[
            (f"sum{group} ({one(f'rate(celery_task_{state}_total{{{selector}}}[{RATE}])')})", f"{legend_prefix}{state}")
            for state in ("received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
        ]
    )


def failure_ratio(selector: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    failed = f"sum{group} ({one(f'rate(celery_task_failed_total{{{selector}}}[{RATE}])')})"
    succeeded = f"sum{group} ({one(f'rate(celery_task_succeeded_total{{{selector}}}[{RATE}])')})"
    return f"{failed} / ({succeeded} + {failed})"


def quantile(q: float, metric: str, selector: str, by: str) -> str:
    """The q-quantile from the native histogram where Prometheus keeps one (it scraped
    protobuf with native histograms on), else from the classic buckets."""
    native = f"histogram_quantile({q}, sum by ({by}) (rate({metric}{{{selector}}}[{RATE}])))"
    classic = f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    return f"{native} or {classic}"


# The SLO row reads the recording rules of alerts/celery-exporter.rules.yml (the alert
# configuration's objectives, per task name or queue; load the rules for it to show). Recorded
# series carry no instance or pod: they are one per task name or queue already. They are
# restricted to the dashboard's selection by the task series the variables select (a gauge,
# named alike in every scrape format), so that every query still filters by its variables.
SLO_WINDOW = "30d"  # the window the burn-rate factors of the alerts are made for
SLOS = {
    # label, the bad and total rates (recorded), the objective, the task series to restrict by
    "name": ("celery:task_failed", "celery:task_finished", "celery:task_slo:objective"),
    "queue_name": ("celery:queue_wait_slow", "celery:queue_wait_tasks", "celery:queue_wait_slo:objective"),
}


def selected(expr: str, label: str) -> str:
    """A recorded per-task (or per-queue) expression, kept to the label sets the variables select."""
    by = f"cluster, namespace, job, {label}"
    return f"{expr} and on ({by}) group by ({by}) (celery_task_last_received_timestamp_seconds{{{TASK}}})"


def burn_rate(label: str, window: str) -> str:
    """How many times faster than its objective allows the budget goes, over the window."""
    bad, _, objective = SLOS[label]
    return selected(f"{bad}:ratio_rate{window} / (1 - {objective})", label)


def budget_left(label: str) -> str:
    """The part of the error budget of the SLO window that is left (below 0: overspent)."""
    bad, total, objective = SLOS[label]
    spent = f"avg_over_time({bad}:rate5m[{SLO_WINDOW}]) / avg_over_time({total}:rate5m[{SLO_WINDOW}])"
    return selected(f"1 - ({spent}) / (1 - {objective})", label)


def with_exemplars(tgts: List[dict]) -> List[dict]:
    """Latency targets also fetch exemplars: a point per bucket with the task id behind it."""
    for t in tgts:
        t["exemplar"] = True
    return tgts


def quantiles(metric: str, selector: str, by: str) -> List[dict]:
    return with_exemplars(
        targets(*[(quantile(q, metric, selector, by), f"{{{{{by}}}}} p{int(q * 100)}") for q in (0.5, 0.95, 0.99)])
    )


def mean(metric: str, selector: str, by: str) -> str:
    """Sum over count of a histogram, native or classic (as `quantile`)."""
    native = (
        f"sum by ({by}) (histogram_sum(rate({metric}{{{selector}}}[{RATE}]))) "
        f"/ sum by ({by}) (histogram_count(rate({metric}{{{selector}}}[{RATE}])))"
    )
    classic = (
        f"sum by ({by}) (rate({metric}_sum{{{selector}}}[{RATE}])) "
        f"/ sum by ({by}) (rate({metric}_count{{{selector}}}[{RATE}]))"
    )
    return f"({native}) or ({classic})"


# -- the dashboards -------------------------------------------------------------------------


def overview() -> dict:
    lay = Layout()
    lay.row("Tasks")
    lay.add(
        stat(
            "Tasks running",
            "Tasks started and not yet ended (from task events), on workers that are not down.",
            f"sum({one(f'celery_task_running{{{JOB}}}')})",
        ),
        8,
        4,
    )
    lay.add(
        stat(
            "Interrupted (last 1h)",
            "Tasks that were running on a worker when it was lost (SIGKILL, OOM, lost node). "
            "Without acks_late such a task is gone for good; with it, the broker delivers it again.",
            f"round(sum({one(f'increase(celery_task_interrupted_total{{{JOB}}}[1h])')}))",
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        8,
        4,
    )
    lay.add(
        stat(
            "Redelivered (last 1h)",
            "Tasks a worker received again under a task id it had already received: broker "
            "redeliveries (acks_late after a lost worker, Redis' visibility timeout, a requeue).",
            f"round(sum({one(f'increase(celery_task_redelivered_total{{{JOB}}}[1h])')}))",
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
        ),
        8,
        4,
    )
    lay.add(
        timeseries(
            "Task events by state",
            "Tasks per second, by the event that counted them, all task names and queues of the selected jobs.",
            state_rates(JOB),
            unit="ops",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Failure ratio",
            "Failed / (succeeded + failed): tasks that ended in failure.",
            [target(failure_ratio(JOB), "failed / finished")],
            unit="percentunit",
        ),
        6,
    )
    lay.add(
        timeseries(
            "Busiest tasks",
            "The ten task names that finish most often (succeeded + failed).",
            [
                target(
                    f"topk(10, sum by (name) ({one(f'rate(celery_task_succeeded_total{{{JOB}}}[{RATE}])')}) "
                    f"+ sum by (name) ({one(f'rate(celery_task_failed_total{{{JOB}}}[{RATE}])')}))",
                    "{{name}}",
                )
            ],
            unit="ops",
        ),
        6,
    )
    lay.row("Workers")
    lay.add(
        stat(
            "Workers up",
            "Workers whose last heartbeat is younger than the exporter's --worker-timeout.",
            f"sum({one(f'celery_worker_up{{{JOB}}}')})",
            thresholds=RED_BELOW_1,
        ),
        4,
        6,
    )
    lay.add(
        stat(
            "Workers lost",
            "Workers that stopped heartbeating without a warm shutdown (killed, OOM, lost "
            "node). They leave after --worker-timeout plus --worker-ttl.",
            f"count({one(f'celery_worker_up{{{JOB}}}')} == 0) or vector(0)",
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        4,
        6,
    )
    lay.add(
        stat(
            "Tasks active (heartbeats)",
            "Tasks the workers' pools are executing, from their last heartbeats (sampled every "
            "heartbeat; Tasks running above counts from task events).",
            f"sum({one(f'celery_worker_tasks_active{{{JOB}}}')})",
        ),
        4,
        6,
    )
    lay.add(
        timeseries(
            "Workers up over time",
            "Workers up (1 each) and lost (0 each).",
            targets(
                (f"sum({one(f'celery_worker_up{{{JOB}}}')})", "up"),
                (f"count({one(f'celery_worker_up{{{JOB}}}')} == 0) or vector(0)", "lost"),
            ),
        ),
        12,
        6,
    )
    lay.row("Queues")
    lay.add(
        timeseries(
            "Queue length",
            "Messages waiting in each queue (Redis: all priority lists; RabbitMQ: "
            "ready messages). Prefetched tasks are held by workers, not counted here.",
            [target(f"max by (queue_name) (celery_queue_length{{{JOB}}})", "{{queue_name}}")],
        ),
        12,
    )
    lay.add(
        timeseries(
            "Queue wait p95",
            "95th percentile of the time from publishing to start, less any "
            "ETA (needs task_send_sent_event in the publishers).",
            with_exemplars(
                [target(quantile(0.95, "celery_task_queue_wait_seconds", JOB, "queue_name"), "{{queue_name}}")]
            ),
            unit="s",
        ),
        12,
    )
    lay.row("Exporter")
    lay.add(
        stat(
            "Broker connected",
            "Whether every selected exporter is connected to its broker.",
            f"min(celery_exporter_broker_connected{{{JOB}}})",
            thresholds=RED_BELOW_1,
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "NO", "color": "red"}, "1": {"text": "yes", "color": "green"}},
                }
            ],
        ),
        4,
        6,
    )
    lay.add(
        stat(
            "Queue poll",
            "Whether the last queue-length poll of every selected exporter succeeded.",
            f"min(celery_exporter_queue_poll_success{{{JOB}}})",
            thresholds=RED_BELOW_1,
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "failing", "color": "red"}, "1": {"text": "ok", "color": "green"}},
                }
            ],
        ),
        4,
        6,
    )
    lay.add(
        timeseries(
            "Events received",
            "Celery events per second, by type.",
            [target(f"sum by (type) ({one(f'rate(celery_exporter_events_total{{{JOB}}}[{RATE}])')})", "{{type}}")],
            unit="ops",
        ),
        8,
        6,
    )
    lay.add(
        timeseries(
            "Events dropped",
            "Events not turned into metrics, by reason (see the docs: Metrics).",
            [
                target(
                    f"sum by (reason) ({one(f'rate(celery_exporter_events_dropped_total{{{JOB}}}[{RATE}])')})",
                    "{{reason}}",
                )
            ],
            unit="ops",
        ),
        8,
        6,
    )
    lay.add(
        timeseries(
            "Label sets in memory",
            "Series the exporter holds, by kind; they expire after "
            "--series-ttl / --worker-ttl and are capped by --max-series.",
            [target(f"sum by (kind) ({one(f'celery_exporter_series{{{JOB}}}')})", "{{kind}}")],
        ),
        8,
        6,
    )
    lay.add(
        timeseries(
            "Broker reconnects",
            "Broker outages seen by the event receiver.",
            [target(f"sum({one(f'increase(celery_exporter_broker_reconnects_total{{{JOB}}}[{RATE}])')})", "outages")],
        ),
        8,
        6,
    )
    lay.add(
        timeseries(
            "Exporter memory",
            "Resident memory of each exporter process.",
            [target(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}")],
            unit="bytes",
        ),
        8,
        6,
    )
    return dashboard(
        "celery-exporter-overview",
        "Celery / Overview",
        "Throughput, failures, workers, queues and the exporter's own health.",
        lay,
        variables(),
    )


def tasks() -> dict:
    lay = Layout()
    lay.row("Rates")
    lay.add(
        timeseries(
            "Events by state",
            "Task events per second of the selected task names and queues.",
            state_rates(TASK),
            unit="ops",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Failure ratio by task",
            "Failed / (succeeded + failed), per task name.",
            [target(failure_ratio(TASK, "name"), "{{name}}")],
            unit="percentunit",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Succeeded by task",
            "Successes per second, per task name and queue.",
            [
                target(
                    f"sum by (name, queue_name) ({one(f'rate(celery_task_succeeded_total{{{TASK}}}[{RATE}])')})",
                    "{{name}} ({{queue_name}})",
                )
            ],
            unit="ops",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Failed by task",
            "Failures per second, per task name and queue.",
            [
                target(
                    f"sum by (name, queue_name) ({one(f'rate(celery_task_failed_total{{{TASK}}}[{RATE}])')})",
                    "{{name}} ({{queue_name}})",
                )
            ],
            unit="ops",
        ),
        12,
    )
    lay.row("SLOs (from the alert rules' recording rules)")
    lay.add(
        timeseries(
            "Failure budget burn rate",
            "How many times faster than its success-ratio objective allows each task name spends its "
            "failure budget, over the last hour and the last 6 hours. 1 spends the budget in 30 days; "
            "the page fires above 14.4 (1h) or 6 (6h), the ticket above 3 (1d) or 1 (3d). Needs the "
            "rules of alerts/ loaded in Prometheus.",
            targets(
                (burn_rate("name", "1h"), "{{name}} 1h"),
                (burn_rate("name", "6h"), "{{name}} 6h"),
            ),
            min_=None,
        ),
        12,
    )
    lay.add(
        table(
            "Failure budget left (30 days)",
            "The part of its 30-day failure budget each task name has left: 1 - (failure ratio over 30 days) "
            "/ (1 - objective). Below 0 it is overspent. Needs the rules of alerts/ loaded in Prometheus.",
            budget_left("name"),
            hide=["Time", "cluster", "namespace", "job"],
            rename={"name": "task", "Value": "budget left"},
        ),
        12,
    )
    lay.panels[-1]["fieldConfig"]["defaults"] = {"unit": "percentunit"}
    lay.add(
        timeseries(
            "Queue-wait budget burn rate",
            "How many times faster than its queue-wait objective allows each queue spends its budget (tasks "
            "that waited longer than the queue's threshold), over the last hour and 6 hours. From the native "
            "or the classic histogram, whichever Prometheus keeps. Needs the rules of alerts/ loaded.",
            targets(
                (burn_rate("queue_name", "1h"), "{{queue_name}} 1h"),
                (burn_rate("queue_name", "6h"), "{{queue_name}} 6h"),
            ),
            min_=None,
        ),
        12,
    )
    lay.add(
        table(
            "Queue-wait budget left (30 days)",
            "The part of its 30-day queue-wait budget each queue has left. Below 0 it is overspent. Needs the "
            "rules of alerts/ loaded in Prometheus.",
            budget_left("queue_name"),
            hide=["Time", "cluster", "namespace", "job"],
            rename={"queue_name": "queue", "Value": "budget left"},
        ),
        12,
    )
    lay.panels[-1]["fieldConfig"]["defaults"] = {"unit": "percentunit"}
    lay.row("Tasks in flight")
    lay.add(
        timeseries(
            "Running tasks",
            "Tasks started and not yet ended (succeeded, failed, retried, rejected, revoked), "
            "per task name, on workers that are not down; from task events.",
            [target(f"sum by (name) ({one(f'celery_task_running{{{TASK}}}')})", "{{name}}")],
        ),
        8,
    )
    lay.add(
        timeseries(
            "Longest running task",
            "Age of the longest-running task of each name: seconds since it started (exporter "
            "clock). No line while none runs; a line that only rises is a stuck task.",
            [
                target(
                    f"time() - min by (name) (celery_task_running_oldest_start_timestamp_seconds{{{TASK}}})",
                    "{{name}}",
                )
            ],
            unit="s",
        ),
        8,
    )
    lay.add(
        timeseries(
            "Interrupted and redelivered",
            "Tasks per rate interval. Interrupted: running on a worker when it was lost (SIGKILL, "
            "OOM); without acks_late such a task is gone for good. Redelivered: received again "
            "under the same task id (acks_late after a lost worker, visibility timeout, requeue).",
            targets(
                (
                    f"sum by (name) ({one(f'increase(celery_task_interrupted_total{{{TASK}}}[{RATE}])')})",
                    "{{name}} interrupted",
                ),
                (
                    f"sum by (name) ({one(f'increase(celery_task_redelivered_total{{{TASK}}}[{RATE}])')})",
                    "{{name}} redelivered",
                ),
            ),
        ),
        8,
    )
    lay.row("Runtime")
    lay.add(
        timeseries(
            "Runtime p50 / p95 / p99",
            "Run time of succeeded tasks as the worker measured it.",
            quantiles("celery_task_runtime_seconds", TASK, "name"),
            unit="s",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Failed and retried runtime p95",
            "Run time of failed and of retried attempts: task-started to task-failed or task-retried, on the "
            "exporter's clock (Celery sends no runtime with them). A slow failure (a timeout) shows here, "
            "not in the success runtime.",
            with_exemplars(
                targets(
                    (quantile(0.95, "celery_task_failed_runtime_seconds", TASK, "name"), "{{name}} failed p95"),
                    (quantile(0.95, "celery_task_retried_runtime_seconds", TASK, "name"), "{{name}} retried p95"),
                )
            ),
            unit="s",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Mean runtime",
            "Sum of run times / number of runs: of successes, failures and retried attempts.",
            targets(
                (mean("celery_task_runtime_seconds", TASK, "name"), "{{name}} succeeded"),
                (mean("celery_task_failed_runtime_seconds", TASK, "name"), "{{name}} failed"),
                (mean("celery_task_retried_runtime_seconds", TASK, "name"), "{{name}} retried"),
            ),
            unit="s",
        ),
        24,
    )
    lay.row("Exceptions")
    lay.add(
        timeseries(
            "Exceptions by class",
            "Failed and retried attempts per second, by task name and exception class.",
            [
                target(
                    f"sum by (name, exception) ({one(f'rate(celery_task_exceptions_total{{{TASK}}}[{RATE}])')})",
                    "{{name}}: {{exception}}",
                )
            ],
            unit="ops",
        ),
        12,
    )
    lay.add(
        table(
            "Exceptions in the time range",
            "Failed and retried attempts over the dashboard's time range.",
            f"sum by (name, exception) ({one(f'increase(celery_task_exceptions_total{{{TASK}}}[$__range])')})",
            hide=["Time"],
            rename={"name": "task", "exception": "exception", "Value": "count"},
        ),
        12,
    )
    lay.row("Freshness")
    lay.add(
        table(
            "Time since the last success, by queue",
            "Seconds since each task name and queue last succeeded "
            "(exporter clock). A scheduled task that stopped running shows here first.",
            f"time() - max by (name, queue_name) (celery_task_last_succeeded_timestamp_seconds{{{TASK}}})",
            hide=["Time"],
            rename={"name": "task", "queue_name": "queue", "Value": "seconds since success"},
        ),
        12,
    )
    lay.add(
        timeseries(
            "Time since the last success",
            "Seconds since each task name last succeeded; a sawtooth "
            "for periodic tasks, a rising line for one that stopped.",
            [target(f"time() - max by (name) (celery_task_last_succeeded_timestamp_seconds{{{TASK}}})", "{{name}}")],
            unit="s",
        ),
        12,
    )
    lay.row("Scheduled tasks (beat)")
    lay.add(
        table(
            "Beat schedule entries",
            "Entries of the app's beat_schedule (exporter run with --app): seconds "
            "until the next run is due; negative means overdue (the CeleryBeatEntryOverdue alert).",
            f"max by (entry, task) (celery_beat_schedule_next_due_timestamp_seconds{{{JOB}}}) - time()",
            hide=["Time"],
            rename={"entry": "entry", "task": "task", "Value": "seconds until due"},
        ),
        12,
    )
    lay.add(
        timeseries(
            "Seconds since each entry last ran",
            "Time since a worker last received the entry's task; "
            "a sawtooth while beat works, a rising line once it stops.",
            [
                target(
                    f"time() - max by (entry) (celery_beat_schedule_last_run_timestamp_seconds{{{JOB}}})", "{{entry}}"
                )
            ],
            unit="s",
        ),
        12,
    )
    lay.row("Waiting")
    lay.add(
        timeseries(
            "Queue wait p50 / p95 / p99",
            "Publish (task-sent) to start, less any ETA; crosses "
            "hosts, so clock skew is clamped at 0. Needs task_send_sent_event.",
            quantiles("celery_task_queue_wait_seconds", TASK, "queue_name"),
            unit="s",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Prefetch wait p50 / p95 / p99",
            "Received by a worker to started: time a task sat prefetched in a worker (one clock, no skew).",
            quantiles("celery_task_prefetch_wait_seconds", TASK, "queue_name"),
            unit="s",
        ),
        12,
    )
    return dashboard(
        "celery-exporter-tasks",
        "Celery / Tasks",
        "Per task name and queue: rates, SLO burn rates and budgets, tasks in flight, failure ratio, runtime "
        "percentiles, exceptions, waits.",
        lay,
        variables(
            variable_query("queue", "Queue", f"celery_task_received_total{{{JOB}}}", "queue_name"),
            variable_query("name", "Task", f'celery_task_received_total{{{JOB}, queue_name=~"$queue"}}', "name"),
        ),
    )


def workers() -> dict:
    lay = Layout()
    lay.row("Liveness")
    lay.add(
        table(
            "Workers",
            "Every worker the exporter knows: up (heartbeat younger than --worker-timeout) or "
            "down (lost without a warm shutdown, listed until --worker-ttl).",
            one(f"celery_worker_up{{{WORKER}}}"),
            hide=["Time", "__name__", "job", "instance"],
            rename={"hostname": "worker", "Value": "up"},
        ),
        12,
    )
    lay.panels[-1]["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "up"},
            "properties": [
                {"id": "mappings", "value": UP_MAPPINGS},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            ],
        }
    ]
    lay.add(
        timeseries(
            "Heartbeat age",
            "Seconds since each worker's last heartbeat, on the exporter's clock. "
            "Workers heartbeat every 2 s by default.",
            [target(f"time() - {one(f'celery_worker_last_heartbeat_timestamp_seconds{{{WORKER}}}')}", "{{hostname}}")],
            unit="s",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Up",
            "1 while a worker heartbeats, 0 once it is lost.",
            [target(one(f"celery_worker_up{{{WORKER}}}"), "{{hostname}}")],
        ),
        24,
        6,
    )
    lay.row("Work")
    lay.add(
        timeseries(
            "Tasks running",
            "Tasks each worker's pool is executing, from its heartbeats.",
            [target(one(f"celery_worker_tasks_active{{{WORKER}}}"), "{{hostname}}")],
        ),
        12,
    )
    lay.add(
        timeseries(
            "Tasks started per second",
            "From each worker's processed counter (it counts tasks "
            "accepted by the pool, and resets when the worker restarts).",
            [target(one(f"rate(celery_worker_tasks_processed_total{{{WORKER}}}[{RATE}])"), "{{hostname}}")],
            unit="ops",
        ),
        12,
    )
    lay.row("Capacity")
    utilization = f"{one(f'celery_worker_tasks_active{{{WORKER}}}')} / {one(f'celery_worker_pool_size{{{WORKER}}}')}"
    lay.add(
        timeseries(
            "Pool utilization",
            "Tasks each worker's pool is executing (heartbeats) over its pool size (inspect stats): 1 is every "
            "slot busy. The rules record it as celery:worker_pool_utilization:ratio, for autoscalers.",
            [target(utilization, "{{hostname}}")],
            unit="percentunit",
        ),
        12,
    )
    lay.add(
        timeseries(
            "Pool size and tasks reserved",
            "Each worker's pool size (prefork concurrency, thread or greenlet pool size, 1 for solo; from inspect "
            "stats), and the tasks it received and has not started (prefetched, waiting for a slot; from task "
            "events). Reserved tasks on a full pool wait, though other workers may be idle.",
            targets(
                (one(f"celery_worker_pool_size{{{WORKER}}}"), "{{hostname}} pool size"),
                (one(f"celery_worker_tasks_reserved{{{WORKER}}}"), "{{hostname}} reserved"),
            ),
        ),
        12,
    )
    lay.row("Queues and versions")
    lay.add(
        timeseries(
            "Workers and processes per queue",
            "Workers up that consume each queue, and their pool processes (from inspect; needs remote control).",
            targets(
                (f"sum by (queue_name) ({one(f'celery_queue_active_workers{{{JOB}}}')})", "{{queue_name}} workers"),
                (f"sum by (queue_name) ({one(f'celery_queue_active_processes{{{JOB}}}')})", "{{queue_name}} processes"),
            ),
        ),
        12,
    )
    lay.add(
        table(
            "Versions",
            "Celery version and OS of each worker, from its heartbeats.",
            one(f"celery_worker_info{{{WORKER}}}"),
            hide=["Time", "__name__", "job", "instance", "Value"],
            rename={"hostname": "worker", "sw_ident": "software", "sw_ver": "version", "sw_sys": "system"},
        ),
        12,
    )
    return dashboard(
        "celery-exporter-workers",
        "Celery / Workers",
        "Worker liveness by heartbeat age, running tasks, throughput, queues consumed, versions.",
        lay,
        variables(variable_query("hostname", "Worker", f"celery_worker_up{{{JOB}}}", "hostname")),
    )


DASHBOARDS = {"celery-overview.json": overview, "celery-tasks.json": tasks, "celery-workers.json": workers}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: List[str]) -> int:
    check = "--check" in argv
    stale = []
    for filename, build in DASHBOARDS.items():
        path = HERE / filename
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(filename)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python dashboards/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
