"""`celery-exporter demo`: real metrics in seconds, with no broker to install.

Everything runs in this one process: kombu's in-memory transport as the broker, two real
Celery workers (in threads, with events on), a task generator (successes, failures,
retries, a countdown task, two queues) and the exporter itself (the same receiver, handlers,
poller and HTTP server as always). A third worker name only heartbeats for a while and then
falls silent without saying goodbye, as a killed worker does, so `celery_worker_up` shows a 0
and the status page a DOWN after the worker timeout.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import ExitStack
from typing import Any, Optional

from celery import Celery

from celery_exporter import logs
from celery_exporter.runtime import Exporter
from celery_exporter.settings import Settings

log = logging.getLogger(__name__)

BROKER = "memory://"
QUEUES = ("default", "emails")
LOST_AFTER = 10.0  # seconds until the "lost" worker stops heartbeating
WORKER_TIMEOUT = 10.0  # the demo's --worker-timeout: the lost worker shows up 0 about 20 s in


def resize_image(size: int) -> int:
    time.sleep(random.uniform(0.01, 0.2))
    return size // 2


def send_email(address: str) -> str:
    time.sleep(random.uniform(0.02, 0.1))
    if random.random() < 0.15:
        raise ConnectionRefusedError(f"smtp refused {address}")
    return address


def sync_account(self: Any, account: int) -> int:  # self: the bound celery Task
    if self.request.retries == 0 and random.random() < 0.5:
        raise self.retry(exc=TimeoutError("upstream timed out"), countdown=0.5)
    time.sleep(random.uniform(0.05, 0.3))
    return account


def nightly_report() -> None:
    time.sleep(0.5)
    raise ValueError("report template missing")


def make_app() -> Celery:
    app = Celery("celery-exporter-demo", broker=BROKER, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_ignore_result=True,
        task_default_queue="default",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
    )

    # registered by call, not as decorators: celery's decorator is untyped
    app.task(name="demo.resize_image")(resize_image)
    app.task(name="demo.send_email")(send_email)
    app.task(name="demo.sync_account", bind=True, max_retries=2)(sync_account)
    app.task(name="demo.nightly_report")(nightly_report)
    return app


class Generator(threading.Thread):
    def __init__(self, app: Celery, stop: threading.Event, rate: float):
        super().__init__(name="demo-generator", daemon=True)
        self.app, self.stop, self.rate = app, stop, rate

    def run(self) -> None:
        i = 0
        while not self.stop.wait(1.0 / self.rate):
            i += 1
            try:
                self.app.send_task("demo.resize_image", args=[i * 10], queue="default")
                if i % 2 == 0:
                    self.app.send_task("demo.send_email", args=[f"user{i}@example.com"], queue="emails")
                if i % 3 == 0:
                    self.app.send_task("demo.sync_account", args=[i], queue="default")
                if i % 15 == 0:
                    self.app.send_task("demo.nightly_report", queue="default", countdown=1)
            except Exception:  # the demo goes on
                log.debug("demo generator: publish failed", exc_info=True)


class LostWorker(threading.Thread):
    """Heartbeats as `lost@demo` for a while, then silence: no worker-offline."""

    def __init__(self, app: Celery, stop: threading.Event):
        super().__init__(name="demo-lost-worker", daemon=True)
        self.app, self.stop = app, stop

    def run(self) -> None:
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, hostname="lost@demo")
            dispatcher.send("worker-online", freq=2.0, active=0, processed=0)
            started = time.monotonic()
            while time.monotonic() - started < LOST_AFTER and not self.stop.wait(2.0):
                dispatcher.send("worker-heartbeat", freq=2.0, active=1, processed=0)
        log.info(
            "demo: worker lost@demo stopped heartbeating (as if killed): celery_worker_up{hostname="
            '"lost@demo"} turns 0 after the worker timeout (%g s)',
            WORKER_TIMEOUT,
        )


def run(settings: Settings, duration: Optional[float], rate: float, stop: threading.Event) -> None:
    from celery.contrib.testing.worker import start_worker

    app = make_app()
    exporter = Exporter(settings)
    exporter.start()
    log.info(
        "demo: open http://%s:%s/ (status page) and /metrics; Ctrl-C to stop",
        "localhost" if settings.listen_address in ("0.0.0.0", "::") else settings.listen_address,
        settings.port,
    )
    for noisy in ("celery.app.trace", "celery.worker", "kombu.connection"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)  # the demo's own failures are not news
    with ExitStack() as workers:
        for name, queues in (("alpha@demo", QUEUES), ("beta@demo", ("default",))):
            workers.enter_context(
                start_worker(
                    app,
                    pool="solo",
                    concurrency=1,
                    hostname=name,
                    queues=list(queues),
                    perform_ping_check=False,
                    without_heartbeat=False,
                    shutdown_timeout=15,
                    loglevel="WARNING",
                )
            )
        logs.setup(settings.log_level, settings.log_format)  # Celery's worker setup changed the root level
        for noisy in ("celery.app.trace", "celery.worker", "kombu.connection"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        Generator(app, stop, rate).start()
        LostWorker(app, stop).start()
        stop.wait(duration)
        stop.set()
    exporter.stop()
