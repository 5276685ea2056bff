"""The shipped dashboards and alerts against a real Prometheus (Debian's `prometheus`)
scraping the real exporter, with its default flags, while real workers process tasks:
every dashboard query and template variable returns data, and CeleryWorkerLost goes to
firing for a SIGKILLed worker (its `for:` shortened through alerts/tune.py, the
documented override) and for no other worker, and CeleryTasksInterrupted for the task name it
was running."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from .rig import HOST, Proc, Rig, clean_env, free_port, http_get, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Grafana's built-in variables, as Grafana would expand them for a 1 s scrape interval
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s"}


class Prometheus:
    """Debian's Prometheus scraping the exporter every second, in its own directory under
    `tmp`; `features` go to --enable-feature (native-histograms makes it ask for protobuf)."""

    def __init__(
        self, tmp: Path, exporter_port: int, rules: Optional[Path] = None, features: Sequence[str] = (), name: str = ""
    ):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found (Debian package prometheus; .ci/run installs it)")
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        home = tmp / (name or "prometheus")
        home.mkdir()
        config = home / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)] if rules is not None else [],
                    "scrape_configs": [
                        {"job_name": "celery-exporter", "static_configs": [{"targets": [f"{HOST}:{exporter_port}"]}]}
                    ],
                }
            )
        )
        (home / "tsdb").mkdir()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'tsdb'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]
        if features:
            argv.append("--enable-feature=" + ",".join(features))
        self.proc = Proc(name or "prometheus", argv, home / "prometheus.log", clean_env())
        wait_for(
            lambda: http_get(self.base + "/-/ready")[0] == 200,
            30,
            what="Prometheus to be ready",
            describe=lambda: self.proc.log_text(3000),
        )

    def api(self, path: str, **params) -> dict:
        status, _, body = http_get(f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}")
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {body[:500]}")
        return data["data"]

    def query(self, expr: str) -> List[dict]:
        return self.api("query", query=expr)["result"]

    def firing(self, alertname: str) -> List[Dict[str, str]]:
        return [
            a["labels"]
            for a in self.api("alerts")["alerts"]
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]


def grafana_expand(expr: str) -> str:
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)
    for name in ("cluster", "namespace", "job", "name", "queue", "hostname"):  # the variables, set to All
        expr = expr.replace(f"${name}", ".*")
    assert "$" not in expr, expr
    return expr


def dashboard_queries() -> Dict[str, str]:
    out = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out[f"{board['title']} / {panel['title']} / {t['refId']}"] = grafana_expand(t["expr"])
    return out


def variable_queries() -> Dict[str, tuple]:
    """label_values(metric{selector}, label) of every dashboard variable."""
    out = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for var in board["templating"]["list"]:
            if var["type"] != "query":
                continue
            inner = var["definition"][len("label_values(") : -1]
            selector, label = inner.rsplit(",", 1)
            out[f"{board['title']} / ${var['name']}"] = (grafana_expand(selector.strip()), label.strip())
    return out


class Load(threading.Thread):
    """Keeps a steady mix of tasks flowing while the test looks at Prometheus."""

    def __init__(self, rig: Rig):
        super().__init__(daemon=True)
        self.rig = rig
        self.stop = threading.Event()
        self.error = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.wait(0.25):
                i += 1
                self.rig.send("it.succeed", [i], queue="celery" if i % 3 else "q2")
                if i % 4 == 0:
                    self.rig.send("it.fail")
                if i % 10 == 0:
                    self.rig.send("it.retry")
                if i % 12 == 1:  # 4 s every 3 s: a task is always running (the in-flight panels)
                    self.rig.send("it.hold", [4])
        except Exception as exc:  # shown by the test
            self.error = exc


def app_env(rig: Rig) -> Dict[str, str]:
    """What `-A it_worker_app` needs to import."""
    return {"IT_BROKER_URL": rig.broker_url, "PYTHONPATH": str(Path(__file__).resolve().parent)}


def test_dashboards_and_worker_lost_alert_on_a_real_prometheus(make_rig, tmp_path):
    rules = tmp_path / "rules.yml"
    tuned = subprocess.run(
        [sys.executable, str(ROOT / "alerts" / "tune.py"), "--for", "CeleryWorkerLost=5s"],
        capture_output=True,
        text=True,
        check=True,
    )
    rules.write_text(tuned.stdout)

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
