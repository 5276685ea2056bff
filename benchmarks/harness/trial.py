"""One run: one consumer (a build or the reference) on a fresh broker under one scenario's
load, and every figure of it. The steps, in this order (the order is part of what the
figures mean):

1. the broker, then the consumer, pinned to its core; ready, and subscribed as the broker sees it;
2. RSS when ready; the load scraper and py-spy made ready; then the CPU window opens;
3. the generators run to their end (the scraper during them); peak RSS at generator end;
4. the count polled until it reaches what was published or stops moving; the CPU window closes;
5. the subscription's state now, memory after settling, the consumer's final figures
   (for the exporter: its counters, then the idle scrapes), lag, CPU per 100k events,
   the broker-side subscription figures.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Dict, Optional, Tuple

from harness.brokers import Broker, make_broker
from harness.builds import Build, checkout_code
from harness.consumers import Consumer, ExporterConsumer, make_consumer, wait_settled
from harness.load import run_generators
from harness.measure import CpuWindow, Scraper, core_check_ms, load_scrape_figures, proc_status_mib
from harness.monitors import Monitor, watch_subscription
from harness.procs import REPO
from harness.pyspy import py_spy_top, start_py_spy, stop_py_spy
from harness.scenarios import Scenario


class Trial:
    def __init__(self, args: Any, scen: Scenario, name: str, repeat: int, workdir: str, builds: Dict[str, Build]):
        self.args, self.scen, self.workdir = args, scen, workdir
        self.tag = f"{scen.name}-r{repeat}-{name}"
        self.broker: Broker = make_broker(args, scen.broker, self.tag, workdir)
        self.consumer: Consumer = make_consumer(args, self.broker, workdir, self.tag, name, builds, scen)
        self.name, self.repeat, self.build = name, repeat, builds.get(name)
        self.result: Dict[str, Any] = {}
        self.monitor: Optional[Monitor] = None
        self.scraper: Optional[Scraper] = None
        self.spy: Optional[subprocess.Popen] = None

    def run(self) -> dict:
        self.broker.start()
        self.result = {
            "consumer": self.name,
            "broker": self.scen.broker,
            "repeat": self.repeat,
            "loadavg_before": os.getloadavg(),
            "core_check_ms": core_check_ms(self.args.consumer_core),
            # the reference runs no exporter code: its runs record this checkout's
            "code": self.build.code_version() if self.build else checkout_code(),
        }
        try:
            self.start_consumer()
            self.window, gen, settle = self.load()
            self.after_load()
            self.final(gen, settle)
            return self.result
        finally:
            self.cleanup()

    def start_consumer(self) -> None:
        """Step 1: the consumer ready and subscribed, and a monitor of its subscription running."""
        self.result.update(self.broker.before_consumer())
        self.consumer.start()
        self.consumer.wait_ready(30)
        ready_at = time.monotonic()
        self.monitor, figures = watch_subscription(
            self.args, self.broker, self.consumer.pid, self.result["consumer"], ready_at
        )
        self.result.update(figures)
        self.monitor.start()
        self.result["rss_idle_mib"] = round(proc_status_mib(self.consumer.pid)["VmRSS"], 1)

    def load(self) -> Tuple[CpuWindow, dict, dict]:
        """Steps 2-4: the load, and the count's settling; the CPU window over both."""
        self.scraper = self.consumer.load_scraper(self.scen)
        if isinstance(self.consumer, ExporterConsumer) and self.args.py_spy:
            self.spy, self.result["py_spy_raw"] = start_py_spy(self.args, self.consumer.pid, self.tag, self.workdir)
        window = CpuWindow(self.consumer.pid, self.args.consumer_core)
        if self.scraper:
            self.scraper.start()
        gen = run_generators(self.args, self.scen, self.broker.url, self.workdir, self.tag)
        if self.scraper:
            self.scraper.stop()
        # before any settle poll: with no scraper during the load, this is the memory of
        # the event state alone (uuid map, series), without a scrape's transient text
        self.result["peak_rss_at_generator_end_mib"] = round(proc_status_mib(self.consumer.pid)["VmHWM"], 1)
        self.result["generator"] = gen
        cap = max(60.0, 3 * gen["elapsed_s"])
        args = self.args
        settle = wait_settled(
            self.consumer, gen["total_events"], args.poll_interval, args.settle_quiet, cap, window.close
        )
        if self.spy is not None:
            stop_py_spy(self.spy)
        return window, gen, settle

    def after_load(self) -> None:
        """Step 5, first part: the subscription's state now, while the consumer still runs
        (the reference exits on its final figures), CPU and memory."""
        assert self.monitor is not None
        self.monitor.stop()
        self.monitor.sample()
        self.still = self.monitor.subscribed_now()
        self.result.update(self.window.figures())
        mem = proc_status_mib(self.consumer.pid)
        self.result["peak_rss_after_load_mib"] = round(mem["VmHWM"], 1)
        self.result["rss_after_load_mib"] = round(mem["VmRSS"], 1)

    def final(self, gen: dict, settle: dict) -> None:
        """Step 5: the consumer's final figures, and what they mean against the load."""
        result = self.result
        figures, count, last_event = self.consumer.final_figures(self.scen, gen, result)
        result.update(figures)
        if self.scraper:
            result["load_scrape_ms"] = load_scrape_figures(self.scraper)
        result["counted"] = count
        result["lost"] = gen["total_events"] - count
        result["lag_s"] = round(max(0.0, last_event - gen["t_end"]), 3) if last_event else None
        reached_at = settle["reached_at"]
        result["lag_polled_s"] = round(max(0.0, reached_at - gen["t_end"]), 3) if reached_at else None
        result["settle"] = settle
        result["cpu_per_100k_s"] = round(self.window.cpu / count * 100_000, 3) if count else None
        consumed = count and last_event and last_event > gen["t_start"]
        result["consumer_events_per_s"] = round(count / (last_event - gen["t_start"]), 1) if consumed else None
        self.subscription_figures()
        result.update(self.broker.after_run())
        if self.spy is not None:
            result["py_spy_top"] = py_spy_top(os.path.join(REPO, result["py_spy_raw"]))

    def subscription_figures(self) -> None:
        assert self.monitor is not None
        figures, broker_lost_us = self.monitor.figures(self.still)
        self.result.update(figures)
        self.result["rss_series_mib"] = self.monitor.rss_series
        dropped = (
            broker_lost_us
            or self.monitor.missing_samples > 0
            or not self.still
            or self.consumer.lost_connection(self.result)
        )
        self.result["subscription_dropped"] = int(dropped)

    def cleanup(self) -> None:
        if self.monitor is not None and self.monitor.is_alive():
            self.monitor.stop()
        if self.spy is not None and self.spy.poll() is None:
            self.spy.kill()
        self.consumer.stop()
        self.broker.stop()


def run_one(args: Any, scen: Scenario, name: str, repeat: int, workdir: str, builds: Dict[str, Build]) -> dict:
    return Trial(args, scen, name, repeat, workdir, builds).run()
