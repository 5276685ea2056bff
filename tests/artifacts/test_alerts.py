"""The shipped alert rules pass promtool's checks and unit tests (Debian package prometheus), and
are what alerts/generate.py makes of the default configuration; a configuration of one's own
renders rules that change what it says and nothing else, and what the generator cannot apply is
refused. The chart's side (the same rules from its values) is tests/artifacts/test_helm.py."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from celery_exporter.catalogue import DEFAULT_WAIT_BUCKETS
from celery_exporter.exposition.text import bound

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

    tests = [
        test
        for path in sorted((ROOT / "alerts" / "tests").glob("*.yml"))
        for test in yaml.safe_load(path.read_text())["tests"]
    ]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts <= fired, alerts - fired
    assert alerts <= quiet, alerts - quiet


GENERATE = ROOT / "alerts" / "generate.py"
OVERRIDES = ROOT / "alerts" / "tests" / "overrides"
DOCS_URL = "https://celery-exporter.github.io/celery-exporter/alerts/#"


def rulegen():
    """alerts/rulegen, imported from this checkout."""
    if str(ROOT / "alerts") not in sys.path:
        sys.path.insert(0, str(ROOT / "alerts"))
    import rulegen

    return rulegen


def generate(*args, **kwargs):
    return subprocess.run([sys.executable, str(GENERATE), *args], capture_output=True, text=True, **kwargs)


def generated(promtool, tmp_path, config, name="rules.yml"):
    """alerts/generate.py's rules for `config` (a mapping), checked by promtool check rules;
    returns their path and the rules by alert (or record) name."""
    source = tmp_path / f"{name}.config.yml"
    source.write_text(yaml.safe_dump(config))
    result = generate("--config", str(source))
    assert result.returncode == 0, result.stderr
    out = tmp_path / name
    out.write_text(result.stdout)
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return out, by_name(yaml.safe_load(result.stdout))


def flat(expr):
    """An expression with its line breaks and indentation as single spaces."""
    return " ".join(expr.split())


def by_name(doc):
    return {r.get("alert") or r["record"]: r for g in doc["groups"] for r in g["rules"]}


def test_the_shipped_rules_are_what_generate_py_makes():
    result = generate("--check")
    assert result.returncode == 0, result.stderr


def test_check_notices_a_hand_edit(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("alerts_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = tmp_path / "celery-exporter.rules.yml"
    copy.write_text((ROOT / "alerts" / "celery-exporter.rules.yml").read_text().replace("for: 2m", "for: 3m", 1))
    monkeypatch.setattr(module, "RULES", copy)
    monkeypatch.setattr(module, "HERE", tmp_path)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0 and module.main(["--check"]) == 0


def test_every_alert_links_its_runbook_on_the_alerts_page():
    page = (ROOT / "docs" / "alerts.md").read_text()
    headings = {line[4:].strip() for line in page.splitlines() if line.startswith("### ")}
    for rule in [r for r in _rules() if "alert" in r]:
        assert rule["annotations"]["runbook_url"] == DOCS_URL + rule["alert"].lower(), rule["alert"]
        # MkDocs makes the anchor of a heading `### CeleryWorkerLost` celeryworkerlost
        assert rule["alert"] in headings, f"docs/alerts.md has no runbook heading for {rule['alert']}"
        assert "dashboard_url" not in rule["annotations"]  # no pattern by default


def test_defaults_prints_every_key_and_round_trips(promtool, tmp_path):
    result = generate("--defaults")
    assert result.returncode == 0, result.stderr
    defaults = yaml.safe_load(result.stdout)
    assert defaults["selectors"] == {"job": "celery-exporter"}
    assert defaults["taskFailureSlo"] == {"target": 0.999, "taskTargets": {}}
    assert defaults["alerts"]["CeleryWorkerLost"] == {"enabled": True, "severity": "critical", "for": "2m"}
    # the whole default configuration, given as a configuration, gives the shipped rules
    out, _ = generated(promtool, tmp_path, defaults)
    shipped = yaml.safe_load((ROOT / "alerts" / "celery-exporter.rules.yml").read_text())
    assert yaml.safe_load(out.read_text()) == shipped


def test_a_configuration_changes_what_it_says_and_nothing_else(promtool, tmp_path):
    _, rules = generated(
        promtool,
        tmp_path,
        {
            "selectors": {"job": "my-exporter", "cluster": "eu-1"},
            "alerts": {
                "CeleryWorkerLost": {"for": "5s", "severity": "page"},
                "CeleryQueueBacklog": {"threshold": 250},
                "CeleryQueueWaitHigh": {"minimumTasks": 50},
                "CeleryBeatEntryOverdue": {"intervalFraction": 0.25, "minimumSeconds": 300},
            },
            "taskFailureSlo": {"target": 0.99},
        },
    )
    shipped = by_name(yaml.safe_load((ROOT / "alerts" / "celery-exporter.rules.yml").read_text()))
    assert rules["CeleryWorkerLost"]["for"] == "5s" and rules["CeleryWorkerLost"]["labels"] == {"severity": "page"}
    assert rules["CeleryWorkerLost"]["expr"] == (
        'max without (instance, pod) (celery_worker_up{cluster="eu-1", job="my-exporter"}) == 0'
    )
    assert rules["CeleryExporterDown"]["expr"] == 'up{cluster="eu-1", job="my-exporter"} == 0'
    assert rules["CeleryQueueBacklog"]["expr"].endswith(") > 250")
    assert ") > 60 ) and on (cluster, namespace, job, queue_name) (" in flat(rules["CeleryQueueWaitHigh"]["expr"])
    assert flat(rules["CeleryQueueWaitHigh"]["expr"]).endswith(") >= 50")
    assert "0.25 * max by" in rules["CeleryBeatEntryOverdue"]["expr"]
    assert flat(rules["CeleryBeatEntryOverdue"]["expr"]).endswith("}), 300 )")
    assert rules["celery:task_slo:objective"]["expr"].endswith("(celery:task_finished:rate5m) * 0.99")

    # everything else is as shipped, but for the selectors
    def unselected(rule):
        return json.loads(
            json.dumps(rule).replace('{cluster=\\"eu-1\\", job=\\"my-exporter\\"', '{job=\\"celery-exporter\\"')
        )

    changed = sorted(n for n in rules if unselected(rules[n]) != shipped[n])
    assert changed == [
        "CeleryBeatEntryOverdue",
        "CeleryQueueBacklog",
        "CeleryQueueWaitHigh",
        "CeleryWorkerLost",
        "celery:task_slo:objective",
    ]
    assert set(rules) == set(shipped)


def test_a_disabled_alert_is_left_out_and_an_empty_group_too(promtool, tmp_path):
    names = ["CeleryBrokerUnreachable", "CeleryExporterBrokerDisconnected", "CeleryExporterNoEvents"]
    config = {"alerts": {n: {"enabled": False} for n in names + ["CeleryExporterDown", "CeleryWorkerLost"]}}
    out, rules = generated(promtool, tmp_path, config)
    groups = [g["name"] for g in yaml.safe_load(out.read_text())["groups"]]
    assert "celery-exporter" not in groups and "celery-workers" in groups
    assert "CeleryWorkerLost" not in rules and "CeleryNoWorkerUp" in rules
    # an SLO's recording rules stay when its alerts go: the dashboards read them
    config = {
        "alerts": {
            n: {"enabled": False} for n in ("CeleryTaskFailureBudgetFastBurn", "CeleryTaskFailureBudgetSlowBurn")
        }
    }
    _, rules = generated(promtool, tmp_path, config, "slo.yml")
    assert "celery:task_failed:ratio_rate3d" in rules and "CeleryTaskFailureBudgetFastBurn" not in rules


def test_a_dashboard_url_pattern_links_each_alert_to_its_dashboard(promtool, tmp_path):
    _, rules = generated(promtool, tmp_path, {"dashboardUrlPattern": "https://grafana.example.com/d/%s?orgId=1"})
    links = {name: r["annotations"]["dashboard_url"] for name, r in rules.items() if "alert" in r}
    assert links["CeleryWorkerLost"] == "https://grafana.example.com/d/celery-exporter-workers?orgId=1"
    assert links["CeleryTaskRunningTooLong"] == "https://grafana.example.com/d/celery-exporter-tasks?orgId=1"
    assert links["CeleryExporterDown"] == "https://grafana.example.com/d/celery-exporter-overview?orgId=1"
    boards = {json.loads(p.read_text())["uid"] for p in (ROOT / "dashboards").glob("*.json")}
    assert {link.split("/d/")[1].split("?")[0] for link in links.values()} <= boards
    _, rules = generated(promtool, tmp_path, {"runbookUrlPattern": "https://wiki.example.com/runbooks/%s"}, "rb.yml")
    assert (
        rules["CeleryNoWorkerUp"]["annotations"]["runbook_url"] == "https://wiki.example.com/runbooks/celerynoworkerup"
    )


def test_per_task_and_per_queue_overrides_pass_their_promtool_test(promtool, tmp_path):
    """alerts/tests/overrides/: a configuration with per-task and per-queue overrides, and the
    promtool test of the rules rendered from it (each override changes exactly its task)."""
    config = yaml.safe_load((OVERRIDES / "config.yml").read_text())
    _, rules = generated(promtool, tmp_path, config, "celery-exporter.rules.yml")
    running = flat(rules["CeleryTaskRunningTooLong"]["expr"])
    assert 'name!="app.tasks.export", name!="app.tasks.nightly_report"}) > 7200 or time() - ' in running
    assert '{job="celery-exporter", name="app.tasks.nightly_report"}) > 14400' in running
    shutil.copy(OVERRIDES / "overrides.test.yml", tmp_path)
    run = subprocess.run(
        [promtool, "test", "rules", "overrides.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize(
    "config,message",
    [
        ({"alerts": {"CeleryWorkrLost": {"for": "5s"}}}, "alerts.CeleryWorkrLost: no such key"),
        (
            {"alerts": {"CeleryWorkerLost": {"for": "5"}}},
            "alerts.CeleryWorkerLost.for: '5' is not a Prometheus duration",
        ),
        (
            {"alerts": {"CeleryQueueBacklog": {"threshold": "lots"}}},
            "alerts.CeleryQueueBacklog.threshold: expected a number",
        ),
        ({"alerts": {"CeleryWorkerLost": {"threshold": 3}}}, "alerts.CeleryWorkerLost.threshold: no such key"),
        ({"alerts": {"CeleryWorkerLost": {"enabled": "no"}}}, "expected true or false"),
        ({"taskFailureSlo": {"target": 1}}, "taskFailureSlo.target: 1 must be below 1"),
        ({"taskFailureSlo": {"taskTargets": {"app.x": 99}}}, "taskFailureSlo.taskTargets.app.x: 99 must be below 1"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {'app"x': 5}}}}, "holds a quote"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {"app\\x": 5}}}}, "a backslash"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {"app\nx": 5}}}}, "an unprintable character"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {"app.x": "long"}}}}, "expected a number"),
        ({"selectors": {"job": None}}, "selectors.job: required"),
        ({"selectors": {"9job": "x"}}, "'9job' is not a label name"),
        ({"runbookUrlPattern": "https://example.com/"}, "needs exactly one %s"),
        ({"dashboardUrlPattern": "https://g/d/%s/%d"}, "needs exactly one %s"),
        (
            {"queueWaitSlo": {"threshold": 45}},
            "queueWaitSlo.threshold: 45 is not a bound of the exporter's wait buckets",
        ),
        ({"queueWaitSlo": {"queueThresholds": {"q": 61}}}, "queueWaitSlo.queueThresholds.q: 61 is not a bound"),
        ({"alerts": []}, "alerts: expected a mapping"),
        ([1], "the configuration must be a mapping"),
    ],
)
def test_generate_refuses_what_it_cannot_apply(tmp_path, config, message):
    source = tmp_path / "config.yml"
    source.write_text(yaml.safe_dump(config))
    result = generate("--config", str(source))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("generate.py: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_other_wait_buckets_admit_other_thresholds(promtool, tmp_path):
    config = {"queueWaitSlo": {"threshold": 45, "waitBuckets": [1, 45, 300]}}
    _, rules = generated(promtool, tmp_path, config)
    assert 'le="45.0"' in rules["celery:queue_wait_slow:rate5m"]["expr"]
    assert "histogram_fraction(0, 45, " in rules["celery:queue_wait_slow:rate5m"]["expr"]


def test_the_rules_read_only_declared_keys_and_every_key_is_read():
    rulegen()
    from rulegen import config, rules, template

    read = set(template.value_paths(rules.document()))
    declared = {path for path, _ in config.rows(rules.CONFIG)}
    assert read <= declared, read - declared
    # the wait buckets are read by the check of the thresholds, not by a rule
    assert declared - read == {("queueWaitSlo", "waitBuckets")}


def test_numbers_are_written_as_helm_prints_them_and_le_as_the_exporter_does():
    template = rulegen().template
    # what Go's %v prints for a float64 (checked against helm itself in test_helm.py)
    cases = {
        0: "0",
        1: "1",
        0.999: "0.999",
        14.4: "14.4",
        3600: "3600",
        100000: "100000",
        1000000: "1e+06",
        123456789: "1.23456789e+08",
        0.0001: "0.0001",
        0.00001: "1e-05",
        1.5e-7: "1.5e-07",
        -2.5: "-2.5",
        1e21: "1e+21",
    }
    assert {k: template.go_number(k) for k in cases} == cases
    for b in list(DEFAULT_WAIT_BUCKETS) + [1e6, 1234567.0, 123456.0, 1e-5, 0.25]:
        assert template.le_text(b) == bound(b), b
