"""What a release carries in the package: the version and the source revision (in `--version`
and celery_exporter_build_info), the `celery -A proj exporter` subcommand, and the pieces of
`celery-exporter healthcheck` that need no server (tests/integration/test_healthcheck.py
runs it against real ones)."""

from __future__ import annotations

import dataclasses
import platform
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import celery
import click
import pytest
from click.testing import CliRunner

from celery_exporter import __version__, app_config, cli, healthcheck
from celery_exporter import revision as revision_module
from celery_exporter.webconfig import WebConfig

from .conftest import Rig


@pytest.fixture
def revision_file(tmp_path, monkeypatch):
    """The package's REVISION file, moved into tmp_path: returns its path."""
    monkeypatch.setattr(revision_module, "__file__", str(tmp_path / "revision.py"))
    revision_module.revision.cache_clear()
    yield tmp_path / "REVISION"
    revision_module.revision.cache_clear()


def test_the_revision_is_the_file_the_build_writes(revision_file):
    revision_file.write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert revision_module.revision() == "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["no file", "empty", "blank"])
def test_without_a_revision_file_the_revision_is_unknown(revision_file, content):
    if content is not None:
        revision_file.write_text(content)
    assert revision_module.revision() == "unknown"


def test_build_info_carries_the_version_and_the_revision():
    rig = Rig()
    labels = {
        "version": __version__,
        "revision": revision_module.revision(),
        "celery_version": celery.__version__,
        "kombu_version": __import__("kombu").__version__,
        "python_version": platform.python_version(),
    }
    assert rig.value("celery_exporter_build_info", **labels) == 1
    assert len(rig.family("celery_exporter_build_info")) == 1


def test_version_names_the_version_and_the_revision(capsys):
    cli.main(["--version"])  # (click's --version ends the command; main returns, the script exits 0)
    expected = f"celery-exporter, version {__version__} (revision {revision_module.revision()})\n"
    assert capsys.readouterr().out == expected


# -- celery -A proj exporter ----------------------------------------------------------------


@pytest.fixture
def celery_app_module(tmp_path, monkeypatch):
    """A module `relapp` holding a Celery app, importable as `celery -A relapp` imports it."""
    (tmp_path / "relapp.py").write_text(
        textwrap.dedent(
            """
            from celery import Celery
            app = Celery("relapp", broker="redis://broker.example:6379/3")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "relapp"
    sys.modules.pop("relapp", None)


def run_celery(argv, monkeypatch, default_map=None):
    """Celery's own command line with our subcommand, `serve` replaced: (exit code, output,
    the values and given options serve received)."""
    from celery.bin.celery import celery as celery_main

    served = {}
    for var in ("CELERY_BROKER_URL", "CELERY_EXPORTER_BROKER_URL", "CELERY_EXPORTER_PORT", "CELERY_EXPORTER_QUEUES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli, "serve", lambda values, given: served.update(values=values, given=given))
    if "exporter" not in celery_main.commands:  # an install without the entry point's metadata
        monkeypatch.setitem(celery_main.commands, "exporter", cli.celery_command)
    result = CliRunner().invoke(celery_main, argv, default_map=default_map, catch_exceptions=False)
    return result.exit_code, result.output, served


def test_celery_registers_the_exporter_subcommand_through_its_entry_point():
    from importlib.metadata import entry_points

    every = entry_points()
    group = every.select(group="celery.commands") if hasattr(every, "select") else every.get("celery.commands", [])
    found = [ep for ep in group if ep.name == "exporter"]
    # (a set: Python 3.9 lists a distribution twice when its egg-info sits in the current directory)
    assert {ep.value for ep in found} == {"celery_exporter.cli:celery_command"}
    assert found[0].load() is cli.celery_command


def test_the_celery_subcommand_takes_the_app_from_dash_a(celery_app_module, monkeypatch):
    argv = ["-A", celery_app_module, "exporter", "--port", "9999", "-Q", "emails"]
    code, output, served = run_celery(argv, monkeypatch)
    assert code == 0, output
    # the name (Celery 5.7), or the app object that Celery 5.3 makes of it while parsing
    assert served["values"]["app"] in ("relapp", app_config.HANDED_OVER)
    assert app_config.find(served["values"]["app"]) is sys.modules["relapp"].app
    assert served["values"]["port"] == 9999 and served["values"]["queues"] == (("emails",),)
    assert {"port", "queues"} <= served["given"] and "broker_url" not in served["given"]


def test_the_celery_subcommand_without_dash_a_serves_without_an_app(monkeypatch):
    code, output, served = run_celery(["exporter", "--broker-url", "amqp://guest@rabbit//"], monkeypatch)
    assert code == 0, output
    assert "app" not in served["values"] and served["values"]["broker_url"] == "amqp://guest@rabbit//"


def test_the_celery_subcommand_has_every_option_but_app():
    names = {p.name for p in cli.celery_command.params}
    assert names == {p.name for p in cli.command.params} - {"app"}
    assert cli.celery_command.name == "exporter"


def test_the_celery_subcommand_takes_an_app_object_handed_over(monkeypatch):
    """app.start(["exporter"]) hands Celery's command line the app object, not a name."""
    app = celery.Celery("handed")
    code, output, served = run_celery(["exporter"], monkeypatch, default_map={"app": app})
    assert code == 0, output
    assert served["values"]["app"] == app_config.HANDED_OVER
    assert app_config.find(app_config.HANDED_OVER) is app
    assert app_config.display(app_config.HANDED_OVER) == "handed (given to celery -A)"
    assert app_config.display("proj.celery:app") == "proj.celery:app"


def test_the_celery_subcommand_settings_come_from_the_app(celery_app_module, monkeypatch):
    """The whole path but serving: the broker URL comes from the app named by -A."""
    from celery.bin.celery import celery as celery_main

    captured = {}
    monkeypatch.setattr(cli, "run", lambda settings: captured.setdefault("settings", settings))
    monkeypatch.setattr(cli.logs, "setup", lambda *a: None)
    for var in ("CELERY_BROKER_URL", "CELERY_EXPORTER_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(celery_main.commands, "exporter", cli.celery_command)
    result = CliRunner().invoke(celery_main, ["-A", celery_app_module, "exporter", "--no-inspect"])
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert settings.app in ("relapp", app_config.HANDED_OVER)
    assert settings.broker_url == "redis://broker.example:6379/3"
    assert settings.inspect is False and settings.queues == ("celery",)


# -- healthcheck ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen,host",
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "::1"), ("10.1.2.3", "10.1.2.3"), ("::1", "::1")],
)
def test_the_healthcheck_asks_the_loopback_address_for_a_wildcard(listen, host):
    assert healthcheck.target_host(listen) == host


def test_without_tls_the_healthcheck_speaks_plain_http():
    assert healthcheck.client_context(None) is None
    assert healthcheck.client_context(WebConfig(path="w.yml", ssl_context=None, users={})) is None


def make_pair(tmp_path, name):
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run([*openssl, "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return str(crt), str(key)


def server_config(crt, key, client_certs=False):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
    pem = (Path(crt).read_text(), Path(key).read_text())
    return WebConfig(path="w.yml", ssl_context=context, users={}, server_pem=pem)


def test_with_tls_the_healthcheck_expects_the_configured_certificate(tmp_path):
    crt, key = make_pair(tmp_path, "server")
    config = server_config(crt, key)
    context = healthcheck.client_context(config)
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    expected = ssl.PEM_cert_to_DER_cert((tmp_path / "server.crt").read_text())
    assert healthcheck.configured_certificate(config) == expected
    other_crt, _ = make_pair(tmp_path, "other")
    assert healthcheck.configured_certificate(server_config(other_crt, str(tmp_path / "other.key"))) != expected


def test_a_cert_file_without_a_certificate_matches_nothing(tmp_path):
    crt, key = make_pair(tmp_path, "server")
    config = dataclasses.replace(server_config(crt, key), server_pem=("no certificate here\n", ""))
    assert healthcheck.configured_certificate(config) is None


def test_with_client_certificates_required_the_healthcheck_presents_the_servers_own(tmp_path, monkeypatch):
    crt, key = make_pair(tmp_path, "server")
    loaded = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, password=None):
        loaded.append((certfile, keyfile))
        return original(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    healthcheck.client_context(server_config(crt, key, client_certs=False))
    assert loaded == [(crt, key)]  # the server's own context only
    healthcheck.client_context(server_config(crt, key, client_certs=True))
    # ...and now the client's too: the cert_file's text and key, through a temporary file gone at once
    assert len(loaded) == 3 and loaded[2][1] is None and not Path(loaded[2][0]).exists()


def test_the_healthcheck_options_are_the_exporters_own():
    names = {p.name for p in cli.healthcheck_command.params}
    assert names == {"listen_address", "port", "web_config_file", "web_health_open", "timeout", "ready"}
    by_name = {p.name: p for p in cli.healthcheck_command.params}
    assert (
        isinstance(by_name["port"], click.Option)
        and by_name["port"].envvar == [o for o in cli.command.params if o.name == "port"][0].envvar
    )


def test_the_healthcheck_imports_neither_kombu_nor_celery(tmp_path):
    """It runs every 30 s in the container: the broker's libraries cost it most of a second."""
    script = textwrap.dedent(
        """
        import sys
        from celery_exporter import cli
        try:
            cli.main(["healthcheck", "--port", "1", "--timeout", "1s"])
        except SystemExit as exc:
            print(exc.code, sorted(m for m in ("kombu", "celery", "redis", "amqp") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "1 []", out


def test_a_bad_web_config_is_a_healthcheck_usage_error_naming_the_flag(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users:\n  a: nothash\n")
    out = subprocess.run(
        [sys.executable, "-m", "celery_exporter", "healthcheck", "--web-config-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert "--web-config-file" in line and "not a bcrypt hash" in line
