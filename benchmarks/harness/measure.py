"""Measurements: a process's CPU and memory from /proc, how busy and how fast a core is,
percentiles, and timed scrapes of /metrics (one at a time, idle, or from a thread during
the load), and the /metrics text read back into samples."""

from __future__ import annotations

import gzip
import http.client
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = 1.0 / 1024  # VmHWM / VmRSS are in kB

# Prometheus 2.x default scrape headers (OpenMetrics preferred, gzip).
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
# ... and with --enable-feature=native-histograms, which asks for protobuf first.
PROMETHEUS_NATIVE_HEADERS = {
    "Accept": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def core_busy_s(core: int) -> float:
    """CPU time the core spent busy (everything but idle and iowait), all processes, in s."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK
    return 0.0


def proc_status_mib(pid: int) -> Dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * PAGE_MIB
    return out


CALIBRATION = """
import time
best = 1e9
for _ in range(3):
    t = time.perf_counter()
    s = 0
    for i in range(500_000):
        s += i * i
    best = min(best, time.perf_counter() - t)
print(round(best * 1000, 2))
"""


def core_check_ms(core: int) -> Optional[float]:
    """Time of a fixed pure-Python loop on `core` (best of 3): how fast that core is right
    now. On a shared VM this moves by 2x between runs; read the other figures with it."""
    try:
        out = subprocess.run(
            ["taskset", "-c", str(core), sys.executable, "-c", CALIBRATION], capture_output=True, text=True, timeout=30
        ).stdout
        return float(out.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def pct(values: List[float], q: float) -> Optional[float]:
    """Percentile by the nearest-rank method (p99 of 100 values = the 99th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 2)


class CpuWindow:
    """The consumer's CPU, and its core's busy time, from the start of the load to the
    moment its count reached the total (`close`, called once)."""

    def __init__(self, pid: int, core: int):
        self.pid, self.core = pid, core
        self.cpu0 = proc_cpu_s(pid)
        self.busy0, self.wall0 = core_busy_s(core), time.monotonic()
        self.end: Dict[str, float] = {}

    def close(self) -> None:
        self.end["cpu"] = proc_cpu_s(self.pid)
        self.end["busy"] = core_busy_s(self.core)
        self.end["wall"] = time.monotonic()

    @property
    def cpu(self) -> float:
        """The consumer's CPU s in the window."""
        return self.end["cpu"] - self.cpu0

    def figures(self) -> Dict[str, float]:
        """CPU s of the consumer, and other processes' share of its core in the window (this
        machine is shared: the share in which that core ran something else)."""
        cpu = self.cpu
        other = (self.end["busy"] - self.busy0) - cpu
        return {
            "cpu_s": round(cpu, 3),
            "other_load_on_consumer_core": round(max(0.0, other) / (self.end["wall"] - self.wall0), 3),
        }


# ---------------------------------------------------------------------------------------
# /metrics

Samples = List[Tuple[str, Dict[str, str], float]]  # (name, labels, value) per sample line
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Samples:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        samples.append((m.group(1), labels, value))
    return samples


def native_series(body: bytes) -> int:
    """Series a Prometheus with native histograms stores from one protobuf scrape: one per
    counter or gauge, one per native histogram, and a classic histogram's _bucket (with
    +Inf), _count and _sum series when it has no native buckets."""
    from celery_exporter.exposition import protobuf

    total = 0
    for mf in protobuf.decode(body):
        for m in mf.metric:
            if mf.type != 4:
                total += 1
            elif m.histogram.HasField("schema"):
                total += 1
            else:
                buckets = list(m.histogram.bucket)
                has_inf = bool(buckets) and buckets[-1].upper_bound == float("inf")
                total += len(buckets) + (0 if has_inf else 1) + 2
    return total


def metric_sum(samples: Samples, name: str, **match: str) -> float:
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in match.items()))


def scrape(
    port: int, timeout: float, headers: Optional[Dict[str, str]] = None, path: str = "/metrics"
) -> Tuple[float, int, bytes]:
    """One full request on a fresh connection (as Prometheus does against an HTTP/1.0
    server); returns (seconds, status, body as received)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        return elapsed, resp.status, body if resp.getheader("Content-Encoding") != "gzip" else gzip.decompress(body)
    finally:
        conn.close()


class Scraper(threading.Thread):
    """Scrapes /metrics every `interval` s while the load runs; times each full response."""

    def __init__(self, port: int, interval: float, timeout: float):
        super().__init__(name="load-scraper", daemon=True)
        self.port, self.interval, self.timeout = port, interval, timeout
        self.stop_event = threading.Event()
        self.latencies: List[float] = []
        self.errors = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                elapsed, status, _ = scrape(self.port, self.timeout)
                if status == 200:
                    self.latencies.append(elapsed)
                else:
                    self.errors += 1
            except Exception:
                self.errors += 1
            next_at += self.interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(self.timeout + 1)


def timing_figures(values: List[float]) -> Dict[str, Any]:
    """n, p50, p99 and max of scrape times, in ms."""
    return {"n": len(values), "p50": ms(statistics.median(values)), "p99": ms(pct(values, 99)), "max": ms(max(values))}


# the idle scrapes' formats: plain text (what curl gets), as Prometheus asks (OpenMetrics +
# gzip), as a Prometheus with native histograms asks (protobuf + gzip); and their figures' keys
IDLE_FORMATS = (
    ("plain", None, "idle_scrape_ms"),
    ("prom", PROMETHEUS_HEADERS, "idle_scrape_prometheus_ms"),
    ("protobuf", PROMETHEUS_NATIVE_HEADERS, "idle_scrape_protobuf_ms"),
)


def idle_scrape_figures(port: int, timeout: float, warm: int) -> Dict[str, Any]:
    """Each format in turn: one cold scrape (the first in that format, reported on its own:
    the exporter keeps the last format's encodings of unchanged series), then `warm` ones."""
    out: Dict[str, Any] = {}
    cold: Dict[str, Optional[float]] = {}
    for key, headers, _ in IDLE_FORMATS:
        cold[key] = ms(scrape(port, timeout, headers)[0])
        out[key] = [scrape(port, timeout, headers)[0] for _ in range(warm)]
    figures: Dict[str, Any] = {"cold_scrape_ms": cold}
    for key, _, name in IDLE_FORMATS:
        figures[name] = timing_figures(out[key])
    return figures


def load_scrape_figures(scraper: Scraper) -> Dict[str, Any]:
    lat = scraper.latencies
    return {
        "n": len(lat),
        "errors": scraper.errors,
        "interval_s": scraper.interval,
        "p50": ms(statistics.median(lat)) if lat else None,
        "p99": ms(pct(lat, 99)) if lat else None,
        "max": ms(max(lat)) if lat else None,
    }
