"""Command line: the commands (their options come from the settings' declarations), wiring
and signals. No metric logic lives here.

`celery-exporter` serves; `celery-exporter demo`, `celery-exporter healthcheck` and
`celery-exporter check` are its subcommands; `celery -A proj exporter` serves too, as a
subcommand of Celery's own command line (the `celery.commands` entry point in
pyproject.toml), with the app from Celery's -A."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Dict, Optional, Sequence, Set

import click

from celery_exporter import __version__, app_config, logs
from celery_exporter.revision import revision
from celery_exporter.settings import Settings, build_settings, click_params, given_options
from celery_exporter.settings.build import deprecations, incumbent_environment
from celery_exporter.settings.params import Duration

__all__ = [
    "build_settings",
    "celery_command",
    "check_command",
    "command",
    "demo_command",
    "healthcheck_command",
    "main",
]

log = logging.getLogger("celery_exporter")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
VERSION_MESSAGE = f"%(prog)s, version %(version)s (revision {revision()})"


@click.command(context_settings=CONTEXT, params=click_params())
@click.version_option(__version__, "--version", prog_name="celery-exporter", message=VERSION_MESSAGE)
def command(**values: Any) -> None:
    """Prometheus exporter for Celery: task and worker metrics from Celery events.

    `celery-exporter demo` runs a self-contained demo with no broker to install;
    `celery-exporter healthcheck` asks a running exporter's /-/healthy (the image's HEALTHCHECK);
    `celery-exporter check` listens for a while and reports what is misconfigured."""
    serve(values, given_options(click.get_current_context()))


@click.command("exporter", context_settings=CONTEXT, params=[p for p in click_params() if p.name != "app"])
@click.version_option(__version__, "--version", prog_name="celery-exporter", message=VERSION_MESSAGE)
def celery_command(**values: Any) -> None:
    """Prometheus exporter for Celery (celery-exporter), for the app given to celery's -A.

    It takes the options of `celery-exporter` but --app: the app's broker URL, transport and
    SSL options, event serializer and exchange, queues and beat schedule are read as
    `celery-exporter -A` reads them, and any option given here still wins."""
    ctx = click.get_current_context()
    app = ctx.parent.params.get("app") if ctx.parent is not None else None
    if app is not None and not isinstance(app, str):
        # the app object itself: Celery 5.3 turns -A into it while parsing, as app.start() does
        app = app_config.hand_over(app)
    if app:
        values["app"] = app
    serve(values, given_options(ctx))


def serve(values: Dict[str, Any], given: Set[str]) -> None:
    refused = incumbent_environment(os.environ)
    if refused:
        raise click.UsageError("; ".join(refused))
    settings = build_settings(values, given)
    logs.setup(settings.log_level, settings.log_format)
    for line in deprecations(given):
        log.warning("%s", line)
    if settings.app:
        log.info("configuration from the Celery app %s", app_config.display(settings.app))
    run(settings)


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


@click.command(
    context_settings=CONTEXT,
    # the exporter's own options of these names, read from flags only
    params=[
        *click_params(["listen_address", "port"], envvar=False),
        click.Option(
            ["--duration"], type=Duration(), default=None, help="Stop after this long (default: until Ctrl-C)."
        ),
        click.Option(
            ["--rate"],
            type=click.FloatRange(0.5, 50),
            default=4.0,
            show_default=True,
            help="Batches of demo tasks published per second.",
        ),
        *click_params(["log_level"], envvar=False),
    ],
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


@click.command(
    context_settings=CONTEXT,
    # the exporter's own options, from the same flags and environment variables: the check
    # reaches the exporter the way its own configuration says (address, port, TLS, auth)
    params=[
        *click_params(["listen_address", "port", "web_config_file", "web_health_open"]),
        click.Option(["--timeout"], type=Duration(), default="4s", show_default=True, help="Give up after this long."),
        click.Option(
            ["--ready"],
            is_flag=True,
            help="Ask /-/ready (connected to the broker) instead of /-/healthy: a readiness probe.",
        ),
    ],
)
def healthcheck_command(timeout: float, ready: bool, **values: Any) -> None:
    """Asks the running exporter's /-/healthy (or /-/ready), over HTTPS when its web config
    turns TLS on, presenting the server's own certificate when it asks for client
    certificates; exit code 0 when it answers 200, else 1. The image's HEALTHCHECK, and the
    chart's probes when the web config requires client certificates: it reads the exporter's
    own environment variables, so configure the container with those rather than with flags."""
    # only these four options, converted here: build_settings would parse every default too
    # (the broker URL through kombu), close to a second and 40 MB per check
    from celery_exporter import healthcheck, webconfig

    path = values["web_config_file"]
    try:
        config = webconfig.load(path) if path else None
    except webconfig.WebConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--web-config-file'") from None
    target = healthcheck.Target(values["listen_address"], values["port"], config, values["web_health_open"])
    healthy, what = healthcheck.check(target, timeout, healthcheck.READY_PATH if ready else healthcheck.PATH)
    click.echo(("healthy: " if healthy else "unhealthy: ") + what, err=not healthy)
    sys.exit(0 if healthy else 1)


# the options `check` takes: how to reach the broker and read its events, and what the
# diagnosis judges by
CHECK_OPTIONS = [
    "app",
    "broker_url",
    "transport_options",
    "broker_ssl",
    "broker_ssl_options",
    "accept_content",
    "events_exchange",
    "event_reader",
    "queues",
    "worker_timeout",
    "inspect",
    "inspect_timeout",
    "log_level",
    "log_format",
]


@click.command(
    context_settings=CONTEXT,
    params=[
        *click_params(CHECK_OPTIONS),
        click.Option(
            ["--listen"], type=Duration(), default="15s", show_default=True, help="How long to listen to the events."
        ),
        click.Option(
            ["--output"],
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
            help="The report's format.",
        ),
    ],
)
def check_command(listen: float, output: str, **values: Any) -> None:
    """Listens to the broker's events for a while (--listen), then reports the broker, the
    workers heard and whether each sends task events, task-sent events, queues and their
    lengths, clock skew, undecodable events and beat entries, with each problem's fix.
    Exit code 0: all well; 1: problems found; 2: the broker cannot be reached."""
    from celery_exporter import check

    given = given_options(click.get_current_context())
    settings = build_settings(values, given)
    logs.setup(settings.log_level if "log_level" in given else "WARNING", settings.log_format)
    report = check.run(settings, listen)
    click.echo(report.as_json() if output == "json" else report.as_table())
    sys.exit(report.exit_code)


SUBCOMMANDS = {"demo": demo_command, "healthcheck": healthcheck_command, "check": check_command}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: bad input gives one line naming the option, and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        sub = SUBCOMMANDS.get(args[0]) if args else None
        if sub is not None:
            sub.main(args=args[1:], prog_name=f"celery-exporter {args[0]}", standalone_mode=False)
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
