"""Wiring and the owner of every thread: builds the store, handler, collector, receiver,
pollers and web server from Settings, starts their threads, and stops and joins them all.

Threads, what they run, and what stops them:
- event-receiver: receiver.Receiver, events -> handler -> store; its tick releases held
  events and sweeps expired label sets. Stops on stop_event within DRAIN_TIMEOUT.
- queue-poller: poller.QueuePoller, queue lengths. Stops on stop_event (a poll in progress
  ends within --queue-poll-timeout).
- inspector: poller.Inspector, remote-control inspect (unless --no-inspect). Stops on
  stop_event (after --inspect-timeout at most).
- events-enabler: poller.EventsEnabler, enable_events to workers with task events off (only
  with --enable-events). Stops on stop_event.
- beat-schedule: beat.ScheduleRefresher, django-celery-beat's entries (only with such an
  --app). Stops on stop_event.
- http: httpserver's serving loop; each request in a short-lived thread of its own. Stops on
  Web.stop().

Each broker thread closes its own connection as it ends.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from typing import List, Optional

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from celery_exporter import app_config, beat
from celery_exporter.clock import Clock
from celery_exporter.collector import CeleryCollector
from celery_exporter.handlers import Handler
from celery_exporter.poller import EventsEnabler, Inspector, QueuePoller
from celery_exporter.receiver import Receiver
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.web import Web

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds; see Exporter.start
STOP_TIMEOUT = 1.5  # seconds for all threads to end: SIGTERM to exit stays under 2 s
# Garbage collector thresholds (CPython's default is 700, 10, 10); see Exporter.start
GC_THRESHOLDS = (5000, 50, 10)


class Exporter:
    def __init__(self, settings: Settings, clock: Optional[Clock] = None):
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
        self.enabler = (
            EventsEnabler(settings, self.store, self.clock, self.stop_event) if settings.enable_events else None
        )
        self.schedule_refresher: Optional[beat.ScheduleRefresher] = None
        if settings.beat_database_app:
            spec = settings.beat_database_app
            self.schedule_refresher = beat.ScheduleRefresher(
                lambda: beat.database_entries(app_config.find(spec)),
                self.store,
                settings.schedule_refresh_interval,
                self.stop_event,
            )
        # every thread but the web server's, in start order
        self.threads: List[threading.Thread] = [
            t
            for t in (self.receiver, self.poller, self.inspector, self.enabler, self.schedule_refresher)
            if t is not None
        ]
        self.web = Web(settings, self.store, self.collector, self.process_registry, self.clock)

    def start(self) -> None:
        # The event thread keeps the GIL busy under load; at CPython's default 5 ms switch
        # interval every GIL hand-off costs a scrape up to 5 ms, and a large scrape needs
        # several. 1 ms keeps scrapes fast while events flow, for a little more switching.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.web.start()  # first, so a port clash fails before anything else starts
        for thread in self.threads:
            thread.start()
        # Everything imported and built so far (celery, kombu, the registries) lives as long
        # as the process: keep it out of the garbage collector's full collections, which
        # otherwise scan it every time and pause scrapes for tens of milliseconds.
        gc.freeze()
        # The store and the scrape path make objects that live from one scrape to the next
        # (a changed series' copy, its rows' metrics): at the default 700 allocations per
        # young collection they survive every one and are promoted until a full collection
        # runs every few scrapes. A larger young generation lets them die young: in-process,
        # 50 label sets scraped after every 1,250 events, collections 902 -> 43 and CPU -7 %.
        gc.set_threshold(*GC_THRESHOLDS)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask every thread to stop, join them within `timeout` in all, then stop serving.
        A thread still inside a broker call then is named in the log; it is a daemon
        thread and ends with the process."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.info("threads still in a broker call at exit: %s", ", ".join(stuck))
        self.web.stop()
