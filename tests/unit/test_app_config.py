"""--app: the broker settings come from the user's Celery app; flags and env vars override."""

import sys
import uuid

import pytest

from .test_receiver_web_cli import run_cli

APP = """
import ssl
from celery import Celery
from kombu import Queue
app = Celery("proj", broker="redis://127.0.0.1:6379/11")
app.conf.broker_transport_options = {"global_keyprefix": "proj:", "priority_steps": [0, 5, 9]}
app.conf.task_default_queue = "default"
app.conf.task_queues = [Queue("default"), Queue("emails"), Queue("reports")]
app.conf.event_serializer = "pickle"
app.conf.event_exchange = "proj-events"
app.conf.broker_use_ssl = {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ssl/ca.pem"}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    name = f"proj_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(APP)
    monkeypatch.chdir(tmp_path)  # found from the current directory, as celery -A does
    yield name
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def test_settings_come_from_the_app(project, capsys, monkeypatch):
    code, _, s = run_cli(["-A", project], capsys, monkeypatch)
    assert code == 0
    assert s.broker_url == "redis://127.0.0.1:6379/11"
    assert s.transport_options == {"global_keyprefix": "proj:", "priority_steps": [0, 5, 9]}
    assert s.queues == ("default", "emails", "reports")
    assert s.accept_content == ("pickle", "json")
    assert s.events_exchange == "proj-events"
    assert s.broker_ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ssl/ca.pem"}


def test_flags_and_environment_override_the_app(project, capsys, monkeypatch):
    code, _, s = run_cli(
        [f"--app={project}.celery:app", "-Q", "only", "--transport-option", "global_keyprefix=x:"],
        capsys,
        monkeypatch,
        env={"CELERY_EXPORTER_BROKER_URL": "amqp://guest:guest@rabbit//"},
    )
    assert code == 0
    assert s.broker_url == "amqp://guest:guest@rabbit//"
    assert s.queues == ("only",)
    assert s.transport_options == {"global_keyprefix": "x:"}
    assert s.events_exchange == "proj-events"  # not given: still from the app


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_project_xyz", "ModuleNotFoundError"),
        ("json:dumps", "is not a Celery app"),
    ],
)
def test_an_app_that_cannot_be_loaded_is_one_line_and_exit_2(spec, message, capsys, monkeypatch):
    code, out, settings = run_cli(["--app", spec], capsys, monkeypatch)
    assert code == 2 and settings is None
    (line,) = out.err.strip().splitlines()
    assert "'--app'" in line and message in line and "Traceback" not in out.err


def test_the_app_from_its_environment_variable_is_the_app_from_the_flag(project, capsys, monkeypatch):
    _, _, from_flag = run_cli(["--app", project], capsys, monkeypatch)
    _, _, from_env = run_cli([], capsys, monkeypatch, env={"CELERY_EXPORTER_APP": project})
    assert from_flag.app == project and from_flag.events_exchange == "proj-events"
    assert from_env == from_flag


def test_an_app_value_the_exporter_refuses_names_the_app(tmp_path, capsys, monkeypatch):
    name = f"proj_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("from celery import Celery\napp = Celery('p', broker='nosuch://host')\n")
    monkeypatch.chdir(tmp_path)
    try:
        code, out, settings = run_cli(["-A", name], capsys, monkeypatch)
        assert code == 2 and settings is None
        (line,) = out.err.strip().splitlines()
        assert "'--app'" in line and "the app's broker_url: unsupported broker URL scheme" in line
        # the flag the user gives wins, and the app's value is not used
        code, _, settings = run_cli(["-A", name, "-b", "redis://r:6379/0"], capsys, monkeypatch)
        assert code == 0 and settings.broker_url == "redis://r:6379/0"
    finally:
        sys.modules.pop(name, None)
