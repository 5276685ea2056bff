"""Debian's Prometheus and Alertmanager for the end-to-end tests, and the shipped dashboards'
queries as Grafana would send them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pytest
import yaml

from .rig import HOST, Proc, Rig, clean_env, free_port, http_get, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Grafana's built-in variables, as Grafana would expand them for a 1 s scrape interval
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s"}


class Prometheus:
    """Debian's Prometheus scraping the exporter(s) every second (job celery-exporter), in its
    own directory under `tmp`; `features` go to --enable-feature (native-histograms makes it
    ask for protobuf); `labels` are target labels (cluster, namespace); `alertmanager` is the
    host:port alerts go to."""

    def __init__(
        self,
        tmp: Path,
        exporter_port: Union[int, Sequence[int]],
        rules: Optional[Path] = None,
        features: Sequence[str] = (),
        name: str = "",
        labels: Optional[Dict[str, str]] = None,
        alertmanager: str = "",
        scrape_interval: str = "1s",
    ):
        ports = [exporter_port] if isinstance(exporter_port, int) else list(exporter_port)
        self.targets = [f"{HOST}:{port}" for port in ports]
        static: Dict[str, object] = {"targets": self.targets}
        if labels:
            static["labels"] = labels
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
                    "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
                    "rule_files": [str(rules)] if rules is not None else [],
                    "scrape_configs": [{"job_name": "celery-exporter", "static_configs": [static]}],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
                    if alertmanager
                    else {},
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
            # alerts go to the Alertmanager at once, and are sent again every second
            "--rules.alert.resend-delay=1s",
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

    def query(self, expr: str, at: Optional[float] = None) -> List[dict]:
        if at is None:
            return self.api("query", query=expr)["result"]
        return self.api("query", query=expr, time=f"{at:.3f}")["result"]

    def firing(self, alertname: str) -> List[Dict[str, str]]:
        return [
            a["labels"]
            for a in self.api("alerts")["alerts"]
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]


def rules_file(tmp: Path, config: Dict[str, object]) -> Path:
    """The rules alerts/generate.py renders for an alert configuration (what differs from the
    defaults, e.g. shorter `for:`s), written to tmp/rules.yml."""
    source = tmp / "alerts-config.yml"
    source.write_text(json.dumps(config))  # JSON is YAML
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "alerts" / "generate.py"), "--config", str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    rules = tmp / "rules.yml"
    rules.write_text(rendered.stdout)
    return rules


def grafana_expand(expr: str, builtins: Optional[Dict[str, str]] = None) -> str:
    for name, value in (builtins or GRAFANA_VARS).items():
        expr = expr.replace(name, value)
    for name in ("cluster", "namespace", "job", "name", "queue", "hostname"):  # the variables, set to All
        expr = expr.replace(f"${name}", ".*")
    assert "$" not in expr, expr
    return expr


def dashboard_queries(builtins: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    out = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out[f"{board['title']} / {panel['title']} / {t['refId']}"] = grafana_expand(t["expr"], builtins)
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


class Webhook:
    """An HTTP server of the test's own that records what Alertmanager posts to it: one
    (receiver path, payload) per notification."""

    def __init__(self) -> None:
        self.notifications: List[Tuple[str, dict]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    hook.notifications.append((self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:  # keep the test's output quiet
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> List[Tuple[str, dict]]:
        with self.lock:
            return list(self.notifications)

    def alerts(self, alertname: str, status: str = "", **labels: str) -> List[Tuple[str, dict, List[dict]]]:
        """Notifications (receiver, payload, matching alerts) that carry an alert of that name
        and labels, with the notification's status ("firing", "resolved") if given."""
        out = []
        for receiver, payload in self.received():
            if status and payload["status"] != status:
                continue
            hits = [
                a
                for a in payload["alerts"]
                if a["labels"].get("alertname") == alertname and all(a["labels"].get(k) == v for k, v in labels.items())
            ]
            if hits:
                out.append((receiver, payload, hits))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """Debian's Alertmanager with alerts/alertmanager.example.yml: its routes and inhibit rules
    as shipped, every receiver replaced by a webhook to `webhook_url`/<receiver name>, and the
    timings shortened for a test."""

    def __init__(self, tmp: Path, webhook_url: str):
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            pytest.fail("alertmanager not found (Debian package prometheus-alertmanager; .ci/run installs it)")
        config = yaml.safe_load((ROOT / "alerts" / "alertmanager.example.yml").read_text())
        config["receivers"] = [
            {"name": r["name"], "webhook_configs": [{"url": f"{webhook_url}/{r['name']}", "send_resolved": True}]}
            for r in config["receivers"]
        ]
        config["route"].update(group_wait="1s", group_interval="2s", repeat_interval="1h")
        home = tmp / "alertmanager"
        home.mkdir()
        (home / "alertmanager.yml").write_text(json.dumps(config))
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        argv = [
            binary,
            f"--config.file={home / 'alertmanager.yml'}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--cluster.listen-address=",  # no peers: a single Alertmanager
            "--log.level=warn",
        ]
        self.proc = Proc("alertmanager", argv, home / "alertmanager.log", clean_env())
        wait_for(
            lambda: http_get(self.base + "/-/ready")[0] == 200,
            30,
            what="Alertmanager to be ready",
            describe=lambda: self.proc.log_text(3000),
        )

    def alerts(self, alertname: str) -> List[dict]:
        """The alerts Alertmanager holds under that name, with their state (active,
        suppressed) and what inhibits them."""
        status, _, body = http_get(f"{self.base}/api/v2/alerts")
        assert status == 200, body[:300]
        return [a for a in json.loads(body) if a["labels"].get("alertname") == alertname]
