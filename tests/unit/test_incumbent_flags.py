"""danihodovic/celery-exporter's flags (the incumbent's, v0.12 and its main branch): each one
with an equivalent is accepted, applied as its replacement would be, and logs one
deprecation warning naming the replacement; each that cannot be applied (or a value that
cannot) is refused at start with one line naming it and saying what to do, exit 2; its CE_*
environment variables are refused naming the variable to set; docs/migration.md's table
lists every one of them."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from celery_exporter.settings.build import OPTIONS, incumbent_flags
from celery_exporter.settings.model import INCUMBENT_SAME_FLAGS

from .test_receiver_web_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]

# Every flag of the incumbent's command line (src/cli.py of 0.12.2 and of its main branch
# after it), written out from reading it.
INCUMBENT_FLAGS = {
    "--broker-url",
    "--broker-transport-option",
    "--broker-ssl-option",
    "--accept-content",
    "--retry-interval",
    "--host",
    "--port",
    "--buckets",
    "--queue-wait-buckets",
    "--log-level",
    "--worker-timeout",
    "--purge-offline-worker-metrics",
    "--generic-hostname-task-sent-metric",
    "--generic-hostname-worker-task-metric",
    "--queues",
    "--metric-prefix",
    "--default-queue-name",
    "--static-label",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("CELERY_EXPORTER_", "CE_")) or var == "CELERY_BROKER_URL":
            monkeypatch.delenv(var)


def test_every_flag_of_the_incumbent_is_declared_once():
    declared = {o.long_flag for o in incumbent_flags()} | set(INCUMBENT_SAME_FLAGS)
    assert declared == INCUMBENT_FLAGS
    assert len(incumbent_flags()) + len(INCUMBENT_SAME_FLAGS) == len(INCUMBENT_FLAGS)
    for option in incumbent_flags():
        assert option.env == () and not option.chart, option  # hidden from env, the chart and --help


def test_the_migration_page_lists_every_flag():
    text = (ROOT / "docs" / "migration.md").read_text()
    block = text.split("<!-- BEGIN GENERATED: incumbent-flags -->")[1].split("<!-- END GENERATED")[0]
    listed = set(re.findall(r"^\| `(--[a-z-]+)`", block, re.M))
    assert listed == INCUMBENT_FLAGS


ACCEPTED = [
    # (the incumbent's arguments, Settings field, value applied, the flag to use instead)
    (["--host", "127.0.0.2"], "listen_address", "127.0.0.2", "--listen-address"),
    (["--buckets", "0.5,1,2"], "runtime_buckets", (0.5, 1.0, 2.0), "--runtime-buckets"),
    (["--queue-wait-buckets", "1,10"], "wait_buckets", (1.0, 10.0), "--wait-buckets"),
    (["--purge-offline-worker-metrics", "600"], "worker_ttl", 600.0, "--worker-ttl"),
    (["--retry-interval", "5"], "reconnect_backoff", (5.0, 5.0), "reconnects by itself"),
    (["--queues", "a,b"], "queues", ("a", "b"), "-Q/--queue"),
    (
        ["--broker-transport-option", "visibility_timeout=18000", "--broker-transport-option", "fanout_prefix=true"],
        "transport_options",
        {"visibility_timeout": 18000, "fanout_prefix": True},
        "--transport-option",
    ),
    (["--generic-hostname-worker-task-metric"], "task_hostname_label", False, "no hostname label"),
    (["--generic-hostname-task-sent-metric"], "task_hostname_label", False, "celery_task_sent_total"),
    (["--metric-prefix", "celery_"], "task_hostname_label", False, "celery_ is the prefix"),
]


@pytest.mark.parametrize("argv,field,value,instead", ACCEPTED, ids=[a[0][0] for a in ACCEPTED])
def test_an_accepted_flag_is_applied_with_one_warning(argv, field, value, instead, capsys, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="celery_exporter")
    code, out, settings = run_cli(argv, capsys, monkeypatch)
    assert code == 0, out.err
    assert getattr(settings, field) == value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{argv[0]} is danihodovic/celery-exporter's flag, deprecated here: ")
    assert instead in warnings[0]


def test_the_new_flags_log_no_warning_and_old_and_new_give_the_same_settings(capsys, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="celery_exporter")
    old = ["--host", "::", "--buckets", "1,2", "--queues", "q", "--purge-offline-worker-metrics", "120"]
    new = ["--listen-address", "::", "--runtime-buckets", "1,2", "-Q", "q", "--worker-ttl", "120"]
    _, _, from_old = run_cli(old, capsys, monkeypatch)
    caplog.clear()
    _, _, from_new = run_cli(new, capsys, monkeypatch)
    assert from_old == from_new
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


REFUSED = [
    # (arguments, the flag named, words of what to do instead)
    (["--static-label", "env=prod"], "--static-label", "target label"),
    (["--metric-prefix", "myapp_"], "--metric-prefix", "metric_relabel_configs"),
    (["--default-queue-name", "default"], "--default-queue-name", "task_send_sent_event"),
    (["--retry-interval", "0"], "--retry-interval", "always reconnects"),
    (["--purge-offline-worker-metrics", "0"], "--purge-offline-worker-metrics", "--worker-ttl"),
    (["--host", "::", "--listen-address", "::"], "--host", "give --listen-address only"),
    (["--buckets", "1", "--runtime-buckets", "2"], "--buckets", "give --runtime-buckets only"),
    (
        ["--generic-hostname-worker-task-metric", "--task-hostname-label"],
        "--generic-hostname-worker-task-metric",
        "give one",
    ),
    (
        ["--purge-offline-worker-metrics", "20", "--worker-timeout", "30s"],
        "--worker-ttl",
        "longer than --worker-timeout",
    ),
]


@pytest.mark.parametrize("argv,flag,instead", REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_a_flag_that_cannot_be_applied_is_refused_in_one_line(argv, flag, instead, capsys, monkeypatch):
    code, out, settings = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and settings is None
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and instead in lines[0], lines


@pytest.mark.parametrize(
    "var,instead",
    [
        ("CE_BROKER_URL", "CELERY_EXPORTER_BROKER_URL"),
        ("CE_HOST", "CELERY_EXPORTER_LISTEN_ADDRESS"),
        ("CE_BUCKETS", "CELERY_EXPORTER_RUNTIME_BUCKETS"),
        ("CE_STATIC_LABEL", "target label"),
        ("CE_RETRY_INTERVAL", "--retry-interval"),
    ],
)
def test_the_incumbents_environment_variables_are_refused_naming_what_to_set(var, instead, capsys, monkeypatch):
    code, out, settings = run_cli([], capsys, monkeypatch, env={var: "1"})
    assert code == 2 and settings is None
    (line,) = out.err.strip().splitlines()
    assert var in line and instead in line, line


def test_incumbent_options_are_not_in_the_reference_and_ours_keep_their_names():
    ours = [o for o in OPTIONS.values() if not o.incumbent]
    for flag in INCUMBENT_FLAGS - set(INCUMBENT_SAME_FLAGS):
        assert not any(flag in o.flags for o in ours), flag
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for option in incumbent_flags():
        assert f"`{option.long_flag}`" not in reference, option.long_flag
