"""Command line: the commands (their options come from the settings' declarations), wiring
and signals. No metric logic lives here."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Optional, Sequence

import click

from celery_exporter import __version__, logs
from celery_exporter.settings import Settings, build_settings, click_params, given_options
from celery_exporter.settings.params import Duration

__all__ = ["build_settings", "command", "demo_command", "main"]

log = logging.getLogger("celery_exporter")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    params=click_params(),
)
@click.version_option(__version__, "--version", prog_name="celery-exporter")
def command(**values: Any) -> None:
    """Prometheus exporter for Celery: task and worker metrics from Celery events.

    `celery-exporter demo` runs a self-contained demo with no broker to install."""
    settings = build_settings(values, given_options(click.get_current_context()))
    logs.setup(settings.log_level, settings.log_format)
    if settings.app:
        log.info("configuration from the Celery app %s", settings.app)
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
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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
