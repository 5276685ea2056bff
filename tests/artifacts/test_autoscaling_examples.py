"""The "Autoscaling workers on queue length" examples of docs/scaling.md: the YAML blocks parse,
the HPA and the prometheus-adapter rule fit together, and the PromQL of the KEDA trigger and of
the adapter rule (its Go-template fields filled in as the adapter does) passes promtool, filters
by job and queue and counts the queue once however many exporter replicas export it (Debian's
prometheus)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "scaling.md"
HEADING = "## Autoscaling workers on queue length"


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return path


def section():
    """The section, up to the next section of the page (or its end)."""
    text = PAGE.read_text()
    assert text.count(HEADING + "\n") == 1
    body = text.split(HEADING + "\n", 1)[1]
    end = re.search(r"^## ", body, re.MULTILINE)
    return body[: end.start()] if end else body


def blocks():
    """{'keda': ScaledObject, 'adapter': the adapter's external rule, 'hpa': HPA} from the
    subsection's ```yaml blocks."""
    docs = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```$", section(), re.MULTILINE | re.DOTALL)]
    assert len(docs) == 3, docs
    found = {}
    for doc in docs:
        if doc.get("kind") == "ScaledObject":
            found["keda"] = doc
        elif doc.get("kind") == "HorizontalPodAutoscaler":
            found["hpa"] = doc
        elif "externalRules" in doc:
            (found["adapter"],) = doc["externalRules"]
    assert sorted(found) == ["adapter", "hpa", "keda"]
    return found


def keda_query(doc):
    (trigger,) = doc["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    return trigger["metadata"]["query"]


def hpa_metric(hpa):
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    return metric["external"]


def adapter_query(rule, hpa):
    """The adapter rule's metricsQuery as prometheus-adapter renders it for the HPA: Series is the
    series' name, LabelMatchers the HPA's selector (no namespace: the rule has namespaced: false),
    GroupBy empty (external rules get none)."""
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
    labels = hpa_metric(hpa)["metric"]["selector"]["matchLabels"]
    fields = {
        "<<.Series>>": series,
        "<<.LabelMatchers>>": ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())),
        "<<.GroupBy>>": "",
    }
    query = rule["metricsQuery"]
    for field, value in fields.items():
        query = query.replace(field, value)
    assert "<<" not in query and ">>" not in query, query
    return query


def test_keda_scaled_object_shape():
    keda = blocks()["keda"]
    assert keda["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = keda["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "prometheus"
    assert metadata["serverAddress"].startswith("http")
    assert float(metadata["threshold"]) == 50 and isinstance(metadata["threshold"], str)
    assert metadata["ignoreNullValues"] == "false"
    query = keda_query(keda)
    assert 'job="celery-exporter"' in query and 'queue_name="emails"' in query
    assert re.match(r"max (by|without) \(", query), query  # max over the exporter replicas


def test_hpa_shape_and_the_adapter_rule_it_reads():
    found = blocks()
    hpa, rule, keda = found["hpa"], found["adapter"], found["keda"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "celery-worker-emails",
    }
    assert hpa["spec"]["scaleTargetRef"]["name"] == keda["spec"]["scaleTargetRef"]["name"]
    external = hpa_metric(hpa)
    # the HPA asks for the metric under the name the adapter serves it as
    assert external["metric"]["name"] == rule["name"]["as"] == "celery_queue_length"
    assert re.fullmatch(rule["name"]["matches"], "celery_queue_length")
    assert external["metric"]["selector"]["matchLabels"] == {"job": "celery-exporter", "queue_name": "emails"}
    assert external["target"] == {"type": "AverageValue", "averageValue": "50"}
    assert rule["resources"] == {"namespaced": False}
    assert {"<<.Series>>", "<<.LabelMatchers>>"} <= set(re.findall(r"<<\.\w+>>", rule["metricsQuery"]))
    assert adapter_query(rule, hpa) == (
        'max by (queue_name) (celery_queue_length{job="celery-exporter",queue_name="emails"})'
    )


# Two exporter replicas report the queue (one a poll behind), another queue and another job.
INPUT = [
    ('celery_queue_length{job="celery-exporter",queue_name="emails",instance="10.0.0.1:9808",pod="exp-a"}', "120x5"),
    ('celery_queue_length{job="celery-exporter",queue_name="emails",instance="10.0.0.2:9808",pod="exp-b"}', "117x5"),
    ('celery_queue_length{job="celery-exporter",queue_name="default",instance="10.0.0.1:9808",pod="exp-a"}', "999x5"),
    ('celery_queue_length{job="other-broker",queue_name="emails",instance="10.0.1.1:9808",pod="exp-c"}', "555x5"),
]


def test_queries_pass_promtool_and_count_the_queue_once(promtool, tmp_path):
    found = blocks()
    queries = {
        "keda": keda_query(found["keda"]),
        "adapter": adapter_query(found["adapter"], found["hpa"]),
        # the adapter's discovery query is a plain series selector
        "adapter_series": f"count({found['adapter']['seriesQuery']})",
    }
    rules = tmp_path / "autoscaling.rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {"name": "readme", "rules": [{"record": f"readme:{k}", "expr": q} for k, q in queries.items()]}
                ]
            }
        )
    )
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 rules found" in check.stdout

    cases = []
    for name in ("keda", "adapter"):
        query = queries[name]
        cases += [
            # one series, so KEDA (which wants a single element) and the HPA (which sums the
            # items it gets) see the queue once; its value is the queue's, not twice it
            {"expr": f"count({query})", "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 1}]},
            {"expr": f"sum({query})", "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 120}]},
        ]
    cases.append({"expr": queries["adapter_series"], "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 4}]})
    unit = tmp_path / "autoscaling.test.yml"
    unit.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules.name],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": v} for s, v in INPUT],
                        "promql_expr_test": cases,
                    }
                ],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- "Autoscaling the workers on pool utilization" ----------------------------------------------

UTILIZATION_HEADING = "## Autoscaling the workers on pool utilization"
RULES = ROOT / "alerts" / "celery-exporter.rules.yml"


def utilization_keda():
    text = PAGE.read_text()
    assert text.count(UTILIZATION_HEADING + "\n") == 1
    body = text.split(UTILIZATION_HEADING + "\n", 1)[1]
    end = re.search(r"^## ", body, re.MULTILINE)
    body = body[: end.start()] if end else body
    (doc,) = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```$", body, re.MULTILINE | re.DOTALL)]
    return doc


def test_the_utilization_trigger_averages_the_deployments_workers_once(promtool, tmp_path):
    """The KEDA trigger, on the shipped rules' utilization: the Deployment's workers up (4 of 4
    and 2 of 4 slots busy, from two exporter replicas), not another Deployment's, nor a worker down."""
    keda = utilization_keda()
    assert keda["kind"] == "ScaledObject"
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    assert trigger["metadata"]["threshold"] == "0.8" and trigger["metadata"]["ignoreNullValues"] == "false"
    query = trigger["metadata"]["query"]
    series = []
    for host, active, pool, up in (
        ("celery@celery-worker-emails-7d9f-abcde", 4, 4, 1),
        ("celery@celery-worker-emails-7d9f-fghij", 2, 4, 1),
        ("celery@celery-worker-emails-7d9f-klmno", 4, 4, 0),  # down: its last heartbeat
        ("celery@celery-worker-reports-5c6b-pqrst", 0, 8, 1),
    ):
        for pod in ("exp-a", "exp-b"):
            labels = f'job="celery-exporter",instance="{pod}:9808",pod="{pod}",hostname="{host}"'
            series += [
                {"series": f"celery_worker_tasks_active{{{labels}}}", "values": f"{active}x5"},
                {"series": f"celery_worker_pool_size{{{labels}}}", "values": f"{pool}x5"},
                {"series": f"celery_worker_up{{{labels}}}", "values": f"{up}x5"},
            ]
    unit = tmp_path / "utilization.test.yml"
    unit.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "promql_expr_test": [
                            {"expr": query, "eval_time": "3m", "exp_samples": [{"labels": "{}", "value": 0.75}]}
                        ],
                    }
                ],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
