"""The shipped Grafana dashboards: in sync with dashboards/build.py, importable as they are
(datasource and job variables, no datasource UIDs of anyone's Grafana), and reading only
metrics the exporter exports. That every query returns data from a real Prometheus is
tests/integration/test_prometheus_e2e.py."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from tests.unit.conftest import Rig, failed, heartbeat, received, retried, sent, started, succeeded

ROOT = Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "dashboards").glob("*.json"))


def load(path):
    return json.loads(path.read_text())


def exprs(board):
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_the_json_is_what_build_py_makes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "build.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in BOARDS} == {"celery-overview.json", "celery-tasks.json", "celery-workers.json"}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_importable_as_is(path):
    board = load(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    # the monitoring-mixin order; each variable matches everything where its label is absent
    assert [v["name"] for v in board["templating"]["list"]][:4] == ["datasource", "cluster", "namespace", "job"]
    for name in ("cluster", "namespace", "job"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    assert variables["job"]["definition"] == (
        'label_values(celery_exporter_build_info{cluster=~"$cluster", namespace=~"$namespace"}, job)'
    )
    # every datasource reference is the variable (or Grafana's own annotations source)
    text = path.read_text()
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {board["uid"]}
    assert uids <= {"${datasource}", "-- Grafana --"}, uids
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and panel.get("description"), panel["title"]
            for t in panel["targets"]:
                assert 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"' in t["expr"], (
                    panel["title"],
                    t["expr"],
                )


# What two replicas double: a sum or count over series that were not first made one
# (`max without (instance, pod)`). Quantiles and means are ratios: doubling changes neither.
_AGGREGATION = re.compile(r"\b(sum|count)(?: by \([^)]*\))? ?\(")


def undeduplicated_sums(expr):
    found = []
    for match in _AGGREGATION.finditer(expr):
        inner = expr[match.end() :]
        if inner.startswith("max without (instance, pod) ("):
            continue
        if inner.startswith(("histogram_sum(", "histogram_count(")) or "_bucket{" in inner.split(")")[0]:
            continue  # a histogram's parts in a ratio (quantile, mean)
        if re.match(r"rate\(celery_task_\w+_seconds(_sum|_count)?\{", inner):
            continue  # a native histogram for histogram_quantile, a classic one's sum and count
        found.append(expr[match.start() : match.start() + 60])
    return found


def test_undeduplicated_sums_are_found():
    assert undeduplicated_sums('sum by (name) (rate(celery_task_failed_total{job="x"}[5m]))')
    assert undeduplicated_sums('count(celery_worker_up{job="x"} == 0)')
    assert not undeduplicated_sums("sum by (name) (max without (instance, pod) (rate(celery_task_failed_total[5m])))")


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_sums_count_each_series_once_with_several_replicas(path):
    board = load(path)
    offenders = [
        (p["title"], found)
        for p in board["panels"]
        for t in p.get("targets", [])
        if (found := undeduplicated_sums(t["expr"]))
    ]
    assert not offenders, offenders


def exported_names():
    """Every sample name the exporter can expose, from a rig fed with every kind of data."""
    from celery import Celery

    from celery_exporter.beat import entries

    app = Celery("dash-test", set_as_current=False)
    app.conf.beat_schedule = {"tick": {"task": "app.add", "schedule": 5.0}}
    rig = Rig(beat_entries=entries(app))
    rig.feed(
        heartbeat(),
        sent("u1"),
        received("u1"),
        started("u1"),
        succeeded("u1"),
        sent("u2"),
        received("u2"),
        started("u2"),
        failed("u2"),
        # still running: celery_task_running_oldest_start_timestamp_seconds exists only now
        sent("u3"),
        received("u3"),
        started("u3"),
        # a retried attempt (celery_task_retried_runtime_seconds), and a task reserved
        sent("u4"),
        received("u4"),
        started("u4"),
        retried("u4"),
        sent("u5"),
        received("u5"),
    )
    rig.store.queues.set_worker_queues({"w1@h": ["celery"]}, {"w1@h": 2}, rig.clock.now())
    rig.store.queues.poll_succeeded({"celery": (3, 1)}, 0.01, rig.clock.now())
    rig.store.queues.poll_failed(0.01)
    rig.handler.tick(rig.clock.now())
    text = rig.text()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    text += generate_latest(registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    # a native histogram is one series under the family's own name (protobuf scrapes only)
    native = {
        mf.name for mf in rig.protobuf() if mf.type == 4 and mf.metric and mf.metric[0].histogram.HasField("schema")
    }
    assert native, "no native histogram in the protobuf scrape"
    return names | native


def test_panels_use_only_metrics_the_exporter_exports():
    names = exported_names()
    assert "celery_queue_active_workers" in names and "process_resident_memory_bytes" in names
    used = set()
    for path in BOARDS:
        board = load(path)
        for expr in exprs(board) + [v.get("definition", "") for v in board["templating"]["list"]]:
            used |= set(re.findall(r"\b((?:celery|process)_[a-z_]+)\b", expr))
    assert used and used <= names, used - names
    # and the dashboards cover the metric contract's main families
    for family in (
        "celery_task_succeeded_total",
        "celery_task_runtime_seconds_bucket",
        "celery_worker_up",
        "celery_queue_length",
        "celery_task_exceptions_total",
        "celery_exporter_broker_connected",
        "celery_task_running",
        "celery_task_running_oldest_start_timestamp_seconds",
        "celery_task_interrupted_total",
        "celery_task_redelivered_total",
        "celery_task_failed_runtime_seconds_bucket",
        "celery_task_retried_runtime_seconds_bucket",
        "celery_worker_pool_size",
        "celery_worker_tasks_reserved",
    ):
        assert family in used, family


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_panel_titles_and_ref_ids_are_unique(path):
    """tests/integration/test_prometheus_e2e.py names each query board / title / refId: a
    repeated name would hide one query from it."""
    board = load(path)
    keys = [(p["title"], t["refId"]) for p in board["panels"] for t in p.get("targets", [])]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    assert not repeated, repeated
