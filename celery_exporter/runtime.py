"""Wiring: build the store, handler, collector, receiver and web server from Settings,
run them, and stop them cleanly."""

from __future__ import annotations

import gc
import logging
import sys
import threading

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from celery_exporter import app_config, beat
from celery_exporter.clock import Clock
from celery_exporter.collector import CeleryCollector
from celery_exporter.handlers import Handler
from celery_exporter.poller import Inspector, QueuePoller
from celery_exporter.receiver import Receiver
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.web import Web

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds; see Exporter.start


class Exporter:
    def __init__(self, settings: Settings, clock: Clock = None):
        self.settings = settings
        self.clock = clock or Clock()
        self.stop_event = threading.Event()
        self.store = Store(settings)
        self.handler = Handler(self.store, settings)
        self.collector = CeleryCollector(self.store, settings, self.clock)
        self.process_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process_registry)
        PlatformCollector(registry=self.process_registry)
        GCCollector(registry=self.process_registry)
        self.receiver = Receiver(settings, self.handler, self.store, self.clock, self.stop_event)
        self.poller = QueuePoller(settings, self.store, self.clock, self.stop_event)
        self.inspector = Inspector(settings, self.store, self.clock, self.stop_event) if settings.inspect else None
        self.sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self.schedule_refresher = None
        if settings.beat_database_app:
            spec = settings.beat_database_app
            self.schedule_refresher = beat.ScheduleRefresher(
                lambda: beat.database_entries(app_config.find(spec)), self.store,
                settings.schedule_refresh_interval, self.stop_event)
        self.web = Web(settings, self.store, self.collector, self.process_registry, self.clock)

    def _sweep_loop(self) -> None:
        while not self.stop_event.wait(self.settings.sweep_interval):
            removed = self.store.sweep(self.clock.now())
            if removed:
                log.debug("swept %d expired label sets", removed)

    def start(self) -> None:
        # The event thread keeps the GIL busy under load; at CPython's default 5 ms switch
        # interval every GIL hand-off costs a scrape up to 5 ms, and a large scrape needs
        # several. 1 ms keeps scrapes fast while events flow, for a little more switching.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.web.start()  # first, so a port clash fails before anything else starts
        self.receiver.start()
        self.poller.start()
        if self.inspector is not None:
            self.inspector.start()
        self.sweeper.start()
        if self.schedule_refresher is not None:
            self.schedule_refresher.start()
        # Everything imported and built so far (celery, kombu, the registries) lives as long
        # as the process: keep it out of the garbage collector's full collections, which
        # otherwise scan it every time and pause scrapes for tens of milliseconds.
        gc.freeze()

    def stop(self, timeout: float = 1.5) -> None:
        self.stop_event.set()
        self.receiver.join(timeout)
        self.web.stop()
