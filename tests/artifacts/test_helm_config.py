"""The chart's config values, generated from the exporter's settings declarations: what a
config value renders to (environment variables, arguments), that the exporter's own CLI
accepts it and gets the setting meant, that the schema refuses what the CLI would, and that
the generated files cannot drift from the declarations. Tools: as test_helm.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from celery_exporter import nativehist
from celery_exporter.settings import chart

from .test_helm import CHART, ROOT, container, env_of, kube_validate, render_values

# config key -> (value in values.yaml, what the exporter gets, Settings field, its value)
EXAMPLES = {
    "brokerSslOptions": (
        {"ca_certs": "/etc/ssl/ca.pem", "cert_reqs": 2},
        ["--broker-ssl-option=ca_certs=/etc/ssl/ca.pem", "--broker-ssl-option=cert_reqs=2"],
        "broker_ssl",
        {"ca_certs": "/etc/ssl/ca.pem", "cert_reqs": 2},
    ),
    "acceptContent": (["json", "pickle"], "json,pickle", "accept_content", ("json", "pickle")),
    "eventsExchange": ("proj-events", "proj-events", "events_exchange", "proj-events"),
    "eventReader": ("kombu", "kombu", "event_reader", "kombu"),
    # a million: YAML numbers reach the templates as floats, and must not render as 1e+06
    "webMaxRequests": (1000000, "1000000", "web_max_requests", 1000000),
    "webReadTimeout": ("20s", "20s", "web_read_timeout", 20.0),
    "runtimeBuckets": ([0.5, 1, 2.5], "0.5,1,2.5", "runtime_buckets", (0.5, 1.0, 2.5)),
    "waitBuckets": ([0.001, 60], "0.001,60", "wait_buckets", (0.001, 60.0)),
    "nativeBucketFactor": (1.5, "1.5", "native_schema", nativehist.schema_for_factor(1.5)),
    "nativeMaxBuckets": (80, "80", "native_max_buckets", 80),
    "workerTimeout": ("45s", "45s", "worker_timeout", 45.0),
    "workerTtl": ("20m", "20m", "worker_ttl", 1200.0),
    "seriesTtl": ("14d", "14d", "series_ttl", 14 * 86400.0),
    "sweepInterval": ("2m", "2m", "sweep_interval", 120.0),
    "maxSeries": (2000000, "2000000", "max_series", 2000000),
    "maxTasks": (200000, "200000", "max_tasks", 200000),
    "taskHostnameLabel": (True, "true", "task_hostname_label", True),
    "queues": (["emails", "celery"], "emails,celery", "queues", ("celery", "emails")),
    "queuePollInterval": ("15s", "15s", "queue_poll_interval", 15.0),
    "queuePollTimeout": ("3s", "3s", "poll_timeout", 3.0),
    "inspect": (False, "false", "inspect", False),
    "inspectInterval": ("1m", "1m", "inspect_interval", 60.0),
    "inspectTimeout": ("2s", "2s", "inspect_timeout", 2.0),
    "enableEvents": (True, "true", "enable_events", True),
    "scheduleRefreshInterval": ("5m", "5m", "schedule_refresh_interval", 300.0),
    "logLevel": ("debug", "debug", "log_level", "DEBUG"),
    "logFormat": ("text", "text", "log_format", "text"),
}
# set apart: with brokerSslOptions above it would be refused, as the CLI refuses both
SSL_OFF = {"brokerSsl": (False, "false", "broker_ssl", False)}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_every_config_value_has_an_example():
    assert set(EXAMPLES) | set(SSL_OFF) == set(VALUES["config"])
    assert [chart.value_name(o) for o in chart.chart_options()] == list(VALUES["config"])


def env_var(key: str) -> str:
    (option,) = [o for o in chart.chart_options() if chart.value_name(o) == key]
    return option.env[0]


def exporter_settings(c, monkeypatch):
    """The Settings the exporter builds from the container's args and CELERY_EXPORTER_* env."""
    from celery_exporter import cli
    from celery_exporter.settings import given_options

    for var in [v for v in os.environ if v.startswith("CELERY_EXPORTER_") or v == "CELERY_BROKER_URL"]:
        monkeypatch.delenv(var)
    for name, value in env_of(c).items():
        if isinstance(value, str) and name.startswith("CELERY_EXPORTER_"):
            monkeypatch.setenv(name, value)
    ctx = cli.command.make_context("celery-exporter", list(c["args"]))
    return cli.build_settings(ctx.params, given_options(ctx))


@pytest.mark.parametrize("examples", [EXAMPLES, SSL_OFF], ids=["all", "ssl-off"])
def test_config_values_reach_the_exporter_as_the_setting_meant(helm, tmp_path, monkeypatch, examples):
    manifests = render_values(helm, tmp_path, {"config": {k: v[0] for k, v in examples.items()}})
    kube_validate(manifests)
    _, c = container(manifests)
    env = env_of(c)
    args = c["args"][2:]  # after --listen-address and --port
    for key, (_, passed, _, _) in examples.items():
        if isinstance(passed, list):
            assert [a for a in args if a in passed] == passed, key
            assert env_var(key) not in env, key
        else:
            assert env[env_var(key)] == passed, key
    settings = exporter_settings(c, monkeypatch)
    for key, (_, _, field, expected) in examples.items():
        assert getattr(settings, field) == expected, key


def test_default_config_passes_what_it_always_did(helm, tmp_path, monkeypatch):
    manifests = render_values(helm, tmp_path, {})
    _, c = container(manifests)
    config_env = {k: v for k, v in env_of(c).items() if k != "CELERY_EXPORTER_BROKER_URL"}
    assert config_env == {
        "CELERY_EXPORTER_TASK_HOSTNAME_LABEL": "false",
        "CELERY_EXPORTER_INSPECT": "true",
        "CELERY_EXPORTER_LOG_LEVEL": "INFO",
        "CELERY_EXPORTER_LOG_FORMAT": "json",
    }
    assert c["args"] == ["--listen-address=0.0.0.0", "--port=9808"]
    settings = exporter_settings(c, monkeypatch)
    assert settings.log_format == "json" and settings.inspect is True and settings.worker_timeout == 30.0


def test_empty_values_keep_the_exporters_defaults(helm, tmp_path):
    empty = {"maxSeries": None, "workerTtl": "", "queues": [], "brokerSslOptions": {}, "brokerSsl": None}
    _, c = container(render_values(helm, tmp_path, {"config": empty}))
    assert not {env_var(k) for k in empty} & set(env_of(c))
    assert not [a for a in c["args"] if a.startswith("--broker-ssl")]


@pytest.mark.parametrize(
    "key,value",
    [
        ("maxTasks", 99),
        ("webMaxRequests", 0),
        ("nativeBucketFactor", 0.5),
        ("logLevel", "loud"),
        ("logFormat", "xml"),
        ("inspectTimeout", "soon"),
        ("runtimeBuckets", [0]),
        ("queues", [""]),
        ("brokerSsl", "yes"),
        ("brokerSslOptions", ["ca_certs"]),
        ("noSuchOption", 1),
    ],
)
def test_the_schema_refuses_what_the_exporter_would(helm, tmp_path, key, value):
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"config": {key: value}}))
    result = helm("template", "rel", str(CHART), "-f", str(path), check=False)
    assert result.returncode != 0 and key in result.stderr, result.stderr


def test_the_generated_chart_files_are_checked_for_drift_and_rewritten(tmp_path):
    """sync.py --check fails when a generated file differs from the declarations, naming
    it; sync.py writes it back."""
    copy = tmp_path / "repo"
    for part in ("helm", "alerts", "dashboards", "celery_exporter"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.tgz"))
    template = copy / "helm" / "celery-exporter" / "templates" / "_config.tpl"
    values = copy / "helm" / "celery-exporter" / "values.yaml"
    template.write_text(template.read_text().replace("CELERY_EXPORTER_WORKER_TTL", "CELERY_EXPORTER_WORKER_TL"))
    values.write_text(values.read_text().replace('  workerTtl: ""', '  workerTtl: "1m"'))
    sync = [sys.executable, str(copy / "helm" / "sync.py")]
    check = subprocess.run([*sync, "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "helm/celery-exporter/templates/_config.tpl" in check.stderr
    assert "helm/celery-exporter/values.yaml" in check.stderr and "README.md" not in check.stderr
    subprocess.run(sync, check=True)
    assert subprocess.run([*sync, "--check"], capture_output=True, text=True).returncode == 0
    assert template.read_text() == (ROOT / "helm" / "celery-exporter" / "templates" / "_config.tpl").read_text()
