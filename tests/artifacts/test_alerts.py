"""The shipped alert rules pass promtool's checks and unit tests (Debian package prometheus)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return path


def test_rules_are_valid(promtool):
    files = sorted(str(p) for p in (ROOT / "alerts").glob("*.rules.yml"))
    assert files
    result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool):
    tests = sorted(str(p) for p in (ROOT / "alerts" / "tests").glob("*.yml"))
    assert tests
    result = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules():
    import yaml

    docs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "alerts").glob("*.rules.yml"))]
    return [rule for doc in docs for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_has_severity_summary_description_and_runbook():
    alerts = [r for r in _rules() if "alert" in r]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), (rule["alert"], key)


def test_every_alert_has_a_promtool_test_that_fires_it():
    import yaml

    tests = yaml.safe_load((ROOT / "alerts" / "tests" / "celery-exporter.rules.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts <= fired, alerts - fired
    assert alerts <= quiet, alerts - quiet


def run_tune(*args):
    return subprocess.run([sys.executable, str(ROOT / "alerts" / "tune.py"), *args], capture_output=True, text=True)


def tune_checked(promtool, tmp_path, *args):
    """tune.py's output for `args`, written to tmp_path/tuned.yml and passed by promtool
    check rules; returns that path and the rendered rules by alert name."""
    import yaml

    result = run_tune(*args)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tuned.yml"
    out.write_text(result.stdout)
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return out, {r.get("alert"): r for g in yaml.safe_load(result.stdout)["groups"] for r in g["rules"]}


def test_tune_renders_overrides_that_promtool_accepts(promtool, tmp_path):
    _, rules = tune_checked(
        promtool,
        tmp_path,
        "--job",
        "my-exporter",
        "--for",
        "CeleryWorkerLost=5s",
        "--threshold",
        "CeleryQueueBacklog=250",
        "--min-volume",
        "CeleryTaskFailureRatioHigh=50",
    )
    assert rules["CeleryWorkerLost"]["for"] == "5s"
    assert "> 250" in rules["CeleryQueueBacklog"]["expr"]
    assert (
        ">= 50" in rules["CeleryTaskFailureRatioHigh"]["expr"]
        and "> 0.1" in rules["CeleryTaskFailureRatioHigh"]["expr"]
    )
    assert rules["CeleryExporterDown"]["expr"] == 'up{job="my-exporter"} == 0'
    shipped = {r.get("alert"): r for r in _rules()}
    assert shipped["CeleryWorkerLost"]["for"] == "2m"  # the shipped file is untouched
    # only what was asked changed
    changed = [a for a in rules if a and rules[a] != shipped[a]]
    assert sorted(changed) == [
        "CeleryExporterDown",
        "CeleryQueueBacklog",
        "CeleryTaskFailureRatioHigh",
        "CeleryWorkerLost",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--for", "CeleryWorkrLost=5s"], "no alert named 'CeleryWorkrLost'"),
        (["--for", "CeleryWorkerLost=5"], "not a Prometheus duration"),
        (["--threshold", "CeleryQueueBacklog=lots"], "not a number"),
        (["--threshold", "CeleryWorkerLost=3"], "has no ' > N'"),
        (["--for", "CeleryWorkerLost"], "expected ALERT=VALUE"),
    ],
)
def test_tune_refuses_what_it_cannot_apply(args, message):
    result = run_tune(*args)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


NIGHTLY = "app.tasks.nightly_report"


def _running_too_long(name, age):
    """The firing CeleryTaskRunningTooLong alert promtool should see for `name` at `age`."""
    return {
        "exp_labels": {"severity": "warning", "job": "celery-exporter", "name": name},
        "exp_annotations": {
            "summary": f"Celery task {name} has been running for {age}",
            "description": f"The oldest running {name} (job celery-exporter) started {age} ago, longer than the "
            "alert's threshold: it may hang.",
            "runbook": "A hung task usually waits on something (an HTTP call without a timeout, a lock): find it "
            "with `celery inspect active` and look at its worker's stack; set task_time_limit / "
            f"task_soft_time_limit so it cannot hang for ever. If runs of {name} are long on purpose, raise "
            f"its threshold alone with alerts/tune.py --task-threshold CeleryTaskRunningTooLong:{name}=SECONDS.",
        },
    }


def test_tune_task_threshold_gives_one_task_its_own_threshold(promtool, tmp_path):
    import yaml

    tuned, rules = tune_checked(promtool, tmp_path, "--task-threshold", f"CeleryTaskRunningTooLong:{NIGHTLY}=14400")
    # comments and layout are kept; only the tuned alert changed
    assert "# The oldest running task of a name started more than an hour ago" in tuned.read_text()
    shipped = {r.get("alert"): r for r in _rules()}
    assert [a for a in rules if a and rules[a] != shipped[a]] == ["CeleryTaskRunningTooLong"]
    expr = rules["CeleryTaskRunningTooLong"]["expr"]
    assert f'{{name!="{NIGHTLY}"}}) > 3600 or ' in expr and f'{{name="{NIGHTLY}"}}) > 14400' in expr

    # both tasks started at 0 (epoch), so their age at eval_time is eval_time
    series = (
        "celery_task_running_oldest_start_timestamp_seconds"
        '{{job="celery-exporter",instance="e:9808",name="{}",queue_name="a"}}'
    )
    cases = [
        ("1h30m", [_running_too_long("app.tasks.sync", "1h 30m 0s")]),  # the nightly one is younger than 4h
        ("3h50m", [_running_too_long("app.tasks.sync", "3h 50m 0s")]),
        ("4h10m", [_running_too_long(NIGHTLY, "4h 10m 0s"), _running_too_long("app.tasks.sync", "4h 10m 0s")]),
    ]
    unit = {
        "rule_files": [tuned.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series.format(NIGHTLY), "values": "0x300"},
                    {"series": series.format("app.tasks.sync"), "values": "0x300"},
                ],
                "alert_rule_test": [
                    {"eval_time": t, "alertname": "CeleryTaskRunningTooLong", "exp_alerts": alerts}
                    for t, alerts in cases
                ],
            }
        ],
    }
    test_file = tmp_path / "tuned.test.yml"
    test_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_tune_task_threshold_on_every_task_alert_and_with_threshold(promtool, tmp_path):
    _, rules = tune_checked(
        promtool,
        tmp_path,
        "--threshold",
        "CeleryTaskRunningTooLong=7200",
        "--task-threshold",
        f"CeleryTaskRunningTooLong:{NIGHTLY}=14400",
        "--task-threshold",
        "CeleryTaskRunningTooLong:app.tasks.export=28800",
        "--task-threshold",
        "CeleryTasksInterrupted:app.tasks.idempotent=5",
        "--task-threshold",
        "CeleryTaskFailureRatioHigh:app.tasks.flaky=0.5",
        "--job",
        "my-exporter",
    )
    running = rules["CeleryTaskRunningTooLong"]["expr"]
    # the other names keep the --threshold; each named task has its own
    assert f'{{name!="{NIGHTLY}", name!="app.tasks.export"}}) > 7200 or' in running
    assert f'{{name="{NIGHTLY}"}}) > 14400 or' in running and '{name="app.tasks.export"}) > 28800' in running
    interrupted = rules["CeleryTasksInterrupted"]["expr"]
    assert 'celery_task_interrupted_total{name!="app.tasks.idempotent"}[15m]))) > 0 or' in interrupted
    assert 'celery_task_interrupted_total{name="app.tasks.idempotent"}[15m]))) > 5' in interrupted
    ratio = rules["CeleryTaskFailureRatioHigh"]["expr"]
    # `and` binds tighter than `or`: the alternatives are wrapped before the minimum volume
    assert ratio.startswith('((celery:task_failed:increase15m{name!="app.tasks.flaky"} / ')
    assert ratio.endswith(") > 0.5) and on (cluster, namespace, job, name) celery:task_finished:increase15m >= 20")
    assert rules["CeleryExporterDown"]["expr"] == 'up{job="my-exporter"} == 0'


def test_tune_task_threshold_rewrites_selectors_in_any_layout(promtool, tmp_path):

    exprs = {
        "Braces": 'max by (job, name) (celery_task_running{queue_name="a"}) > 3',
        "Grouping": "sum(rate(celery_task_failed_total[5m])) by (job, name) > 1 # a comment",
        "Prefix": 'vector(1) and on () sum by (job, name) (celery_task_running{queue_name=~"a|b",}) > 2',
    }
    source = tmp_path / "rules.yml"
    source.write_text(
        "groups:\n  - name: g\n    rules:\n"
        + "".join(f"      - alert: {a}\n        expr: {e}\n        for: 1m\n" for a, e in exprs.items())
    )
    args = [arg for a in exprs for arg in ("--task-threshold", f"{a}:t=9")]
    _, tuned = tune_checked(promtool, tmp_path, str(source), *args)
    rules = {alert: rule["expr"] for alert, rule in tuned.items()}
    assert rules["Braces"] == (
        'max by (job, name) (celery_task_running{queue_name="a", name!="t"}) > 3 '
        'or max by (job, name) (celery_task_running{queue_name="a", name="t"}) > 9'
    )
    assert rules["Grouping"] == (
        'sum(rate(celery_task_failed_total{name!="t"}[5m])) by (job, name) > 1 '
        'or sum(rate(celery_task_failed_total{name="t"}[5m])) by (job, name) > 9'
    )
    assert rules["Prefix"] == (
        'vector(1) and on () (sum by (job, name) (celery_task_running{queue_name=~"a|b",name!="t"}) > 2 '
        'or sum by (job, name) (celery_task_running{queue_name=~"a|b",name="t"}) > 9)'
    )


@pytest.mark.parametrize(
    "value,message",
    [
        ("CeleryTaskRunningTooLng:app.x=5", "no alert named 'CeleryTaskRunningTooLng'"),
        ("CeleryQueueBacklog:app.x=5", "has no name label (by (cluster, namespace, job, queue_name) drops it)"),
        ("CeleryQueueWaitHigh:app.x=5", "has no name label"),
        ("CeleryWorkerLost:app.x=5", "has no ' > N'"),
        ("CeleryBeatEntryOverdue:app.x=5", "has no ' > N'"),
        ("CeleryTaskRunningTooLong:app.x=lots", "not a number"),
        ('CeleryTaskRunningTooLong:app"x=5', "not a valid label value"),
        ("CeleryTaskRunningTooLong:app\\x=5", "not a valid label value"),
        ("CeleryTaskRunningTooLong:app\nx=5", "not a valid label value"),
        ("CeleryTaskRunningTooLong=5", "expected ALERT:TASK=NUMBER"),
        ("CeleryTaskRunningTooLong:=5", "expected ALERT:TASK=NUMBER"),
        ("CeleryTaskRunningTooLong:app.x", "expected ALERT:TASK=NUMBER"),
    ],
)
def test_tune_refuses_task_thresholds_it_cannot_apply(value, message):
    result = run_tune("--task-threshold", value)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("tune.py: error: --task-threshold") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_tune_task_threshold_refuses_a_selector_without_a_name_label(tmp_path):
    source = tmp_path / "rules.yml"
    source.write_text(
        "groups:\n  - name: g\n    rules:\n"
        "      - alert: Total\n        expr: sum(celery_task_running) > 3\n"
        "      - alert: Worker\n        expr: celery_worker_tasks_active > 3\n"
    )
    for alert, message in (("Total", "sum() without by drops it"), ("Worker", "selects celery_worker_tasks_active")):
        result = run_tune(str(source), "--task-threshold", f"{alert}:t=1")
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"tune.py: error: --task-threshold {alert}: ") and message in result.stderr
