"""Command line: click options (each also from a CELERY_EXPORTER_* environment variable),
validation, wiring and signals. No metric logic lives here."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Set, Tuple

import click
from click.core import ParameterSource
from kombu.connection import Connection

from celery_exporter import __version__, catalogue, logs, nativehist, streams
from celery_exporter.settings import Settings

log = logging.getLogger("celery_exporter")

ENV_PREFIX = "CELERY_EXPORTER"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


if TYPE_CHECKING:
    # click 8.2+ types ParamType by what convert() returns; older clicks (which we still
    # allow) cannot subscript it at run time, so the parameters exist for mypy only.
    _FloatParam = click.ParamType[float, Any]
    _KeyValueParam = click.ParamType[Tuple[str, Any], Any]
    _BucketsParam = click.ParamType[Tuple[float, ...], Any]
else:
    _FloatParam = _KeyValueParam = _BucketsParam = click.ParamType


class Duration(_FloatParam):
    """Seconds, as a number (`30`, `2.5`) or with units (`90s`, `15m`, `7d`, `1h30m`)."""

    name = "duration"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            try:
                seconds = float(text)
            except ValueError:
                parts = _DURATION.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    self.fail(f"{value!r} is not a duration (use seconds, or units like 90s, 15m, 7d)", param, ctx)
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds <= 0:
            self.fail(f"{value!r} must be greater than 0", param, ctx)
        return seconds


class KeyValue(_KeyValueParam):
    """`key=value`; the value is parsed as JSON when it is valid JSON (numbers, booleans,
    lists, objects), else taken as a string."""

    name = "key=value"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"{value!r} is not key=value", param, ctx)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return key.strip(), parsed


class Buckets(_BucketsParam):
    """Comma-separated histogram bucket bounds in seconds, increasing."""

    name = "bounds"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            bounds = tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not bounds or any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            self.fail(f"{value!r} must be positive, strictly increasing numbers", param, ctx)
        return bounds


def _check_broker_url(ctx: Optional[click.Context], param: Optional[click.Parameter], value: str) -> str:
    for part in value.split(";"):
        try:
            _ = Connection(part.strip()).transport_cls  # resolves the scheme (raises if unknown), no network
        except (KeyError, ValueError) as exc:
            raise click.BadParameter(f"unsupported broker URL scheme: {exc}") from None
    return value


def _env(name: str) -> str:
    return f"{ENV_PREFIX}_{name}"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-A",
    "--app",
    "app",
    default=None,
    envvar=_env("APP"),
    show_envvar=True,
    help="Your Celery app, as `celery -A` takes it (proj, proj.celery:app). Broker URL, transport "
    "and SSL options, event serializer and exchange, and the declared queues are read from it; "
    "flags and environment variables still override.",
)
@click.option(
    "-b",
    "--broker-url",
    envvar=[_env("BROKER_URL"), "CELERY_BROKER_URL"],
    show_envvar=True,
    default="redis://localhost:6379/0",
    show_default=True,
    callback=_check_broker_url,
    help="Broker URL, as the workers use it (redis://, rediss://, sentinel://, amqp://, amqps://; "
    "several separated by ';' for failover). Also read from CELERY_BROKER_URL.",
)
@click.option(
    "--transport-option",
    "--broker-transport-option",
    "transport_options",
    multiple=True,
    type=KeyValue(),
    envvar=_env("TRANSPORT_OPTIONS"),
    show_envvar=True,
    help="Broker transport option, as in broker_transport_options (repeatable; JSON values "
    "allowed), e.g. global_keyprefix=prod: or master_name=mymaster. Must match the workers'.",
)
@click.option(
    "--broker-ssl/--no-broker-ssl",
    default=None,
    envvar=_env("BROKER_SSL"),
    show_envvar=True,
    help="Use TLS to the broker. Default: what the URL scheme says (amqps://, rediss://).",
)
@click.option(
    "--broker-ssl-option",
    "ssl_options",
    multiple=True,
    type=KeyValue(),
    envvar=_env("BROKER_SSL_OPTIONS"),
    show_envvar=True,
    help="TLS option as in broker_use_ssl (repeatable), e.g. ca_certs=/etc/ssl/ca.pem, "
    "cert_reqs=2. Implies --broker-ssl.",
)
@click.option(
    "--accept-content",
    default="json",
    show_default=True,
    envvar=_env("ACCEPT_CONTENT"),
    show_envvar=True,
    help="Comma-separated content types accepted for events (event_serializer).",
)
@click.option(
    "--events-exchange",
    default="celeryev",
    show_default=True,
    envvar=_env("EVENTS_EXCHANGE"),
    show_envvar=True,
    help="Celery's event exchange (event_exchange setting).",
)
@click.option(
    "--event-reader",
    type=click.Choice(streams.CHOICES),
    default=streams.AUTO,
    show_default=True,
    envvar=_env("EVENT_READER"),
    show_envvar=True,
    help="How events are read: auto (the fastest reader that works on the broker), kombu (kombu's consumer, "
    "any broker), redis-hiredis or redis-py (Redis), amqp-frames or py-amqp (RabbitMQ). A reader named here "
    "never falls back to another; one that cannot serve --broker-url is refused at start.",
)
@click.option(
    "--listen-address",
    default="0.0.0.0",
    show_default=True,
    envvar=_env("LISTEN_ADDRESS"),
    show_envvar=True,
    help="Address to serve HTTP on (use :: for IPv6).",
)
@click.option(
    "--web-config-file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar=_env("WEB_CONFIG_FILE"),
    show_envvar=True,
    help="TLS and basic auth for the HTTP endpoints, in the Prometheus exporter-toolkit "
    "format (tls_server_config, basic_auth_users with bcrypt hashes).",
)
@click.option(
    "--web-health-open/--no-web-health-open",
    default=True,
    show_default=True,
    envvar=_env("WEB_HEALTH_OPEN"),
    show_envvar=True,
    help="Keep /-/healthy and /-/ready open without credentials (for probes) when basic auth is on.",
)
@click.option(
    "--web-max-requests",
    type=click.IntRange(1),
    default=40,
    show_default=True,
    envvar=_env("WEB_MAX_REQUESTS"),
    show_envvar=True,
    help="Most HTTP requests served at once; more are answered 503 (Retry-After: 1) at once.",
)
@click.option(
    "--web-read-timeout",
    type=Duration(),
    default="10s",
    show_default=True,
    envvar=_env("WEB_READ_TIMEOUT"),
    show_envvar=True,
    help="An HTTP connection that has not sent a complete request head this long after connecting "
    "is closed; also the timeout of each read and write while a request is served.",
)
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    default=9808,
    show_default=True,
    envvar=_env("PORT"),
    show_envvar=True,
    help="Port to serve HTTP on.",
)
@click.option(
    "--runtime-buckets",
    "--buckets",
    "runtime_buckets",
    type=Buckets(),
    default=",".join(map(str, catalogue.DEFAULT_RUNTIME_BUCKETS)),
    show_default=True,
    envvar=_env("RUNTIME_BUCKETS"),
    show_envvar=True,
    help="Bucket bounds (seconds) of celery_task_runtime_seconds.",
)
@click.option(
    "--wait-buckets",
    type=Buckets(),
    default=",".join(map(str, catalogue.DEFAULT_WAIT_BUCKETS)),
    show_default=True,
    envvar=_env("WAIT_BUCKETS"),
    show_envvar=True,
    help="Bucket bounds (seconds) of the queue-wait and prefetch-wait histograms.",
)
@click.option(
    "--native-bucket-factor",
    type=click.FloatRange(min=1.0),
    default=nativehist.DEFAULT_BUCKET_FACTOR,
    show_default=True,
    envvar=_env("NATIVE_BUCKET_FACTOR"),
    show_envvar=True,
    help="Most a native histogram bucket may grow over the one below it (1.1: schema 3, 9 % wider); "
    "1 turns native histograms off. Native histograms are served in the protobuf format only.",
)
@click.option(
    "--native-max-buckets",
    type=click.IntRange(min=1),
    default=nativehist.DEFAULT_MAX_BUCKETS,
    show_default=True,
    envvar=_env("NATIVE_MAX_BUCKETS"),
    show_envvar=True,
    help="Populated native buckets per series before its resolution is halved (as often as needed).",
)
@click.option(
    "--worker-timeout",
    type=Duration(),
    default="30s",
    show_default=True,
    envvar=_env("WORKER_TIMEOUT"),
    show_envvar=True,
    help="A worker whose last heartbeat is older than this shows celery_worker_up 0 "
    "(at least 3 of its own heartbeat intervals).",
)
@click.option(
    "--worker-ttl",
    type=Duration(),
    default="15m",
    show_default=True,
    envvar=_env("WORKER_TTL"),
    show_envvar=True,
    help="A worker silent this long (killed, without worker-offline) is "
    "removed. Must exceed --worker-timeout plus your alert's for:.",
)
@click.option(
    "--series-ttl",
    type=Duration(),
    default="7d",
    show_default=True,
    envvar=_env("SERIES_TTL"),
    show_envvar=True,
    help="Task label sets with no event for this long are removed.",
)
@click.option(
    "--sweep-interval",
    type=Duration(),
    default="60s",
    show_default=True,
    envvar=_env("SWEEP_INTERVAL"),
    show_envvar=True,
    help="How often label sets past their TTL are removed from memory (they are hidden from scrapes at once).",
)
@click.option(
    "--schedule-refresh-interval",
    type=Duration(),
    default="60s",
    show_default=True,
    envvar=_env("SCHEDULE_REFRESH_INTERVAL"),
    show_envvar=True,
    help="With --app whose beat uses django-celery-beat's database: how often its entries are re-read.",
)
@click.option(
    "--max-series",
    type=click.IntRange(1),
    default=20_000,
    show_default=True,
    envvar=_env("MAX_SERIES"),
    show_envvar=True,
    help="Most label sets held (task name/queue pairs, exception classes, workers); "
    "new ones beyond are refused and counted.",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(100),
    default=100_000,
    show_default=True,
    envvar=_env("MAX_TASKS"),
    show_envvar=True,
    help="Most task ids tracked at once (tasks in flight); the oldest are evicted and counted.",
)
@click.option(
    "--task-hostname-label/--no-task-hostname-label",
    default=False,
    show_default=True,
    envvar=_env("TASK_HOSTNAME_LABEL"),
    show_envvar=True,
    help="Add the worker's hostname label to task metrics (multiplies series; pod names churn).",
)
@click.option(
    "-Q",
    "--queue",
    "queues",
    multiple=True,
    envvar=_env("QUEUES"),
    show_envvar=True,
    help="Queue to report the length of even before any task or worker shows it (repeatable, "
    "or comma-separated). Queues seen in task events and in workers' active queues are added.",
)
@click.option(
    "--queue-poll-interval",
    type=Duration(),
    default="10s",
    show_default=True,
    envvar=_env("QUEUE_POLL_INTERVAL"),
    show_envvar=True,
    help="How often queue lengths are polled.",
)
@click.option(
    "--queue-poll-timeout",
    type=Duration(),
    default="5s",
    show_default=True,
    envvar=_env("QUEUE_POLL_TIMEOUT"),
    show_envvar=True,
    help="Timeout of each broker call of the poller (connect, read).",
)
@click.option(
    "--inspect/--no-inspect",
    default=True,
    show_default=True,
    envvar=_env("INSPECT"),
    show_envvar=True,
    help="Ask workers (remote control) which queues they consume and with how many processes. "
    "Turn off where remote control is disabled.",
)
@click.option(
    "--inspect-interval",
    type=Duration(),
    default="30s",
    show_default=True,
    envvar=_env("INSPECT_INTERVAL"),
    show_envvar=True,
    help="How often workers are inspected.",
)
@click.option(
    "--inspect-timeout",
    type=Duration(),
    default="1s",
    show_default=True,
    envvar=_env("INSPECT_TIMEOUT"),
    show_envvar=True,
    help="How long to wait for workers' replies (a reply from every worker up ends the wait sooner).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar=_env("LOG_LEVEL"),
    show_envvar=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar=_env("LOG_FORMAT"),
    show_envvar=True,
)
@click.version_option(__version__, "--version", prog_name="celery-exporter")
def command(**options: Any) -> None:
    """Prometheus exporter for Celery: task and worker metrics from Celery events.

    `celery-exporter demo` runs a self-contained demo with no broker to install."""
    ctx = click.get_current_context()
    given = {
        name
        for name in options
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    settings = build_settings(options, given)
    logs.setup(settings.log_level, settings.log_format)
    if options.get("app"):
        log.info("configuration from the Celery app %s", options["app"])
    run(settings)


def build_settings(options: Dict[str, Any], given: Optional[Set[str]] = None) -> Settings:
    """Settings from the parsed options. With --app, options the user did not give (on the
    command line or in the environment; `given`) come from the Celery app's configuration."""
    if options.get("app"):
        from celery_exporter import app_config

        try:
            from_app = app_config.load(options["app"])
        except app_config.AppError as exc:
            raise click.BadParameter(str(exc), param_hint="'--app'") from None
        options = dict(options)
        given = given or set()
        for name, value in from_app.items():
            if name not in given:
                options[name] = value
        if "broker_url" not in given:
            try:
                _check_broker_url(None, None, options["broker_url"])
            except click.BadParameter as exc:
                raise click.BadParameter(f"the app's broker_url: {exc.message}", param_hint="'--app'") from None
    if options["worker_ttl"] <= options["worker_timeout"]:
        raise click.BadParameter(
            f"must be longer than --worker-timeout ({options['worker_timeout']:g} s), or lost workers "
            "vanish before their alert can fire",
            param_hint="'--worker-ttl'",
        )
    ssl: Optional[Any] = options["broker_ssl"]
    if options["ssl_options"]:
        if ssl is False:
            raise click.BadParameter("given together with --no-broker-ssl", param_hint="'--broker-ssl-option'")
        ssl = dict(options["ssl_options"])
    web_config = None
    if options["web_config_file"]:
        from celery_exporter import webconfig

        try:
            web_config = webconfig.load(options["web_config_file"])
        except webconfig.WebConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--web-config-file'") from None
    _check_event_reader(options)
    accept = tuple(c.strip() for c in options["accept_content"].split(",") if c.strip())
    if not accept:
        raise click.BadParameter("needs at least one content type", param_hint="'--accept-content'")
    return Settings(
        broker_url=options["broker_url"],
        transport_options=dict(options["transport_options"]),
        broker_ssl=ssl,
        accept_content=accept,
        events_exchange=options["events_exchange"],
        event_reader=options.get("event_reader", streams.AUTO),
        listen_address=options["listen_address"],
        port=options["port"],
        web_config=web_config,
        health_open=options["web_health_open"],
        web_max_requests=options["web_max_requests"],
        web_read_timeout=options["web_read_timeout"],
        runtime_buckets=options["runtime_buckets"],
        wait_buckets=options["wait_buckets"],
        native_schema=nativehist.schema_for_factor(options["native_bucket_factor"]),
        native_max_buckets=options["native_max_buckets"],
        worker_timeout=options["worker_timeout"],
        worker_ttl=options["worker_ttl"],
        series_ttl=options["series_ttl"],
        max_series=options["max_series"],
        sweep_interval=options["sweep_interval"],
        max_tasks=options["max_tasks"],
        task_hostname_label=options["task_hostname_label"],
        queues=tuple(sorted({q.strip() for entry in options["queues"] for q in entry.split(",") if q.strip()})),
        queue_poll_interval=options["queue_poll_interval"],
        poll_timeout=options["queue_poll_timeout"],
        inspect=options["inspect"],
        inspect_interval=options["inspect_interval"],
        inspect_timeout=options["inspect_timeout"],
        beat_entries=tuple(options.get("beat_entries") or ()),
        beat_database_app=options.get("beat_database_app"),
        schedule_refresh_interval=options["schedule_refresh_interval"],
        log_level=options["log_level"].upper(),
        log_format=options["log_format"],
    )


def _check_event_reader(options: Dict[str, Any]) -> None:
    """A reader named by --event-reader must be able to serve the broker URL (checked
    without contacting the broker)."""
    reader = options.get("event_reader", streams.AUTO)
    if reader == streams.AUTO:
        return
    from celery_exporter import readers  # imported late: --help stays fast

    reason = readers.refusal(reader, options["broker_url"], dict(options["transport_options"]))
    if reason is not None:
        raise click.BadParameter(reason, param_hint="'--event-reader'")


def run(settings: Settings) -> None:
    from celery_exporter.runtime import Exporter  # imported late: --help stays fast

    exporter = Exporter(settings)
    try:
        exporter.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.listen_address, settings.port, exc.strerror or exc)
        sys.exit(1)
    stop = stop_on_signals()
    while not stop.wait(0.2):
        pass
    exporter.stop()
    log.info("stopped")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; a second signal exits at once with code 1."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--listen-address", default="0.0.0.0", show_default=True, help="Address to serve HTTP on.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=9808, show_default=True, help="HTTP port.")
@click.option("--duration", type=Duration(), default=None, help="Stop after this long (default: until Ctrl-C).")
@click.option(
    "--rate",
    type=click.FloatRange(0.5, 50),
    default=4.0,
    show_default=True,
    help="Batches of demo tasks published per second.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def demo_command(listen_address: str, port: int, duration: Optional[float], rate: float, log_level: str) -> None:
    """A self-contained demo: an in-memory broker, two real Celery workers in threads, a task
    generator (successes, failures, retries, two queues) and a worker that goes silent, all
    feeding the real exporter on the usual port. No broker needed."""
    from celery_exporter import demo

    logs.setup(log_level.upper(), "text")
    settings = Settings(
        broker_url=demo.BROKER,
        listen_address=listen_address,
        port=port,
        queues=demo.QUEUES,
        queue_poll_interval=2.0,
        inspect_interval=10.0,
        worker_timeout=demo.WORKER_TIMEOUT,
        worker_ttl=300.0,
        log_level=log_level.upper(),
    )
    stop = stop_on_signals()
    try:
        demo.run(settings, duration, rate, stop)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", listen_address, port, exc.strerror or exc)
        sys.exit(1)
    log.info("stopped")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: bad input gives one line naming the option, and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["demo"]:
            demo_command.main(args=args[1:], prog_name="celery-exporter demo", standalone_mode=False)
        else:
            command.main(args=args, prog_name="celery-exporter", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        message = " ".join(exc.format_message().split())
        print(f"celery-exporter: error: {message}", file=sys.stderr)
        sys.exit(2)
    except click.Abort:
        sys.exit(1)
