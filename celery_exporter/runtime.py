"""Wiring: build the store, handler, collector, receiver and web server from Settings,
run them, and stop them cleanly."""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from celery_exporter.clock import Clock
from celery_exporter.collector import CeleryCollector
from celery_exporter.handlers import Handler
from celery_exporter.poller import Inspector, QueuePoller
from celery_exporter.receiver import Receiver
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.web import Web

log = logging.getLogger(__name__)


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
        self.web = Web(settings, self.store, self.collector, self.process_registry, self.clock)

    def _sweep_loop(self) -> None:
        while not self.stop_event.wait(self.settings.sweep_interval):
            removed = self.store.sweep(self.clock.now())
            if removed:
                log.debug("swept %d expired label sets", removed)

    def start(self) -> None:
        self.web.start()  # first, so a port clash fails before anything else starts
        self.receiver.start()
        self.poller.start()
        if self.inspector is not None:
            self.inspector.start()
        self.sweeper.start()

    def stop(self, timeout: float = 1.5) -> None:
        self.stop_event.set()
        self.receiver.join(timeout)
        self.web.stop()
