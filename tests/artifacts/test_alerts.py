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
    files = sorted(str(p) for p in (ROOT / "alerts").glob("*.yml"))
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

    docs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "alerts").glob("*.yml"))]
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


def test_tune_renders_overrides_that_promtool_accepts(promtool, tmp_path):
    result = run_tune(
        "--job",
        "my-exporter",
        "--for",
        "CeleryWorkerLost=5s",
        "--threshold",
        "CeleryQueueBacklog=250",
        "--min-volume",
        "CeleryTaskFailureRatioHigh=50",
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tuned.yml"
    out.write_text(result.stdout)
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    import yaml

    rules = {r.get("alert"): r for g in yaml.safe_load(result.stdout)["groups"] for r in g["rules"]}
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
