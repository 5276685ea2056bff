"""The consumers under test: an exporter build, or the reference (Celery's own
EventReceiver with a no-op handler, benchmarks/reference.py). Each is started pinned to
the consumer's core, says when it is ready, reports its count while the runner waits for
it to settle, and gives its final figures once the load is over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from harness.brokers import RMQ_QUEUE_TTL, Broker, RabbitVhost
from harness.builds import REFERENCE, Build
from harness.checks import exporter_checks, reference_checks
from harness.measure import (
    PROMETHEUS_NATIVE_HEADERS,
    Samples,
    Scraper,
    idle_scrape_figures,
    metric_sum,
    native_series,
    parse_metrics,
    proc_status_mib,
    scrape,
)
from harness.procs import HERE, clean_env, free_port, on_core, stop_process
from harness.scenarios import Scenario

# (events counted so far, epoch time of the last event), or (None, None)
Count = Tuple[Optional[int], Optional[float]]


class Consumer:
    def __init__(self, args: Any, broker: Broker, workdir: str, tag: str):
        self.args, self.broker, self.workdir, self.tag = args, broker, workdir, tag
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = ""
        self.last_scrape_s: Optional[float] = None  # the exporter's last count poll, s

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def count(self) -> Count:
        raise NotImplementedError

    def load_scraper(self, scen: Scenario) -> Optional[Scraper]:
        """The scraper to run during the load, if this consumer is scraped."""
        return None

    def final_figures(self, scen: Scenario, gen: dict, result: dict) -> Tuple[Dict[str, Any], int, Optional[float]]:
        """After the load: the consumer's own figures, its final count and its last event's time."""
        raise NotImplementedError

    def lost_connection(self, result: dict) -> bool:
        """Did the consumer itself see its broker connection fail?"""
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)


class ExporterConsumer(Consumer):
    def __init__(self, args: Any, broker: Broker, workdir: str, tag: str, build: Build, exporter_args: Tuple[str, ...]):
        super().__init__(args, broker, workdir, tag)
        self.build, self.exporter_args = build, exporter_args
        self.http_port = 0

    def start(self) -> None:
        self.http_port = free_port()
        self.log_path = os.path.join(self.workdir, f"{self.tag}-exporter.log")
        log = open(self.log_path, "w")
        cmd = [self.build.path, "--broker-url", self.broker.url, "--listen-address", "127.0.0.1"]
        cmd += ["--port", str(self.http_port), "--no-inspect", *self.exporter_args]
        self.proc = subprocess.Popen(
            on_core(self.args.consumer_core, cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=self.workdir,
        )
        log.close()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                assert self.proc is not None
                raise RuntimeError(f"exporter exited with {self.proc.returncode}; see {self.log_path}")
            try:
                _, status, _ = scrape(self.http_port, 2, path="/-/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"exporter not ready after {timeout} s; see {self.log_path}")

    def metrics(self, timeout: float) -> Tuple[Samples, bytes]:
        _, status, body = scrape(self.http_port, timeout)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode()), body

    def count(self, timeout: float = 30.0) -> Count:
        try:
            self.last_scrape_s = None
            elapsed, status, body = scrape(self.http_port, timeout)
            self.last_scrape_s = elapsed
        except Exception:
            return None, None
        if status != 200:
            return None, None
        # only the two families needed (parsing 150k lines would make the poll slow)
        wanted = [
            line
            for line in body.decode().splitlines()
            if line.startswith(("celery_exporter_events_total", "celery_exporter_last_event_timestamp"))
        ]
        samples = parse_metrics("\n".join(wanted))
        last = [v for n, _, v in samples if n == "celery_exporter_last_event_timestamp_seconds"]
        return int(metric_sum(samples, "celery_exporter_events_total")), (last[0] if last else None)

    def load_scraper(self, scen: Scenario) -> Optional[Scraper]:
        if not scen.load_scrape_interval:
            return None
        return Scraper(self.http_port, scen.load_scrape_interval, scen.scrape_timeout)

    def final_figures(self, scen: Scenario, gen: dict, result: dict) -> Tuple[Dict[str, Any], int, Optional[float]]:
        samples, body = self.metrics(scen.scrape_timeout)
        count = int(metric_sum(samples, "celery_exporter_events_total"))
        last = [v for n, _, v in samples if n == "celery_exporter_last_event_timestamp_seconds"]
        checks = exporter_checks(samples, gen)
        out: Dict[str, Any] = {
            "sample_lines": len(samples),
            "body_bytes": len(body),
            "series": {
                k: int(metric_sum(samples, "celery_exporter_series", kind=k)) for k in ("task", "exception", "worker")
            },
            "reconnects": int(metric_sum(samples, "celery_exporter_broker_reconnects_total")),
            "dropped": {
                labels["reason"]: v for n, labels, v in samples if n == "celery_exporter_events_dropped_total" and v
            },
            "checks": checks,
            "checks_failed": sum(1 for c in checks if not c["ok"]),
            "events_by_type": {
                labels["type"]: int(v) for n, labels, v in samples if n == "celery_exporter_events_total"
            },
        }
        out.update(idle_scrape_figures(self.http_port, scen.scrape_timeout, scen.idle_scrapes))
        # series a Prometheus stores per scrape: every text sample line, against the
        # protobuf scrape with native histograms (one series per histogram)
        _, _, pb_body = scrape(self.http_port, scen.scrape_timeout, PROMETHEUS_NATIVE_HEADERS)
        out["series_text"] = len(samples)
        out["series_native"] = native_series(pb_body)
        out["protobuf_body_bytes"] = len(pb_body)
        out["peak_rss_mib"] = round(proc_status_mib(self.pid)["VmHWM"], 1)  # the idle scrapes included
        return out, count, (last[0] if last else None)

    def lost_connection(self, result: dict) -> bool:
        return bool(result.get("reconnects", 0) > 0)


class ReferenceConsumer(Consumer):
    def start(self) -> None:
        self.log_path = os.path.join(self.workdir, f"{self.tag}-reference.log")
        self.err = open(self.log_path, "w")
        cmd = [sys.executable, os.path.join(HERE, "reference.py"), "--broker-url", self.broker.url]
        if isinstance(self.broker, RabbitVhost):
            cmd += ["--queue-ttl", str(RMQ_QUEUE_TTL)]
        self.proc = subprocess.Popen(
            on_core(self.args.consumer_core, cmd),
            stdout=subprocess.PIPE,
            stderr=self.err,
            env=clean_env(),
            text=True,
            bufsize=1,
            cwd=self.workdir,
        )
        self.ready = threading.Event()
        self.final: Optional[dict] = None
        self.final_event = threading.Event()
        self.latest: Count = (0, None)
        self.reader = threading.Thread(target=self._read, name="reference-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.ready.set()
            elif msg.get("final"):
                self.final = msg
                self.latest = (msg["count"], msg.get("last_event"))
                self.final_event.set()
            elif "count" in msg:
                self.latest = (msg["count"], msg.get("last_event"))
        self.final_event.set()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            raise RuntimeError(f"reference consumer not ready after {timeout} s; see {self.log_path}")

    def count(self) -> Count:
        return self.latest

    def finish(self, timeout: float = 10.0) -> Optional[dict]:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
        self.final_event.wait(timeout)
        return self.final

    def final_figures(self, scen: Scenario, gen: dict, result: dict) -> Tuple[Dict[str, Any], int, Optional[float]]:
        final = self.finish()
        if final is None:
            raise RuntimeError(f"reference printed no final line; see {self.log_path}")
        checks = reference_checks(final["by_type"], gen)
        out = {
            "events_by_type": final["by_type"],
            "reference_exit": {"reason": final["reason"], "error": final["error"]},
            "peak_rss_mib": result["peak_rss_after_load_mib"],
            "checks": checks,
            "checks_failed": sum(1 for c in checks if not c["ok"]),
        }
        return out, final["count"], final.get("last_event")

    def lost_connection(self, result: dict) -> bool:
        return bool(result["reference_exit"]["reason"] == "error")

    def stop(self) -> None:
        super().stop()
        self.err.close()


def make_consumer(
    args: Any, broker: Broker, workdir: str, tag: str, name: str, builds: Dict[str, Build], scen: Scenario
) -> Consumer:
    if name == REFERENCE:
        return ReferenceConsumer(args, broker, workdir, tag)
    return ExporterConsumer(args, broker, workdir, tag, builds[name], scen.exporter_args)


def wait_settled(
    consumer: Consumer, target: int, poll: float, quiet: float, cap: float, on_reach: Callable[[], None]
) -> dict:
    """Poll the consumer's count until it reaches `target` or stops moving for `quiet` s."""
    start = time.monotonic()
    last_count, last_change = None, time.monotonic()
    reached_at = None
    poll_s: List[float] = []
    while True:
        count, last_event = consumer.count()
        now = time.monotonic()
        if consumer.last_scrape_s is not None:
            poll_s.append(round(consumer.last_scrape_s, 4))  # the HTTP response alone, not our parsing
        if count is not None and count != last_count:
            last_count, last_change = count, now
        if count is not None and count >= target:
            reached_at = time.time()
            on_reach()
            break
        if now - last_change >= quiet or now - start >= cap or not consumer.alive():
            on_reach()
            break
        time.sleep(poll)
    # for the exporter each poll is a full /metrics scrape: the first one is the cold scrape
    return {
        "count": last_count,
        "reached_at": reached_at,
        "settle_wait_s": round(time.monotonic() - start, 3),
        "polls": len(poll_s),
        "first_polls_s": poll_s[:5],
    }
