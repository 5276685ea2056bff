"""Dashboards written for danihodovic/celery-exporter (the incumbent) on this exporter: a real
Prometheus scraping it while real workers process a mix of tasks (successes, failures,
retries, rejections, revocations, two queues), with alerts/danihodovic-compat.rules.yml
loaded, answers every metric name and label the incumbent's mixin dashboards read
(our own list below: names and labels are facts), each with the values of our own series.

With INCUMBENT_CHECKOUT set to a checkout of danihodovic/celery-exporter, the same run also
measures its dashboards as users meet them: every panel query of its
celery-mixin/dashboards_out/*.json, its template variables resolved as Grafana resolves them
(tests/integration/grafana.py), asked of that Prometheus and of a second one scraping the same
exporter without the compatibility rules; it prints N of M queries with data for both and
fails unless all of them answer with the rules. `python benchmarks/incumbent_dashboards.py
PATH` runs it."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from . import grafana
from .promstack import ROOT, Load, Prometheus
from .rig import Rig, clean_env, executable, wait_for

pytestmark = pytest.mark.integration

COMPAT_RULES = ROOT / "alerts" / "danihodovic-compat.rules.yml"
# Target labels as a Kubernetes scrape adds them: the incumbent's dashboards select on both.
TARGET_LABELS = {"cluster": "it-cluster", "namespace": "it-namespace"}

# What the incumbent's mixin dashboards read (its two current ones, celery-tasks-overview and
# celery-tasks-by-task, and the older celery-tasks): each metric with the labels its panels and
# template variables filter or group by, besides job, cluster and namespace (target labels).
# Written from reading the dashboards, not generated from them.
INCUMBENT_READS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("celery_worker_up", ("hostname",)),
    ("celery_worker_tasks_active", ("hostname",)),
    ("celery_queue_length", ("queue_name",)),
    ("celery_task_sent_total", ("name", "queue_name")),
    ("celery_task_received_total", ("name", "queue_name")),
    ("celery_task_succeeded_total", ("name", "queue_name")),
    ("celery_task_failed_total", ("name", "queue_name")),
    ("celery_task_retried_total", ("name", "queue_name")),
    ("celery_task_rejected_total", ("name", "queue_name")),
    ("celery_task_revoked_total", ("name", "queue_name")),
    ("celery_task_runtime_bucket", ("name", "queue_name", "le")),
    ("celery_task_runtime_sum", ("name", "queue_name")),
    ("celery_task_runtime_count", ("name", "queue_name")),
)
# The other names the compatibility rules give (not read by the dashboards; its alerts and
# users' own panels may): RabbitMQ-only celery_active_consumer_count is left out on Redis.
OTHER_RECORDED: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("celery_task_queue_wait_time_bucket", ("name", "queue_name", "le")),
    ("celery_task_queue_wait_time_count", ("name", "queue_name")),
    ("celery_active_worker_count", ("queue_name",)),
    ("celery_active_process_count", ("queue_name",)),
)


class MoreOutcomes(threading.Thread):
    """Beside promstack.Load: a rejected task and a revoked one every few seconds, so the
    rejected and revoked counters the old panels read have series."""

    def __init__(self, rig: Rig, worker_hostname: str):
        super().__init__(daemon=True)
        self.rig = rig
        self.worker = worker_hostname
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(3):
                self.rig.send("it.reject")
                # revoked while the worker holds it for its countdown: task-revoked when due
                never = self.rig.send("it.never", countdown=2)
                inspect = self.rig.producer.control.inspect(destination=[self.worker], timeout=1.0)

                def scheduled(never_id: str = never.id, inspect: Any = inspect) -> bool:
                    replies = inspect.scheduled() or {}
                    return any(e["request"]["id"] == never_id for e in replies.get(self.worker, []))

                wait_for(scheduled, 10, interval=0.2, what="the worker to hold it.never")
                self.rig.producer.control.revoke(never.id)
        except Exception as exc:  # shown by the test
            self.error = exc


# The exporter runs with the incumbent's flags where it has them (accepted with a warning
# each, applied as their replacements): runtime buckets, a forced queue, reconnect delay.
OLD_FLAGS = (
    "--buckets",
    "0.005,0.05,0.5,5,60",
    "--queues",
    "celery,q2,idle",
    "--retry-interval",
    "2",
    "--generic-hostname-worker-task-metric",
    "--metric-prefix",
    "celery_",
)


def test_incumbent_names_and_dashboards_through_the_compat_rules(make_rig, tmp_path):
    rig = make_rig("redis")
    exporter = rig.start_exporter("--queue-poll-interval", "1s", "--inspect-interval", "2s", *OLD_FLAGS)
    log = exporter.proc.log_text()
    for flag in (
        "--buckets",
        "--queues",
        "--retry-interval",
        "--generic-hostname-worker-task-metric",
        "--metric-prefix",
    ):
        assert f"{flag} is danihodovic/celery-exporter's flag, deprecated here" in log, flag
    worker = rig.start_worker(queues=("celery", "q2"), concurrency=2, exporter=exporter)
    rig.prime(exporter)
    with_rules = Prometheus(tmp_path, exporter.port, COMPAT_RULES, name="with-compat", labels=TARGET_LABELS)
    rig.procs.append(with_rules.proc)
    checkout = os.environ.get("INCUMBENT_CHECKOUT")
    without = None
    if checkout:
        without = Prometheus(tmp_path, exporter.port, name="without-compat", labels=TARGET_LABELS)
        rig.procs.append(without.proc)

    load, more = Load(rig), MoreOutcomes(rig, worker.hostname)
    load.start()
    more.start()
    try:
        # 1. Every name and label the old dashboards read answers, with our series' values.
        pending = dict(INCUMBENT_READS + OTHER_RECORDED)

        def all_answer() -> bool:
            for metric, labels in list(pending.items()):
                result = with_rules.query(f'{metric}{{cluster="it-cluster", namespace="it-namespace"}}')
                if result and all(any(r["metric"].get(label) for r in result) for label in labels):
                    del pending[metric]
            return not pending

        wait_for(
            all_answer,
            120,
            interval=1,
            what="every name the incumbent's dashboards read to return data",
            describe=lambda: f"no data (or a label missing) yet: {sorted(pending)}",
        )
        assert load.error is None and more.error is None, (load.error, more.error)
        same_values_as_ours(with_rules)
        # the old flags were applied: --buckets' bounds, and --queues' idle queue (no worker)
        bounds = {r["metric"]["le"] for r in with_rules.query('celery_task_runtime_bucket{name="it.succeed"}')}
        assert bounds == {"0.005", "0.05", "0.5", "5.0", "60.0", "+Inf"}, bounds
        assert with_rules.query('celery_queue_length{queue_name="idle"}')

        # 2. With a checkout of the incumbent: its panel queries, with and without the rules.
        if checkout:
            assert without is not None
            measure(Path(checkout), with_rules, without)
    finally:
        load.stop.set()
        more.stop.set()
        load.join(5)
        more.join(15)


def same_values_as_ours(prometheus: Prometheus) -> None:
    """The recorded old names hold our series' values, label set for label set: asked at the
    time of the rules' last evaluation, a recorded series equals its source as the rule saw it."""
    for old, new in [
        ("celery_task_runtime_count", "celery_task_runtime_seconds_count"),
        ("celery_task_runtime_bucket", "celery_task_runtime_seconds_bucket"),
        ("celery_active_worker_count", "celery_queue_active_workers"),
    ]:
        at = max(float(r["value"][1]) for r in prometheus.query(f"timestamp({old})"))

        def by_labels(expr: str, at: float = at) -> Dict[frozenset, str]:
            out = {}
            for r in prometheus.query(expr, at=at):
                labels = dict(r["metric"])
                labels.pop("__name__", None)
                out[frozenset(labels.items())] = r["value"][1]
            return out

        recorded, source = by_labels(old), by_labels(new)
        assert recorded and recorded == source, (old, recorded, source)
    # and the values are real: the it.succeed runs were observed
    counts = prometheus.query('sum(celery_task_runtime_count{name="it.succeed"})')
    assert counts and float(counts[0]["value"][1]) >= 3, counts


def measure(checkout: Path, with_rules: Prometheus, without: Prometheus) -> None:
    boards = sorted((checkout / "celery-mixin" / "dashboards_out").glob("*.json"))
    assert boards, f"no celery-mixin/dashboards_out/*.json under {checkout}"

    def series(prometheus: Prometheus):
        def label_values(selector: str, label: str) -> List[str]:
            found = prometheus.api("series", **{"match[]": selector})
            return [s[label] for s in found if s.get(label)]

        return label_values

    # 15 s: Grafana's $__rate_interval for a 1 s scrape interval and a default panel width
    expressions: Dict[str, Dict[str, str]] = {}
    for path in boards:
        board = grafana.load(path)
        expressions[path.name] = grafana.queries(board, series(with_rules), "15s")
    total = sum(len(q) for q in expressions.values())
    answered: Dict[str, set] = {}

    def answers(prometheus: Prometheus, key: str) -> set:
        out = set()
        for board, qs in expressions.items():
            for name, expr in qs.items():
                if grafana.has_data(prometheus.query(expr)):
                    out.add((board, name))
        answered[key] = out
        return out

    wait_for(
        lambda: len(answers(with_rules, "with")) == total,
        90,
        interval=2,
        what="every panel query of the incumbent's dashboards to return data with the compat rules",
        describe=lambda: (
            "no data:\n"
            + "\n".join(
                f"{b} / {n}: {expressions[b][n]}"
                for b in expressions
                for n in expressions[b]
                if (b, n) not in answered.get("with", set())
            )
        ),
    )
    # Without the rules, the queries that read none of the recorded names read the same series
    # as with them: polled until they answer too (a `> 0` panel waits for its next rejection).
    recorded = [r["record"] for g in yaml.safe_load(COMPAT_RULES.read_text())["groups"] for r in g["rules"]]

    def reads_recorded(expr: str) -> bool:
        return any(re.search(rf"\b{name}\b", expr) for name in recorded)

    plain = {(b, n) for b, qs in expressions.items() for n, e in qs.items() if not reads_recorded(e)}
    wait_for(
        lambda: plain <= answers(without, "without"),
        60,
        interval=2,
        what="the queries that read no recorded name to answer without the compat rules too",
        describe=lambda: str(sorted(plain - answered.get("without", set()))),
    )
    lines = ["", f"incumbent dashboards ({checkout}): panel queries with data"]
    for board, qs in expressions.items():
        n_with = sum(1 for n in qs if (board, n) in answered["with"])
        n_without = sum(1 for n in qs if (board, n) in answered["without"])
        lines.append(f"  {board}: {n_without} of {len(qs)} without the compat rules, {n_with} of {len(qs)} with")
    missing = sorted(f"{b} / {n}" for b in expressions for n in expressions[b] if (b, n) not in answered["without"])
    lines.append(
        f"  all: {len(answered['without'])} of {total} without, {len(answered['with'])} of {total} with; "
        "empty without: " + "; ".join(missing)
    )
    print("\n".join(lines))
    report = os.environ.get("INCUMBENT_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n")


def test_the_incumbents_flags_that_cannot_be_applied_stop_the_exporter(tmp_path):
    for argv, instead in [
        (["--static-label", "env=prod"], "target label"),
        (["--metric-prefix", "myapp_"], "metric_relabel_configs"),
        (["--default-queue-name", "default"], "task_send_sent_event"),
        (["--retry-interval", "0"], "always reconnects"),
    ]:
        done = subprocess.run(
            [executable("celery-exporter"), "--broker-url", "redis://127.0.0.1:1/0", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (argv, done.returncode, done.stderr)
        assert argv[0] in lines[0] and instead in lines[0], lines
