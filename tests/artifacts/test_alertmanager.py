"""alerts/alertmanager.example.yml: amtool accepts it, routes the shipped alerts by severity, and
its inhibit rules name real alerts, never inhibit their own source and mute what they should in
a running Alertmanager (Debian package prometheus-alertmanager: amtool, prometheus-alertmanager)."""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "alerts" / "alertmanager.example.yml"
RULES = ROOT / "alerts" / "celery-exporter.rules.yml"

PAGER, CHAT, DEFAULT = "celery-pager", "celery-chat", "default"
RECEIVER_FOR_SEVERITY = {"critical": PAGER, "warning": CHAT}

# What each inhibit rule mutes (README / issue 14): source alert -> (targets, equal labels).
INHIBITIONS = {
    "CeleryBrokerUnreachable": (
        {
            "CeleryWorkerLost",
            "CeleryExporterBrokerDisconnected",
            "CeleryTasksInterrupted",
            "CeleryQueueBacklog",
            "CeleryQueueWaitHigh",
            "CeleryBeatEntryOverdue",
        },
        ["cluster", "namespace", "job"],
    ),
    "CeleryNoWorkerUp": (
        {
            "CeleryWorkerLost",
            "CeleryQueueBacklog",
            "CeleryQueueWaitHigh",
            "CeleryBeatEntryOverdue",
            "CeleryTaskRunningTooLong",
        },
        ["cluster", "namespace", "job"],
    ),
    "CeleryExporterDown": (
        {"CeleryExporterNoEvents", "CeleryExporterBrokerDisconnected"},
        ["cluster", "namespace", "job", "instance"],
    ),
}


@pytest.fixture(scope="module")
def amtool():
    path = shutil.which("amtool")
    assert path, "amtool not found: install Debian's prometheus-alertmanager package (.ci/run does)"
    return path


def config():
    return yaml.safe_load(CONFIG.read_text())


def shipped_severities():
    """{alert name: severity} of alerts/celery-exporter.rules.yml."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["labels"]["severity"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


# -- Alertmanager's matchers, enough of them for this file -----------------------------------

MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def parse_matcher(text):
    found = MATCHER.match(text)
    assert found, f'not a matcher of the form name<op>"value": {text!r}'
    return found.groups()


def matches(matchers, labels):
    """Whether every matcher matches the label set (a missing label is the empty string; regular
    expressions are anchored, as in Alertmanager)."""
    for name, op, value in map(parse_matcher, matchers):
        actual = labels.get(name, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def test_matcher_helper_behaves_like_alertmanager():
    assert matches(['alertname=~"Celery.*"'], {"alertname": "CeleryWorkerLost"})
    assert not matches(['alertname=~"Celery"'], {"alertname": "CeleryWorkerLost"})  # anchored
    assert matches(['severity!="critical"'], {})
    assert not matches(['alertname="A"', 'severity="critical"'], {"alertname": "A", "severity": "warning"})


def alert_names(matchers):
    """The alert names an `alertname` matcher list names: a value, or a plain alternation."""
    names = set()
    for name, op, value in map(parse_matcher, matchers):
        assert name == "alertname" and op in ("=", "=~"), matchers
        assert re.fullmatch(r"[A-Za-z]+(\|[A-Za-z]+)*", value), f"not a plain list of names: {value!r}"
        names |= set(value.split("|"))
    return names


# -- amtool ----------------------------------------------------------------------------------


def test_amtool_check_config_passes(amtool):
    result = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "3 inhibit rules" in result.stdout and "3 receivers" in result.stdout


def route_receivers(amtool, labels):
    args = [f"{k}={v}" for k, v in labels.items()]
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={CONFIG}", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


@pytest.mark.parametrize(
    "labels,receiver",
    [
        ({"alertname": "CeleryWorkerLost", "severity": "critical", "job": "celery-exporter", "hostname": "w1"}, PAGER),
        ({"alertname": "CeleryTaskFailureRatioHigh", "severity": "warning", "name": "app.tasks.send"}, CHAT),
        ({"alertname": "NodeFilesystemFull", "severity": "critical", "job": "node"}, DEFAULT),
        # a Celery alert of a severity no child route handles still reaches a Celery receiver
        ({"alertname": "CeleryMyOwnRule", "severity": "info"}, CHAT),
    ],
)
def test_amtool_routes_each_alert_to_its_receiver(amtool, labels, receiver):
    assert route_receivers(amtool, labels) == [receiver]


def test_amtool_routes_every_shipped_alert_by_its_severity(amtool):
    severities = shipped_severities()
    assert len(severities) >= 11
    routed = {name: route_receivers(amtool, {"alertname": name, "severity": sev}) for name, sev in severities.items()}
    assert routed == {name: [RECEIVER_FOR_SEVERITY[sev]] for name, sev in severities.items()}
    assert routed["CeleryWorkerLost"] == [PAGER] and routed["CeleryQueueBacklog"] == [CHAT]


# -- the parsed file -------------------------------------------------------------------------


def celery_route():
    routes = [r for r in config()["route"]["routes"] if matches(r["matchers"], {"alertname": "CeleryWorkerLost"})]
    assert len(routes) == 1
    return routes[0]


def test_layout_the_end_to_end_test_relies_on():
    doc = config()
    assert set(doc) <= {"global", "route", "receivers", "inhibit_rules", "templates"}
    root = doc["route"]
    assert root["receiver"] == DEFAULT
    assert (root["group_wait"], root["group_interval"], root["repeat_interval"]) == ("30s", "5m", "4h")
    celery = celery_route()
    assert celery["matchers"] == ['alertname=~"Celery.*"']
    assert celery["group_by"] == ["alertname", "cluster", "namespace", "job", "hostname", "name", "queue_name", "entry"]
    assert "instance" not in celery["group_by"] and "pod" not in celery["group_by"]

    # timings only on the root, so rewriting them there reaches every route
    def walk(route):
        yield route
        for child in route.get("routes", []):
            yield from walk(child)

    timed = [r for r in walk(root) if {"group_wait", "group_interval", "repeat_interval"} & set(r)]
    assert timed == [root]
    # every route names a receiver that exists, and every receiver notifies on resolve too
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert set(receivers) == {DEFAULT, PAGER, CHAT}
    assert all(r["receiver"] in receivers for r in walk(root))
    for name, receiver in receivers.items():
        configs = [c for key, value in receiver.items() if key.endswith("_configs") for c in value]
        assert configs, name
        assert all(c["send_resolved"] is True for c in configs), name


def test_every_shipped_severity_has_a_child_route():
    children = celery_route()["routes"]
    for alert, severity in shipped_severities().items():
        labels = {"alertname": alert, "severity": severity}
        handling = [c["receiver"] for c in children if matches(c["matchers"], labels)]
        assert handling == [RECEIVER_FOR_SEVERITY[severity]], (alert, severity, handling)


def test_inhibit_rules_are_the_intended_ones_and_name_real_alerts():
    shipped = set(shipped_severities())
    rules = config()["inhibit_rules"]
    found = {}
    for rule in rules:
        assert set(rule) == {"source_matchers", "target_matchers", "equal"}, rule
        (source,) = alert_names(rule["source_matchers"])
        targets = alert_names(rule["target_matchers"])
        assert {source} | targets <= shipped, ({source} | targets) - shipped
        found[source] = (targets, rule["equal"])
    assert found == INHIBITIONS


def test_no_inhibit_rule_source_matches_its_own_targets():
    severities = shipped_severities()
    for rule in config()["inhibit_rules"]:
        for alert, severity in severities.items():
            labels = {"alertname": alert, "severity": severity}
            both = matches(rule["source_matchers"], labels) and matches(rule["target_matchers"], labels)
            assert not both, (alert, rule)
        (source,) = alert_names(rule["source_matchers"])
        assert not matches(rule["target_matchers"], {"alertname": source}), rule


# -- a running Alertmanager ------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "alertmanager not found: install Debian's prometheus-alertmanager package (.ci/run does)"
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={CONFIG}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "alertmanager.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def post_alerts(url, alerts):
    body = json.dumps([{"labels": labels} for labels in alerts]).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def alert_states(url):
    """{(alertname, the test's `tag` label): state} of every alert Alertmanager holds."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts = json.load(response)
    return {(a["labels"]["alertname"], a["labels"].get("tag", "")): a["status"]["state"] for a in alerts}


def test_inhibitions_in_a_running_alertmanager(alertmanager):
    prod = {"cluster": "eu1", "namespace": "monitoring", "job": "celery-exporter"}
    other = {"cluster": "eu1", "namespace": "monitoring", "job": "other-celery"}
    alerts = [
        # rule 1: no exporter of the job reaches the broker; the worker and queue alerts
        # aggregate over the exporters (no instance label), and exporter a's own alert: muted
        {**prod, "alertname": "CeleryBrokerUnreachable", "severity": "critical", "tag": "broker"},
        {**prod, "alertname": "CeleryExporterBrokerDisconnected", "severity": "warning", "instance": "a", "tag": "a"},
        {**prod, "alertname": "CeleryWorkerLost", "severity": "critical", "hostname": "w1", "tag": "w1"},
        {**prod, "alertname": "CeleryQueueBacklog", "severity": "warning", "queue_name": "q", "tag": "q"},
        # not a target of any rule: notifies
        {**prod, "alertname": "CeleryTaskFailureRatioHigh", "severity": "warning", "name": "t", "tag": "t"},
        # another job (another broker): not muted by this job's outage
        {**other, "alertname": "CeleryWorkerLost", "severity": "critical", "hostname": "w9", "tag": "w9"},
        # rule 3: exporter b cannot be scraped; its stale NoEvents is muted, exporter d's is not
        {**other, "alertname": "CeleryExporterDown", "severity": "warning", "instance": "b", "tag": "b"},
        {**other, "alertname": "CeleryExporterNoEvents", "severity": "warning", "instance": "b", "tag": "b"},
        {**other, "alertname": "CeleryExporterNoEvents", "severity": "warning", "instance": "d", "tag": "d"},
    ]
    post_alerts(alertmanager, alerts)
    expected = {
        ("CeleryBrokerUnreachable", "broker"): "active",
        ("CeleryExporterBrokerDisconnected", "a"): "suppressed",
        ("CeleryWorkerLost", "w1"): "suppressed",
        ("CeleryQueueBacklog", "q"): "suppressed",
        ("CeleryTaskFailureRatioHigh", "t"): "active",
        ("CeleryWorkerLost", "w9"): "active",
        ("CeleryExporterDown", "b"): "active",
        ("CeleryExporterNoEvents", "b"): "suppressed",
        ("CeleryExporterNoEvents", "d"): "active",
    }
    # the inhibitor picks sources up asynchronously: wait for it
    deadline = time.monotonic() + 15
    while (states := alert_states(alertmanager)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert states == expected
