"""Each setting declared once: the click options, the typed Settings and the docs' reference
derived from the declarations; a flag and its environment variable parse alike; a bad value
of every type is one line naming the flag, and exit code 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import click
import pytest

from celery_exporter import cli, nativehist
from celery_exporter.settings import Group, Option, Settings, build_settings, chart, declarations, reference_markdown
from celery_exporter.settings.declaration import options
from celery_exporter.settings.params import DURATION_PATTERN, Duration, Items, KeyValue

from .test_receiver_web_cli import run_cli

# this exporter's own options (the incumbent's flags, hidden: tests/unit/test_incumbent_flags.py)
OPTIONS = {o.name: o for o in options(Settings) if not o.incumbent}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for var in list(os.environ):
        if var.startswith("CELERY_EXPORTER_") or var == "CELERY_BROKER_URL":
            monkeypatch.delenv(var)


# The user-visible surface, written out: flags, environment variables and defaults as
# --help shows them. A change here is a change users see.
SURFACE = [
    (("-A", "--app"), ["CELERY_EXPORTER_APP"], None),
    (("-b", "--broker-url"), ["CELERY_EXPORTER_BROKER_URL", "CELERY_BROKER_URL"], "redis://localhost:6379/0"),
    (("--transport-option",), ["CELERY_EXPORTER_TRANSPORT_OPTIONS"], None),
    (("--broker-ssl/--no-broker-ssl",), ["CELERY_EXPORTER_BROKER_SSL"], None),
    (("--broker-ssl-option",), ["CELERY_EXPORTER_BROKER_SSL_OPTIONS"], None),
    (("--accept-content",), ["CELERY_EXPORTER_ACCEPT_CONTENT"], "json"),
    (("--events-exchange",), ["CELERY_EXPORTER_EVENTS_EXCHANGE"], "celeryev"),
    (("--event-reader",), ["CELERY_EXPORTER_EVENT_READER"], "auto"),
    (("--listen-address",), ["CELERY_EXPORTER_LISTEN_ADDRESS"], "0.0.0.0"),
    (("-p", "--port"), ["CELERY_EXPORTER_PORT"], 9808),
    (("--web-config-file",), ["CELERY_EXPORTER_WEB_CONFIG_FILE"], None),
    (("--web-health-open/--no-web-health-open",), ["CELERY_EXPORTER_WEB_HEALTH_OPEN"], True),
    (("--web-max-requests",), ["CELERY_EXPORTER_WEB_MAX_REQUESTS"], 40),
    (("--web-read-timeout",), ["CELERY_EXPORTER_WEB_READ_TIMEOUT"], "10s"),
    (
        ("--runtime-buckets",),
        ["CELERY_EXPORTER_RUNTIME_BUCKETS"],
        "0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1.0,2.5,5.0,10.0,30.0,60.0,120.0,300.0,600.0,1800.0,3600.0",
    ),
    (
        ("--wait-buckets",),
        ["CELERY_EXPORTER_WAIT_BUCKETS"],
        "0.001,0.005,0.01,0.05,0.1,0.25,0.5,1.0,2.5,5.0,10.0,30.0,60.0,120.0,300.0,600.0,1800.0,3600.0",
    ),
    (("--native-bucket-factor",), ["CELERY_EXPORTER_NATIVE_BUCKET_FACTOR"], 1.1),
    (("--native-max-buckets",), ["CELERY_EXPORTER_NATIVE_MAX_BUCKETS"], 160),
    (("--worker-timeout",), ["CELERY_EXPORTER_WORKER_TIMEOUT"], "30s"),
    (("--worker-ttl",), ["CELERY_EXPORTER_WORKER_TTL"], "15m"),
    (("--series-ttl",), ["CELERY_EXPORTER_SERIES_TTL"], "7d"),
    (("--sweep-interval",), ["CELERY_EXPORTER_SWEEP_INTERVAL"], "60s"),
    (("--max-series",), ["CELERY_EXPORTER_MAX_SERIES"], 20000),
    (("--max-tasks",), ["CELERY_EXPORTER_MAX_TASKS"], 100000),
    (("--task-hostname-label/--no-task-hostname-label",), ["CELERY_EXPORTER_TASK_HOSTNAME_LABEL"], False),
    (("-Q", "--queue"), ["CELERY_EXPORTER_QUEUES"], None),
    (("--queue-poll-interval",), ["CELERY_EXPORTER_QUEUE_POLL_INTERVAL"], "10s"),
    (("--queue-poll-timeout",), ["CELERY_EXPORTER_QUEUE_POLL_TIMEOUT"], "5s"),
    (("--inspect/--no-inspect",), ["CELERY_EXPORTER_INSPECT"], True),
    (("--inspect-interval",), ["CELERY_EXPORTER_INSPECT_INTERVAL"], "30s"),
    (("--inspect-timeout",), ["CELERY_EXPORTER_INSPECT_TIMEOUT"], "1s"),
    (("--schedule-refresh-interval",), ["CELERY_EXPORTER_SCHEDULE_REFRESH_INTERVAL"], "60s"),
    (("--log-level",), ["CELERY_EXPORTER_LOG_LEVEL"], "INFO"),
    (("--log-format",), ["CELERY_EXPORTER_LOG_FORMAT"], "text"),
]


def click_param(flag: str) -> click.Option:
    (param,) = [p for p in cli.command.params if flag in p.opts]
    assert isinstance(param, click.Option)
    return param


def test_the_command_has_exactly_the_declared_options_in_order():
    declared = [o.name for o in OPTIONS.values()]
    shown = [p.name for p in cli.command.params if p.name != "version" and not getattr(p, "hidden", False)]
    assert shown == declared
    assert len(declared) == len(SURFACE) == 34


@pytest.mark.parametrize("flags,env,default", SURFACE, ids=[s[0][-1] for s in SURFACE])
def test_each_declaration_gives_its_click_option_with_env_var_and_default(flags, env, default):
    shown = [f for f in flags[0].split("/")] if "/" in flags[0] else list(flags)
    param = click_param(shown[0])
    assert param.opts + param.secondary_opts == [f for flag in flags for f in flag.split("/")]
    assert param.envvar == env and param.show_envvar
    assert param.default == default
    if isinstance(default, str):  # as --help shows it, and parsed as the Settings default
        assert param.show_default is True
    option = OPTIONS[param.name]
    assert option.env == tuple(env) and option.flags == flags


def flag_and_env(name, *values):
    """The same values as flags (repeated for a repeatable option) and as the env var."""
    option = OPTIONS[name]
    argv = [a for v in values for a in (option.long_flag, v)]
    return argv, {option.env[0]: " ".join(values)}


# option name -> (values as a user writes them, Settings field, expected value)
EXAMPLES = {
    "broker_url": (["amqp://u:p@rabbit//"], "broker_url", "amqp://u:p@rabbit//"),
    "transport_options": (
        ["global_keyprefix=prod:", "priority_steps=[0,5,9]"],
        "transport_options",
        {"global_keyprefix": "prod:", "priority_steps": [0, 5, 9]},
    ),
    "broker_ssl_options": (["cert_reqs=2", "ca_certs=/ca.pem"], "broker_ssl", {"cert_reqs": 2, "ca_certs": "/ca.pem"}),
    "accept_content": (["json,pickle"], "accept_content", ("json", "pickle")),
    "events_exchange": (["proj-events"], "events_exchange", "proj-events"),
    "event_reader": (["kombu"], "event_reader", "kombu"),
    "listen_address": (["::"], "listen_address", "::"),
    "port": (["9999"], "port", 9999),
    "web_max_requests": (["7"], "web_max_requests", 7),
    "web_read_timeout": (["1m"], "web_read_timeout", 60.0),
    "runtime_buckets": (["0.1,1,10"], "runtime_buckets", (0.1, 1.0, 10.0)),
    "wait_buckets": (["0.5,2"], "wait_buckets", (0.5, 2.0)),
    "native_bucket_factor": (["2"], "native_schema", 0),
    "native_max_buckets": (["50"], "native_max_buckets", 50),
    "worker_timeout": (["45"], "worker_timeout", 45.0),
    "worker_ttl": (["1h30m"], "worker_ttl", 5400.0),
    "series_ttl": (["14d"], "series_ttl", 14 * 86400.0),
    "sweep_interval": (["90s"], "sweep_interval", 90.0),
    "max_series": (["50000"], "max_series", 50000),
    "max_tasks": (["200000"], "max_tasks", 200000),
    "queues": (["emails,celery", "reports"], "queues", ("celery", "emails", "reports")),
    "queue_poll_interval": (["15s"], "queue_poll_interval", 15.0),
    "queue_poll_timeout": (["2s"], "poll_timeout", 2.0),
    "inspect_interval": (["1m"], "inspect_interval", 60.0),
    "inspect_timeout": (["500ms"], "inspect_timeout", 0.5),
    "schedule_refresh_interval": (["5m"], "schedule_refresh_interval", 300.0),
    "log_level": (["debug"], "log_level", "DEBUG"),
    "log_format": (["json"], "log_format", "json"),
}
# boolean pairs: (flag given, env value) -> field value
FLAGS = {
    "broker_ssl": ("broker_ssl", [("--broker-ssl", "true", True), ("--no-broker-ssl", "0", False)]),
    "web_health_open": ("health_open", [("--no-web-health-open", "false", False), ("--web-health-open", "yes", True)]),
    "task_hostname_label": ("task_hostname_label", [("--task-hostname-label", "1", True)]),
    "inspect": ("inspect", [("--no-inspect", "off", False), ("--inspect", "on", True)]),
}
# tested elsewhere: --app in test_app_config.py, --web-config-file below (it needs a file)
ELSEWHERE = {"app", "web_config_file"}


def test_every_option_has_an_example():
    assert set(EXAMPLES) | set(FLAGS) | ELSEWHERE == set(OPTIONS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_flag_and_its_environment_variable_give_the_same_settings(name, capsys, monkeypatch):
    values, field, expected = EXAMPLES[name]
    argv, env = flag_and_env(name, *values)
    code, out, from_flags = run_cli(argv, capsys, monkeypatch)
    assert code == 0, out.err
    code, out, from_env = run_cli([], capsys, monkeypatch, env=env)
    assert code == 0, out.err
    assert getattr(from_flags, field) == expected
    assert from_env == from_flags
    assert from_flags != Settings(), "the example must differ from the default"


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_a_boolean_flag_and_its_environment_variable_give_the_same_settings(name, capsys, monkeypatch):
    field, cases = FLAGS[name]
    for flag, env_value, expected in cases:
        _, _, from_flag = run_cli([flag], capsys, monkeypatch)
        _, _, from_env = run_cli([], capsys, monkeypatch, env={OPTIONS[name].env[0]: env_value})
        assert getattr(from_flag, field) is expected and from_env == from_flag, (flag, env_value)


def test_the_web_config_file_from_a_flag_or_the_environment(tmp_path, capsys, monkeypatch):
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prometheus: $2b$10$/4Nqhlxs7xE8kYqfDn3SSu9hixzAiOdzG1lhk6F4a8o4Qn4FNdupu\n")
    _, _, from_flag = run_cli(["--web-config-file", str(path)], capsys, monkeypatch)
    _, _, from_env = run_cli([], capsys, monkeypatch, env={"CELERY_EXPORTER_WEB_CONFIG_FILE": str(path)})
    assert from_flag.web_config is not None and list(from_flag.web_config.users) == ["prometheus"]
    assert from_flag.web_config.path == str(path) and from_flag.web_config.ssl_context is None
    assert from_env == from_flag


# option name -> values refused (each as the flag and as the env var)
BAD = {
    "broker_url": ["nosuch://host", "redis://a:6379/0;nosuch://b"],
    "transport_options": ["novalue", "=1"],
    "broker_ssl_options": ["novalue"],
    "accept_content": [",", " "],
    # not a reader; a RabbitMQ reader for the default Redis broker URL
    "event_reader": ["nosuch", "amqp-frames"],
    "port": ["http", "0", "65536"],
    "web_config_file": ["/nonexistent/web.yml"],
    "web_max_requests": ["0", "many"],
    "web_read_timeout": ["soon", "0", "-1s"],
    "runtime_buckets": ["1,0.5", "0,1", "a,b", "1,1"],
    "wait_buckets": [",", "1;2"],
    "native_bucket_factor": ["0.5", "x"],
    "native_max_buckets": ["0"],
    "worker_timeout": ["soon", "10x"],
    "worker_ttl": ["0"],
    "series_ttl": ["1y"],
    "sweep_interval": ["-5"],
    "max_series": ["0", "1.5"],
    "max_tasks": ["99"],
    "queue_poll_interval": ["fast"],
    "queue_poll_timeout": ["0s"],
    "inspect_interval": ["never"],
    "inspect_timeout": ["1 s"],
    "schedule_refresh_interval": ["h"],
    "log_level": ["loud"],
    "log_format": ["xml", "JSON"],
    # boolean pairs: a value is refused in the environment (and after the flag)
    "broker_ssl": ["maybe"],
    "web_health_open": ["2"],
    "task_hostname_label": ["yes please"],
    "inspect": ["nope"],
}
# any text is a valid value of these
ANY_TEXT = {"app", "events_exchange", "listen_address", "queues"}


def test_every_option_that_can_be_wrong_has_a_wrong_value():
    assert set(BAD) | ANY_TEXT == set(OPTIONS)


def assert_refused(code, out, settings, flag):
    assert code == 2 and settings is None
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("celery-exporter: error:"), out.err
    assert f"'{flag}'" in lines[0], lines[0]
    assert "Traceback" not in out.err


@pytest.mark.parametrize("name,value", [(n, v) for n, values in sorted(BAD.items()) for v in values])
def test_a_wrong_value_of_every_type_is_one_line_naming_the_flag_and_exit_2(name, value, capsys, monkeypatch):
    option = OPTIONS[name]
    argv = [f"{option.long_flag}={value}"]
    assert_refused(*run_cli(argv, capsys, monkeypatch), option.long_flag)
    assert_refused(*run_cli([], capsys, monkeypatch, env={option.env[0]: value}), option.long_flag)


def test_settings_defaults_come_from_the_declarations():
    defaults = Settings()
    assert defaults.broker_url == "redis://localhost:6379/0"  # the one default, as documented
    assert defaults.worker_timeout == 30.0 and defaults.worker_ttl == 900.0 and defaults.series_ttl == 7 * 86400.0
    assert defaults.native_schema == nativehist.schema_for_factor(1.1) == 3
    assert defaults.broker_ssl is None and defaults.web_config is None and defaults.app is None
    assert defaults.transport_options == {} and defaults.queues == () and defaults.accept_content == ("json",)
    assert build_settings({}) == defaults
    # a mutable default is not shared between instances
    assert Settings().transport_options is not Settings().transport_options


def test_no_setting_is_typed_any():
    annotations = {f.name: f.type for f in dataclasses.fields(Settings)}
    assert not [name for name, annotation in annotations.items() if "Any" in str(annotation)]
    assert annotations["web_config"] == "Optional[WebConfig]"
    assert annotations["beat_entries"] == "Tuple[Entry, ...]"
    assert annotations["broker_ssl"] == "BrokerSsl"
    assert annotations["transport_options"] == "Mapping[str, JSONValue]"


def test_broker_ssl_options_with_no_broker_ssl_are_refused_naming_the_option(capsys, monkeypatch):
    code, out, settings = run_cli(["--no-broker-ssl", "--broker-ssl-option", "ca_certs=/ca.pem"], capsys, monkeypatch)
    assert_refused(code, out, settings, "--broker-ssl-option")
    assert "--no-broker-ssl" in out.err
    _, _, settings = run_cli(["--broker-ssl", "--broker-ssl-option", "ca_certs=/ca.pem"], capsys, monkeypatch)
    assert settings.broker_ssl == {"ca_certs": "/ca.pem"}


def test_native_histograms_off_with_a_factor_of_1(capsys, monkeypatch):
    _, _, settings = run_cli(["--native-bucket-factor", "1"], capsys, monkeypatch)
    assert settings.native_schema is None


def test_the_demo_reuses_the_declarations_without_environment_variables():
    demo = {p.name: p for p in cli.demo_command.params}
    assert [p.name for p in cli.demo_command.params] == ["listen_address", "port", "duration", "rate", "log_level"]
    for name in ("listen_address", "port", "log_level"):
        assert (
            demo[name].envvar is None
            and demo[name].opts == cli.command.params[[p.name for p in cli.command.params].index(name)].opts
        )
    assert demo["port"].default == 9808 and demo["listen_address"].default == "0.0.0.0"


# -- the docs' configuration reference -------------------------------------------------------


def test_the_reference_names_every_flag_and_environment_variable():
    text = reference_markdown()
    rows = [[c.strip() for c in line.split(" | ")] for line in text.splitlines() if line.startswith("| `")]
    for option in OPTIONS.values():
        (row,) = [r for r in rows if r[1].startswith(f"`{option.env[0]}`")]
        for flag in option.flags:
            for part in flag.split("/"):
                assert f"`{part}" in row[0], (part, row[0])
        for var in option.env:
            assert f"`{var}`" in row[1], var
        assert row[3] == option.doc + " |"


def test_the_reference_is_grouped_in_the_groups_order():
    text = reference_markdown(level=2)
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == [g.value for g in Group]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(OPTIONS)
    broker = text[text.index("## Broker and events") : text.index("## HTTP server")]
    assert "| `-b`, `--broker-url` | `CELERY_EXPORTER_BROKER_URL`, then `CELERY_BROKER_URL` | " in broker
    assert "`redis://localhost:6379/0` |" in broker
    # the incumbent's --broker-transport-option is in docs/migration.md, not here
    assert "| `--transport-option KEY=VALUE` | " in broker and "--broker-transport-option" not in broker
    assert "(space-separated `key=value` pairs)" in broker
    assert "| `--broker-ssl` / `--no-broker-ssl` | `CELERY_EXPORTER_BROKER_SSL` | from the URL scheme |" in broker
    lifetime = text[text.index("## Workers") : text.index("## Queues")]
    assert "| `--worker-ttl` | `CELERY_EXPORTER_WORKER_TTL` | `15m` | A worker silent" in lifetime
    hostname = "| `--task-hostname-label` / `--no-task-hostname-label` | `CELERY_EXPORTER_TASK_HOSTNAME_LABEL` | off |"
    assert hostname in lifetime
    assert "`CELERY_EXPORTER_QUEUES` (space- or comma-separated) | none |" in text
    runtime = "| `--runtime-buckets` | `CELERY_EXPORTER_RUNTIME_BUCKETS` | 1 ms … 1 h (20 buckets) |"
    assert runtime in text


# -- a new setting is one declaration ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WithAChoice:
    event_reader: str = Option(
        "--event-reader",
        type=click.Choice(["auto", "kombu", "lean"]),
        default="auto",
        group=Group.BROKER,
        help="Which event reader to use.",
    ).field()
    pause: float = Option("--pause", type=Duration(), default="2s", group=Group.QUEUES, help="A pause.").field()


def test_a_choice_setting_is_one_declaration(monkeypatch):
    (declared, _) = declarations(WithAChoice)
    assert declared.field == "event_reader" and declared.group is Group.BROKER
    assert WithAChoice() == WithAChoice(event_reader="auto", pause=2.0)
    command = click.Command("x", params=[o.click_option() for o in options(WithAChoice)])
    monkeypatch.setenv("CELERY_EXPORTER_EVENT_READER", "kombu")
    assert command.make_context("x", []).params == {"event_reader": "kombu", "pause": 2.0}
    assert command.make_context("x", ["--event-reader", "lean"]).params["event_reader"] == "lean"
    with pytest.raises(click.BadParameter) as refused:
        command.make_context("x", ["--event-reader", "fast"])
    assert "'--event-reader'" in refused.value.format_message()
    text = reference_markdown(settings_class=WithAChoice)
    assert "| `--event-reader` | `CELERY_EXPORTER_EVENT_READER` | `auto` | Which event reader to use. |" in text
    # and the Helm chart's value, schema and template
    assert chart.values_schema(WithAChoice)["properties"] == {
        "eventReader": {"type": "string", "enum": ["auto", "kombu", "lean", ""]},
        "pause": {"type": "string", "pattern": "^$|" + DURATION_PATTERN},
    }
    assert chart.values_yaml(WithAChoice).splitlines()[0] == (
        '  eventReader: ""  # --event-reader; the exporter\'s default: auto'
    )
    template = chart.template(WithAChoice)
    entry = "{{- if .eventReader }}\n- name: CELERY_EXPORTER_EVENT_READER\n  value: {{ .eventReader | quote }}"
    assert entry in template


def test_option_names_and_environment_variables_follow_the_first_long_flag():
    option = Option("-x", "--some-thing", "--alias", type=Items(), group=Group.HTTP, help="h")
    assert option.name == "some_thing" and option.env == ("CELERY_EXPORTER_SOME_THING",)
    assert option.long_flag == "--some-thing"
    pair = Option("--on/--off", group=Group.HTTP, help="h", also_env=("OTHER",))
    assert pair.is_flag and pair.name == "on" and pair.env == ("CELERY_EXPORTER_ON", "OTHER")
    assert pair.long_flag == "--on"
    named = Option("--pair", name="pairs", type=KeyValue(), multiple=True, group=Group.HTTP, help="h")
    assert named.env == ("CELERY_EXPORTER_PAIRS",) and named.parse(None) == () and named.parse(["a=1"]) == (("a", 1),)
    with pytest.raises(ValueError):
        Option("-x", group=Group.HTTP, help="h")
    with pytest.raises(ValueError):
        Option("--on/--off", type=Items(), group=Group.HTTP, help="h")
    text = Option("--text", group=Group.HTTP, help="h")
    assert not text.is_flag and text.type is click.STRING and text.parse("x") == "x"


def test_help_loads_no_broker_library():
    """Defaults are parsed when a Settings is first made, not at import: the broker URL's
    check loads kombu's transport (and redis-py), which --help does not need."""
    code = (
        "import sys\n"
        "from celery_exporter import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('kombu', 'redis', 'amqp', 'celery'))\n"
        "assert not loaded, loaded\n"
        "from celery_exporter.settings import Settings\n"
        "assert Settings().broker_url == 'redis://localhost:6379/0'\n"
        "assert 'kombu.transport.redis' in sys.modules  # the default was checked, now\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--broker-url" in done.stdout
