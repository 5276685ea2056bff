"""Benchmark runner: the exporter against a no-op EventReceiver, side by side, same run.

For each scenario and repeat, and for each consumer (the exporter, then the reference
consumer, one at a time), it
  1. starts a private redis-server on a free port (pinned to the generator's core), or for
     the rmq-* scenarios creates a fresh vhost on the local RabbitMQ (deleted at the end);
  2. starts the consumer pinned to its own core (`taskset -c 0`) and waits until it is
     subscribed (exporter: /-/ready answers 200; reference: its readiness line; and for
     both, a client with psub=1 in Redis' CLIENT LIST, or on RabbitMQ a queue bound to
     the celeryev exchange with a consumer in `rabbitmqctl list_queues`);
  3. starts the load generator(s) pinned to the other core and waits for them;
  4. waits until the consumer's event count reaches what was published (or stops moving),
     then reads the figures: events lost, lag, CPU per 100k events, peak RSS, series,
     subscription kept, scrape latency (idle, and under load from a scraper thread).

Results: a table on stdout (min / median / max over the repeats, exporter | reference) and
benchmarks/results/<scenario>-<timestamp>.json with every raw figure and machine info.

    python benchmarks/run.py --scenario all --quick          # smoke run, ~10x smaller
    python benchmarks/run.py --scenario sustained --repeats 3
    python benchmarks/run.py --scenario rabbitmq --quick     # the RabbitMQ scenarios only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = 1.0 / 1024  # VmHWM / VmRSS are in kB
# The message TTL of the exporter's RabbitMQ queue (QUEUE_MESSAGE_TTL in
# celery_exporter/receiver.py); the reference's queue gets the same, instead of Celery's
# event_queue_ttl of 5 s, so that neither drops a late event earlier than the other.
RMQ_QUEUE_TTL = 30.0

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


# ---------------------------------------------------------------------------------------
# scenarios


@dataclasses.dataclass
class Scenario:
    name: str
    summary: str
    broker: str = "redis"  # "redis": a private redis-server; "rabbitmq": a fresh vhost
    # generator
    tasks: Optional[int] = None
    duration: Optional[float] = None
    rate: float = 0.0
    task_names: int = 20
    workers: int = 4
    queues: int = 4
    fail_fraction: float = 0.02
    retry_fraction: float = 0.02
    # most task events in one task.multi message (the workers' EventDispatcher buffer_limit,
    # Celery's default 24); 0: no buffering, one message per event (eventlet/gevent workers)
    batch_limit: int = 24
    # runner
    load_scrape_interval: Optional[float] = 0.1  # None: no scraper during the load
    idle_scrapes: int = 100
    scrape_timeout: float = 10.0
    exporter_args: Tuple[str, ...] = ()
    targets: Tuple[Tuple[str, str, float], ...] = ()  # (figure, op, bound) checked on the exporter
    quick: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def scaled(self, quick: bool) -> "Scenario":
        return dataclasses.replace(self, **self.quick) if quick else self

    def describe(self) -> str:
        size = f"{self.tasks:,} tasks" if self.tasks is not None else f"{self.duration:g} s"
        rate = f"{self.rate:,.0f} events/s" if self.rate else "as fast as possible"
        batching = (
            f"task.multi batches of up to {self.batch_limit}"
            if self.batch_limit > 0
            else "one message per task event (no task.multi)"
        )
        return (
            f"{self.broker}: {size} at {rate}; {self.task_names:,} task names, {self.workers} workers, "
            f"{self.queues} queues, {self.fail_fraction:.0%} failed, {self.retry_fraction:.0%} retried; {batching}"
        )


SCENARIOS: Dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "sanity",
            "harness check: low rate, both consumers must count every event",
            duration=10,
            rate=1000,
            task_names=10,
            workers=3,
            queues=2,
            idle_scrapes=20,
            targets=(("lost", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(duration=3),
        ),
        Scenario(
            "burst",
            "20,000 tasks (~80k task events + heartbeats) published as fast as possible",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "sustained",
            "10,000 events/s for 30 s",
            duration=30,
            rate=10_000,
            task_names=50,
            workers=10,
            queues=4,
            targets=(
                ("lost", "==", 0),
                ("lag_s", "<", 2.0),
                ("peak_rss_mib", "<", 80.0),
                ("subscription_dropped", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(duration=3, idle_scrapes=20),
        ),
        Scenario(
            "cpu",
            "5,000 events/s for 20 s: CPU per 100k events, no scraping during the load",
            duration=20,
            rate=5_000,
            task_names=50,
            workers=10,
            queues=4,
            load_scrape_interval=None,
            idle_scrapes=20,
            targets=(("lost", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(duration=2),
        ),
        Scenario(
            # every name appears 10 times (task i gets name i mod 2000); quick keeps the 2,000
            # names (the point of the scenario) and sends each once.
            "cardinality",
            "2,000 task names x 50 workers, 10 tasks per name, exporter defaults; no scrapes until the load ends",
            tasks=20_000,
            rate=5_000,
            task_names=2_000,
            workers=50,
            queues=10,
            load_scrape_interval=None,
            idle_scrapes=20,
            scrape_timeout=30.0,
            targets=(
                ("peak_rss_mib", "<", 113.0),
                ("idle_scrape_p99_ms", "<", 100.0),
                ("prom_scrape_p99_ms", "<", 100.0),
                ("protobuf_scrape_p99_ms", "<", 100.0),
                ("native_series_share", "<=", 0.2),
                ("lost", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(tasks=2_000, idle_scrapes=5),
        ),
        Scenario(
            # ~5,400 sample lines: a (name, queue) label set with all three histograms renders
            # 10 counters, running and 2-3 last-seen gauges + 23 runtime + 21 queue-wait +
            # 21 prefetch-wait lines = ~78 lines, so 64 names -> ~5,000, plus up to 4
            # exception lines per name (3 failure classes and the retry one), 10 workers x 6
            # lines, and ~70 self/process lines (see benchmarks/README.md).
            "scrape",
            "~5,000 sample lines in /metrics while 5,000 events/s flow; scraped every 100 ms",
            duration=20,
            rate=5_000,
            task_names=64,
            workers=10,
            queues=4,
            load_scrape_interval=0.1,
            idle_scrapes=100,
            targets=(("load_scrape_p99_ms", "<", 20.0), ("checks_failed", "==", 0)),
            quick=dict(duration=2, idle_scrapes=20),
        ),
        # RabbitMQ: the same loads through a fresh vhost of the local broker. The generator's
        # top rate on AMQP (one basic.publish per message, no pipelining; measured on this
        # 2-vCPU VM with the reference consuming): ~24k events/s batched (mean batch ~17),
        # ~8.8k events/s with one message per event, and it holds 15k events/s paced for 4 s
        # at 65 % of its core. Sustained runs at 10k/s (~50 % of the generator's core), as on
        # Redis, leaving the rest of that core to rabbitmqctl's queue sampling and the runner.
        Scenario(
            "rmq-burst",
            "RabbitMQ: 20,000 tasks (~80k task events + heartbeats) as fast as possible, task.multi batches <= 24",
            broker="rabbitmq",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            batch_limit=24,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "rmq-burst-single",
            "RabbitMQ: 20,000 tasks as fast as possible, one message per event (no task.multi)",
            broker="rabbitmq",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            batch_limit=0,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "rmq-sustained",
            "RabbitMQ: 10,000 events/s for 30 s, task.multi batches <= 24",
            broker="rabbitmq",
            duration=30,
            rate=10_000,
            task_names=50,
            workers=10,
            queues=4,
            batch_limit=24,
            targets=(
                ("lost", "==", 0),
                ("lag_s", "<", 2.0),
                ("peak_rss_mib", "<", 80.0),
                ("subscription_dropped", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(duration=3, idle_scrapes=20),
        ),
    ]
}
ORDER = [
    "sanity",
    "burst",
    "sustained",
    "cpu",
    "cardinality",
    "scrape",
    "rmq-burst",
    "rmq-burst-single",
    "rmq-sustained",
]
GROUPS = {
    "all": ORDER,
    "redis": [n for n in ORDER if SCENARIOS[n].broker == "redis"],
    "rabbitmq": [n for n in ORDER if SCENARIOS[n].broker == "rabbitmq"],
}


# ---------------------------------------------------------------------------------------
# helpers: processes, /proc, ports


def code_version() -> Dict[str, Any]:
    """What exporter code a run measured: git HEAD and a hash of the package's sources as
    they are on disk when the exporter starts (the package is installed editable, so an
    uncommitted edit is measured too, and shows as a different source hash)."""
    import hashlib

    h = hashlib.sha1()
    pkg = os.path.join(REPO, "celery_exporter")
    sources = []
    for root, _, files in os.walk(pkg):  # the subpackages too (store/, exposition/)
        sources.extend(os.path.join(root, name) for name in files if name.endswith(".py"))
    for path in sorted(sources):
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, pkg).encode() + b"\0" + f.read())
    try:
        head = (
            subprocess.run(
                ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        head = None
    return {"git_head": head, "source_sha1": h.hexdigest()[:12]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


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


def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_") and k != "CELERY_BROKER_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RedisServer:
    """A private redis-server, so no other client's events reach the consumer under test."""

    def __init__(self, binary: str, core: int, workdir: str):
        self.binary, self.core, self.workdir = binary, core, workdir
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = ""

    def start(self) -> None:
        for _attempt in range(5):
            self.port = free_port()
            self.log_path = os.path.join(self.workdir, f"redis-{self.port}.log")
            log = open(self.log_path, "w")
            self.proc = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(self.core),
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client().ping():
                        return
                except Exception:
                    time.sleep(0.05)
            stop_process(self.proc)
        raise RuntimeError(f"redis-server did not start; see {self.log_path}")

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log_text(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


class Monitor(threading.Thread):
    """Samples the broker's view of the consumer every `interval` s while the load runs,
    and the consumer's VmRSS about once a second."""

    def __init__(self, name: str, interval: float, pid: Optional[int]):
        super().__init__(name=name, daemon=True)
        self.pid = pid
        self.interval = interval
        self.t0 = time.monotonic()
        self.rss_series: List[Tuple[float, float]] = []  # (s since start, VmRSS MiB), about 1 per s
        self.stop_event = threading.Event()
        self.samples = 0
        self.missing_samples = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def sample_rss(self) -> None:
        if self.pid is not None:
            t = round(time.monotonic() - self.t0, 1)
            if not self.rss_series or t - self.rss_series[-1][0] >= 1.0:
                try:
                    self.rss_series.append((t, round(proc_status_mib(self.pid)["VmRSS"], 1)))
                except OSError:
                    pass

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


class RedisMonitor(Monitor):
    """Polls CLIENT LIST: is a pattern subscriber (psub=1) present, which client ids held
    the subscription, and how large its output buffer (backlog not yet sent) grew."""

    def __init__(self, server: RedisServer, interval: float = 0.1, pid: Optional[int] = None):
        super().__init__("redis-monitor", interval, pid)
        self.client = server.client()
        self.subscriber_ids: List[str] = []
        self.max_omem = 0
        self.max_oll = 0

    def subscribers(self) -> List[Dict[str, str]]:
        return [c for c in self.client.client_list() if int(c.get("psub", 0)) > 0]

    def sample(self) -> None:
        self.sample_rss()
        try:
            subs = self.subscribers()
        except Exception:
            return
        self.samples += 1
        if not subs:
            self.missing_samples += 1
        for c in subs:
            if c["id"] not in self.subscriber_ids:
                self.subscriber_ids.append(c["id"])
            self.max_omem = max(self.max_omem, int(c.get("omem", 0)))
            self.max_oll = max(self.max_oll, int(c.get("oll", 0)))


class RabbitVhost:
    """A fresh vhost on the shared local RabbitMQ, so that no other client's events (tests)
    reach the consumer and no queue or exchange carries over: the analogue of the private
    redis-server. RabbitMQ itself is one shared beam.smp process, not started here (main moves it
    to the generator's core for the run, unless --no-pin-rabbitmq).
    rabbitmqctl runs pinned to the generator's core, at nice 10 (the generator comes first)."""

    def __init__(self, ctl: str, base_url: str, core: int, tag: str):
        self.ctl_path, self.base_url, self.core = ctl, base_url.rstrip("/"), core
        safe_tag = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)
        self.vhost = f"celery-exporter-bench-{safe_tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created = False
        self.ctl_cpu_s = 0.0  # CPU of every rabbitmqctl run (utime + stime of the child)
        self.ctl_calls = 0
        self._lock = threading.Lock()

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Runs `rabbitmqctl -q ARGS`; its output (raises on failure). Reaped with wait4 so
        that the CLI's own CPU (it boots an Erlang VM, ~0.4 s) is accounted."""
        cmd = ["nice", "-n", "10", "taskset", "-c", str(self.core), self.ctl_path, "-q", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            out = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stdout:
            proc.stdout.close()
        with self._lock:
            self.ctl_cpu_s += usage.ru_utime + usage.ru_stime
            self.ctl_calls += 1
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): {out.strip()[:300]}")
        return out

    def start(self) -> None:
        self.ctl("add_vhost", self.vhost)
        self.created = True
        try:
            self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        except Exception:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"{self.base_url}/{urllib.parse.quote(self.vhost, safe='')}"

    def rows(self, *args: str) -> List[List[str]]:
        out = self.ctl(*args, "--no-table-headers")
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def queues(self) -> Dict[str, Dict[str, int]]:
        """{queue: {messages, message_bytes, consumers}} in this vhost."""
        out = {}
        for row in self.rows("list_queues", "-p", self.vhost, "name", "messages", "message_bytes", "consumers"):
            if len(row) == 4:
                name, messages, nbytes, consumers = row
                out[name] = {"messages": int(messages), "message_bytes": int(nbytes), "consumers": int(consumers)}
        return out

    def event_queues(self, exchange: str = "celeryev") -> List[str]:
        """Queues bound to the event exchange in this vhost."""
        rows = self.rows("list_bindings", "-p", self.vhost, "source_name", "destination_name", "destination_kind")
        return sorted({r[1] for r in rows if len(r) == 3 and r[0] == exchange and r[2] == "queue"})

    def consumer_queues(self) -> List[str]:
        """Queues bound to celeryev with at least one consumer."""
        bound = self.event_queues()
        queues = self.queues()
        return [q for q in bound if queues.get(q, {}).get("consumers", 0) > 0]

    def version(self) -> Optional[str]:
        try:
            return self.ctl("version").strip()
        except Exception:
            return None

    def stop(self) -> None:
        """Deletes the vhost (and with it every queue and exchange the run declared)."""
        if not self.created:
            return
        try:
            self.ctl("delete_vhost", self.vhost)
            self.created = False
        except Exception as exc:
            print(f"   WARNING: could not delete RabbitMQ vhost {self.vhost}: {exc}", file=sys.stderr)


Broker = Union[RedisServer, RabbitVhost]


class RabbitMonitor(Monitor):
    """Polls `rabbitmqctl list_queues` in the run's vhost: is the consumer's queue there,
    with a consumer, the same queue throughout (a reconnecting exporter declares a new
    one), and how many messages (and bytes) it held: the backlog the broker keeps for the
    consumer, the analogue of Redis' omem. Each poll costs ~0.4 s of CPU on the generator's
    core (rabbitmqctl boots an Erlang VM; an exclusive queue cannot be inspected over AMQP
    from another connection), so the default interval is 1 s, not 100 ms."""

    def __init__(self, vhost: RabbitVhost, queue: str, interval: float = 1.0, pid: Optional[int] = None):
        super().__init__("rabbitmq-monitor", interval, pid)
        self.vhost = vhost
        self.queue = queue
        self.failed_samples = 0
        self.other_consumer_queues: List[str] = []
        self.max_messages = 0
        self.max_bytes = 0
        self.present_at_last_sample = False
        self._rss_stop = threading.Event()
        self._rss = threading.Thread(target=self._rss_loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        super().start()
        self._rss.start()

    def _rss_loop(self) -> None:
        while not self._rss_stop.wait(0.2):
            self.sample_rss()

    def sample(self) -> None:
        try:
            queues = self.vhost.queues()
        except Exception:
            self.failed_samples += 1
            return
        self.samples += 1
        q = queues.get(self.queue)
        self.present_at_last_sample = bool(q and q["consumers"] > 0)
        if not self.present_at_last_sample:
            self.missing_samples += 1
        if q:
            self.max_messages = max(self.max_messages, q["messages"])
            self.max_bytes = max(self.max_bytes, q["message_bytes"])
        for name, info in queues.items():
            if name != self.queue and info["consumers"] > 0 and name not in self.other_consumer_queues:
                self.other_consumer_queues.append(name)

    def stop(self) -> None:
        self._rss_stop.set()
        super().stop()
        if self._rss.is_alive():
            self._rss.join(2)


# ---------------------------------------------------------------------------------------
# metrics text

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> List[Tuple[str, Dict[str, str], float]]:
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


def metric_sum(samples, name: str, **match: str) -> float:
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


# ---------------------------------------------------------------------------------------
# consumers


class Consumer:
    kind = ""

    def __init__(self, args, broker: "Broker", workdir: str, tag: str):
        self.args, self.broker, self.workdir, self.tag = args, broker, workdir, tag
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def count(self) -> Tuple[Optional[int], Optional[float]]:
        """(events counted so far, epoch time of the last event) or (None, None)."""
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)


class ExporterConsumer(Consumer):
    kind = "exporter"

    def start(self) -> None:
        self.http_port = free_port()
        self.log_path = os.path.join(self.workdir, f"{self.tag}-exporter.log")
        log = open(self.log_path, "w")
        cmd = [
            "taskset",
            "-c",
            str(self.args.consumer_core),
            self.args.exporter,
            "--broker-url",
            self.broker.url,
            "--listen-address",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--no-inspect",
            *self.exporter_args,
        ]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.workdir)
        log.close()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"exporter exited with {self.proc.returncode}; see {self.log_path}")
            try:
                _, status, _ = scrape(self.http_port, 2, path="/-/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"exporter not ready after {timeout} s; see {self.log_path}")

    last_scrape_s: Optional[float] = None

    def metrics(self, timeout: float):
        _, status, body = scrape(self.http_port, timeout)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode()), body

    def count(self, timeout: float = 30.0):
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


class ReferenceConsumer(Consumer):
    kind = "reference"

    def start(self) -> None:
        self.log_path = os.path.join(self.workdir, f"{self.tag}-reference.log")
        self.err = open(self.log_path, "w")
        cmd = [
            "taskset",
            "-c",
            str(self.args.consumer_core),
            sys.executable,
            os.path.join(HERE, "reference.py"),
            "--broker-url",
            self.broker.url,
        ]
        if isinstance(self.broker, RabbitVhost):
            cmd += ["--queue-ttl", str(RMQ_QUEUE_TTL)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.err, env=clean_env(), text=True, bufsize=1, cwd=self.workdir
        )
        self.ready = threading.Event()
        self.final: Optional[dict] = None
        self.final_event = threading.Event()
        self.latest = (0, None)
        self.reader = threading.Thread(target=self._read, name="reference-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
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

    def count(self, timeout: float = 0):
        return self.latest

    def finish(self, timeout: float = 10.0) -> Optional[dict]:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        self.final_event.wait(timeout)
        return self.final

    def stop(self) -> None:
        super().stop()
        self.err.close()


# ---------------------------------------------------------------------------------------
# one run


def run_generators(args, scen: Scenario, broker: "Broker", workdir: str, tag: str) -> dict:
    procs = []
    k = args.generators
    for i in range(k):
        cmd = [
            "taskset",
            "-c",
            str(args.generator_core),
            sys.executable,
            os.path.join(HERE, "generate.py"),
            "--broker-url",
            broker.url,
            "--shard",
            f"{i}/{k}",
            "--task-names",
            str(scen.task_names),
            "--workers",
            str(scen.workers),
            "--queues",
            str(scen.queues),
            "--fail-fraction",
            str(scen.fail_fraction),
            "--retry-fraction",
            str(scen.retry_fraction),
            "--rate",
            str(scen.rate),
            "--flush-interval",
            str(args.flush_interval),
            "--buffer-limit",
            str(scen.batch_limit),
            "--seed",
            str(args.seed),
        ]
        if scen.tasks is not None:
            cmd += ["--tasks", str(scen.tasks)]
        else:
            cmd += ["--duration", str(scen.duration)]
        err = open(os.path.join(workdir, f"{tag}-generator{i}.err"), "w")
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=clean_env(), cwd=workdir), err))
    shards = []
    try:
        for proc, err in procs:
            out, _ = proc.communicate()
            err.close()
            if proc.returncode != 0:
                raise RuntimeError(f"generator failed ({proc.returncode}); see {err.name}")
            shards.append(json.loads(out))
    finally:  # on an error or SIGTERM, stop the other shards before the broker goes away
        for proc, err in procs:
            stop_process(proc)
            err.close()
    published: Dict[str, int] = {}
    for s in shards:
        for t, n in s["published"].items():
            published[t] = published.get(t, 0) + n
    t_start = min(s["t_start"] for s in shards)
    t_end = max(s["t_end"] for s in shards)
    total = sum(published.values())
    multi = sum(s["task_multi_messages"] for s in shards)
    multi_events = sum(s["mean_batch"] * s["task_multi_messages"] for s in shards if s["mean_batch"])
    return {
        "published": published,
        "total_events": total,
        "messages": sum(s["messages"] for s in shards),
        "mean_batch": round(multi_events / multi, 2) if multi else None,
        "max_batch": max((s.get("max_batch") or 0 for s in shards), default=0) or None,
        "tasks": sum(s["tasks"] for s in shards),
        "workers": sorted(w for s in shards for w in s["workers"]),
        "task_series": len({tuple(x) for s in shards for x in s["task_series"]}),
        "exception_series": len({tuple(x) for s in shards for x in s["exception_series"]}),
        "t_start": t_start,
        "t_end": t_end,
        "elapsed_s": round(t_end - t_start, 3),
        "events_per_s": round(total / (t_end - t_start), 1),
        "cpu_s": sum(s["cpu_s"] for s in shards),
        "shards": len(shards),
    }


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
        if getattr(consumer, "last_scrape_s", None) is not None:
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


def exporter_checks(samples, gen: dict) -> List[dict]:
    """The exporter's own counters against the generator's ground truth."""
    p = gen["published"]
    attempts_started = p.get("task-started", 0)
    expect = [
        ("celery_task_sent_total", p.get("task-sent", 0)),
        ("celery_task_received_total", p.get("task-received", 0)),
        ("celery_task_started_total", p.get("task-started", 0)),
        ("celery_task_succeeded_total", p.get("task-succeeded", 0)),
        ("celery_task_failed_total", p.get("task-failed", 0)),
        ("celery_task_retried_total", p.get("task-retried", 0)),
        ("celery_task_exceptions_total", p.get("task-failed", 0) + p.get("task-retried", 0)),
        ("celery_task_runtime_seconds_count", p.get("task-succeeded", 0)),
        ("celery_task_queue_wait_seconds_count", attempts_started),
        ("celery_task_prefetch_wait_seconds_count", attempts_started),
        ("celery_exporter_events_dropped_total", 0),
        ("celery_exporter_broker_reconnects_total", 0),
        ("celery_exporter_broker_connected", 1),
        ("celery_worker_up", len(gen["workers"])),
        ("celery_exporter_series{kind=task}", gen["task_series"]),
        ("celery_exporter_series{kind=exception}", gen["exception_series"]),
        ("celery_exporter_series{kind=worker}", len(gen["workers"])),
    ]
    for etype, n in p.items():
        expect.append((f"celery_exporter_events_total{{type={etype}}}", n))
    checks = []
    for name, want in expect:
        if "{" in name:
            base, label = name[:-1].split("{")
            key, value = label.split("=")
            got = metric_sum(samples, base, **{key: value})
        else:
            got = metric_sum(samples, name)
        checks.append({"metric": name, "expected": want, "got": got, "ok": got == want})
    return checks


def run_one(args, scen: Scenario, kind: str, repeat: int, workdir: str) -> dict:
    tag = f"{scen.name}-r{repeat}-{kind}"
    broker: Broker
    if scen.broker == "rabbitmq":
        broker = RabbitVhost(args.rabbitmqctl, args.rabbitmq_url, args.generator_core, tag)
    else:
        broker = RedisServer(args.redis_server, args.generator_core, workdir)
    broker.start()
    consumer: Consumer = (ExporterConsumer if kind == "exporter" else ReferenceConsumer)(args, broker, workdir, tag)
    consumer.exporter_args = scen.exporter_args
    result: Dict[str, Any] = {
        "consumer": kind,
        "broker": scen.broker,
        "repeat": repeat,
        "loadavg_before": os.getloadavg(),
        "core_check_ms": core_check_ms(args.consumer_core),
        "code": code_version(),
    }
    monitor: Optional[Monitor] = None
    scraper = spy = None
    r = None
    try:
        if isinstance(broker, RedisServer):
            r = broker.client()
            result["redis_pubsub_limit"] = r.config_get("client-output-buffer-limit").get("client-output-buffer-limit")
        else:
            result["rabbitmq_vhost"] = broker.vhost
        consumer.start()
        consumer.wait_ready(30)
        ready_at = time.monotonic()
        if isinstance(broker, RedisServer):
            monitor = RedisMonitor(broker, pid=consumer.pid)
            deadline = ready_at + 10
            while not monitor.subscribers():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} reported ready but no psub=1 client in Redis")
                time.sleep(0.005)
            # readiness (/-/ready 200, or the reference's line) comes before kombu's lazy PSUBSCRIBE
            result["ready_to_psub_s"] = round(time.monotonic() - ready_at, 4)
        else:
            # both consumers report ready after basic.consume-ok, so the consumer should be
            # listed at once; the figure is mostly rabbitmqctl's own latency (~0.35 s per call)
            deadline = ready_at + 15
            while True:
                queues = broker.consumer_queues()
                if queues:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{kind} reported ready but no queue bound to celeryev has a consumer in vhost {broker.vhost}"
                    )
                time.sleep(0.1)
            if len(queues) > 1:
                raise RuntimeError(f"more than one consumer queue in vhost {broker.vhost}: {queues}")
            result["ready_to_consumer_listed_s"] = round(time.monotonic() - ready_at, 4)
            monitor = RabbitMonitor(broker, queues[0], interval=args.rabbitmq_sample_interval, pid=consumer.pid)
            ctl_cpu_before_load = broker.ctl_cpu_s
        monitor.start()
        mem0 = proc_status_mib(consumer.pid)
        result["rss_idle_mib"] = round(mem0["VmRSS"], 1)
        if kind == "exporter" and scen.load_scrape_interval:
            scraper = Scraper(consumer.http_port, scen.load_scrape_interval, scen.scrape_timeout)
        if kind == "exporter" and args.py_spy:
            spy_out = os.path.join(args.results_dir, f"{tag}-{time.strftime('%Y%m%dT%H%M%S')}-py-spy.txt")
            spy = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(args.generator_core),
                    args.py_spy,
                    "record",
                    "--pid",
                    str(consumer.pid),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--threads",
                    "--gil",
                    "--nonblocking",
                    "--output",
                    spy_out,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(workdir, f"{tag}-py-spy.err"), "w"),
            )
            result["py_spy_raw"] = os.path.relpath(spy_out, REPO)
            time.sleep(1.0)  # let py-spy attach
        cpu0 = proc_cpu_s(consumer.pid)
        busy0, wall0 = core_busy_s(args.consumer_core), time.monotonic()
        if scraper:
            scraper.start()
        gen = run_generators(args, scen, broker, workdir, tag)
        if scraper:
            scraper.stop()
        # before any settle poll: with no scraper during the load, this is the memory of
        # the event state alone (uuid map, series), without a scrape's transient text
        result["peak_rss_at_generator_end_mib"] = round(proc_status_mib(consumer.pid)["VmHWM"], 1)
        result["generator"] = gen
        cpu_at_end: Dict[str, float] = {}

        def on_reach() -> None:
            cpu_at_end["cpu"] = proc_cpu_s(consumer.pid)
            cpu_at_end["busy"] = core_busy_s(args.consumer_core)
            cpu_at_end["wall"] = time.monotonic()

        cap = max(60.0, 3 * gen["elapsed_s"])
        settle = wait_settled(consumer, gen["total_events"], args.poll_interval, args.settle_quiet, cap, on_reach)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
        # subscription state now, while the consumer still runs (the reference exits below)
        monitor.stop()
        monitor.sample()
        if isinstance(monitor, RedisMonitor):
            still = bool(monitor.subscribers())
        else:
            still = isinstance(monitor, RabbitMonitor) and monitor.present_at_last_sample
        cpu = cpu_at_end["cpu"] - cpu0
        result["cpu_s"] = round(cpu, 3)
        # other processes on the consumer's core (this machine is shared): the share of the
        # load window in which that core ran something else than the consumer
        other = (cpu_at_end["busy"] - busy0) - cpu
        result["other_load_on_consumer_core"] = round(max(0.0, other) / (cpu_at_end["wall"] - wall0), 3)
        mem1 = proc_status_mib(consumer.pid)
        result["peak_rss_after_load_mib"] = round(mem1["VmHWM"], 1)
        result["rss_after_load_mib"] = round(mem1["VmRSS"], 1)

        # final figures
        if kind == "exporter":
            samples, body = consumer.metrics(scen.scrape_timeout)
            count = int(metric_sum(samples, "celery_exporter_events_total"))
            last = [v for n, _, v in samples if n == "celery_exporter_last_event_timestamp_seconds"]
            last_event = last[0] if last else None
            result["sample_lines"] = len(samples)
            result["body_bytes"] = len(body)
            result["series"] = {
                k: int(metric_sum(samples, "celery_exporter_series", kind=k)) for k in ("task", "exception", "worker")
            }
            result["reconnects"] = int(metric_sum(samples, "celery_exporter_broker_reconnects_total"))
            result["dropped"] = {
                labels["reason"]: v for n, labels, v in samples if n == "celery_exporter_events_dropped_total" and v
            }
            result["checks"] = exporter_checks(samples, gen)
            result["checks_failed"] = sum(1 for c in result["checks"] if not c["ok"])
            result["events_by_type"] = {
                labels["type"]: int(v) for n, labels, v in samples if n == "celery_exporter_events_total"
            }
            # idle scrapes: plain text (what curl gets), then as Prometheus asks (OpenMetrics +
            # gzip), then as a Prometheus with native histograms asks (protobuf + gzip). The
            # exporter keeps the last format's encodings of unchanged series: the first
            # scrape of each format is cold, reported on its own, then idle_scrapes warm ones.
            timings: Dict[str, List[float]] = {"plain": [], "prom": [], "protobuf": []}
            cold: Dict[str, Optional[float]] = {}
            for key, headers in (
                ("plain", None),
                ("prom", PROMETHEUS_HEADERS),
                ("protobuf", PROMETHEUS_NATIVE_HEADERS),
            ):
                cold[key] = ms(scrape(consumer.http_port, scen.scrape_timeout, headers)[0])
                for _ in range(scen.idle_scrapes):
                    timings[key].append(scrape(consumer.http_port, scen.scrape_timeout, headers)[0])
            result["cold_scrape_ms"] = cold
            for key, name in (
                ("plain", "idle_scrape_ms"),
                ("prom", "idle_scrape_prometheus_ms"),
                ("protobuf", "idle_scrape_protobuf_ms"),
            ):
                values = timings[key]
                result[name] = {
                    "n": len(values),
                    "p50": ms(statistics.median(values)),
                    "p99": ms(pct(values, 99)),
                    "max": ms(max(values)),
                }
            # series a Prometheus stores per scrape: every text sample line, against the
            # protobuf scrape with native histograms (one series per histogram)
            _, _, pb_body = scrape(consumer.http_port, scen.scrape_timeout, PROMETHEUS_NATIVE_HEADERS)
            result["series_text"] = len(samples)
            result["series_native"] = native_series(pb_body)
            result["protobuf_body_bytes"] = len(pb_body)
            if scraper:
                lat = scraper.latencies
                result["load_scrape_ms"] = {
                    "n": len(lat),
                    "errors": scraper.errors,
                    "interval_s": scen.load_scrape_interval,
                    "p50": ms(statistics.median(lat)) if lat else None,
                    "p99": ms(pct(lat, 99)) if lat else None,
                    "max": ms(max(lat)) if lat else None,
                }
            result["peak_rss_mib"] = round(proc_status_mib(consumer.pid)["VmHWM"], 1)
        else:
            final = consumer.finish()
            if final is None:
                raise RuntimeError(f"reference printed no final line; see {consumer.log_path}")
            count, last_event = final["count"], final.get("last_event")
            result["events_by_type"] = final["by_type"]
            result["reference_exit"] = {"reason": final["reason"], "error": final["error"]}
            result["peak_rss_mib"] = result["peak_rss_after_load_mib"]
            # the reference's own per-type counts against the ground truth
            result["checks"] = [
                {
                    "metric": f"events{{type={t}}}",
                    "expected": n,
                    "got": final["by_type"].get(t, 0),
                    "ok": final["by_type"].get(t, 0) == n,
                }
                for t, n in gen["published"].items()
            ]
            result["checks_failed"] = sum(1 for c in result["checks"] if not c["ok"])

        result["counted"] = count
        result["lost"] = gen["total_events"] - count
        result["lag_s"] = round(max(0.0, last_event - gen["t_end"]), 3) if last_event else None
        result["lag_polled_s"] = (
            round(max(0.0, settle["reached_at"] - gen["t_end"]), 3) if settle["reached_at"] else None
        )
        result["settle"] = settle
        result["cpu_per_100k_s"] = round(cpu / count * 100_000, 3) if count else None
        result["consumer_events_per_s"] = (
            round(count / (last_event - gen["t_start"]), 1)
            if count and last_event and last_event > gen["t_start"]
            else None
        )
        if isinstance(monitor, RedisMonitor) and isinstance(broker, RedisServer):
            buffer_kill = "output buffer limits" in broker.log_text()
            result["subscription"] = {
                "psub_client_ids": monitor.subscriber_ids,
                "samples": monitor.samples,
                "samples_without_subscriber": monitor.missing_samples,
                "subscribed_at_end": still,
                "redis_log_output_buffer_disconnect": buffer_kill,
                "max_output_buffer_mib": round(monitor.max_omem / 2**20, 2),
                "max_output_list_len": monitor.max_oll,
            }
            broker_lost_us = buffer_kill or len(monitor.subscriber_ids) > 1
        elif isinstance(monitor, RabbitMonitor) and isinstance(broker, RabbitVhost):
            # no Redis analogue of the output-buffer kill: RabbitMQ holds the backlog in the
            # queue (until the message TTL, RMQ_QUEUE_TTL) and blocks publishers by flow control
            result["subscription"] = {
                "queue": monitor.queue,
                "other_consumer_queues": monitor.other_consumer_queues,
                "samples": monitor.samples,
                "samples_failed": monitor.failed_samples,
                "samples_without_consumer": monitor.missing_samples,
                "subscribed_at_end": still,
                "sample_interval_s": monitor.interval,
                "max_queue_messages": monitor.max_messages,
                "max_queue_mib": round(monitor.max_bytes / 2**20, 2),
                "queue_message_ttl_s": RMQ_QUEUE_TTL,
            }
            # CPU that rabbitmqctl took on the generator's core during the load (the
            # monitor's polls); shows how much the sampling competed with the generator
            result["rabbitmqctl_cpu_during_load_s"] = round(broker.ctl_cpu_s - ctl_cpu_before_load, 2)
            broker_lost_us = bool(monitor.other_consumer_queues)
        result["rss_series_mib"] = monitor.rss_series
        dropped = (
            broker_lost_us
            or monitor.missing_samples > 0
            or not still
            or result.get("reconnects", 0) > 0
            or (kind == "reference" and result["reference_exit"]["reason"] == "error")
        )
        result["subscription_dropped"] = int(dropped)
        if r is not None:
            try:
                info = r.info("stats")
                result["redis_stats"] = {
                    k: info[k]
                    for k in (
                        "client_output_buffer_limit_disconnections",
                        "total_commands_processed",
                        "pubsub_patterns",
                    )
                    if k in info
                }
            except Exception:
                pass
        if spy is not None:
            result["py_spy_top"] = py_spy_top(os.path.join(REPO, result["py_spy_raw"]))
        return result
    finally:
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        if spy is not None and spy.poll() is None:
            spy.kill()
        consumer.stop()
        broker.stop()


def ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 2)


def py_spy_top(path: str, thread: str = "event-receiver", n: int = 15) -> Optional[dict]:
    """From py-spy's raw (collapsed) output: the share of the receiver thread's samples in
    which each function is on the stack (inclusive) and on top (self)."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    total = 0
    inclusive: Dict[str, int] = {}
    self_: Dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if thread not in stack.split(";", 1)[0]:
            continue
        c = int(count)
        total += c
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + c
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + c
    if not total:
        return None
    by_package: Dict[str, int] = {}
    for f, c in self_.items():
        m = re.search(r"\(([^/)]+)", f)
        package = m.group(1).split(".")[0] if m else "?"
        by_package[package] = by_package.get(package, 0) + c

    def top(d: dict, k: int = n) -> list:
        return [[f, round(100 * c / total, 1)] for f, c in sorted(d.items(), key=lambda x: -x[1])[:k]]

    return {
        "thread": thread,
        "samples": total,
        "mode": "py-spy --gil (samples holding the GIL)",
        "self_pct": top(self_),
        "inclusive_pct": top(inclusive, 30),
        "self_pct_by_package": top(by_package),
    }


# ---------------------------------------------------------------------------------------
# summary and table

FIGURES = [
    # (key, label, getter)
    ("published", "events published", lambda r: r["generator"]["total_events"]),
    ("counted", "events counted", lambda r: r["counted"]),
    ("lost", "events lost", lambda r: r["lost"]),
    ("gen_rate", "generator events/s achieved", lambda r: r["generator"]["events_per_s"]),
    ("messages", "broker messages published", lambda r: r["generator"]["messages"]),
    ("mean_batch", "mean task.multi batch, events", lambda r: r["generator"]["mean_batch"]),
    ("max_batch", "largest task.multi batch, events", lambda r: r["generator"].get("max_batch")),
    ("consumer_rate", "consumer events/s (first publish..last event)", lambda r: r["consumer_events_per_s"]),
    ("lag_s", "lag after generator end, s (last-event ts)", lambda r: r["lag_s"]),
    ("lag_polled_s", "lag, s (count polled every 100 ms)", lambda r: r["lag_polled_s"]),
    ("core_check_ms", "core speed check, ms (lower = faster core)", lambda r: r.get("core_check_ms")),
    ("other_load", "other processes' share of the consumer core", lambda r: r.get("other_load_on_consumer_core")),
    ("cpu_s", "consumer CPU s over the load", lambda r: r["cpu_s"]),
    ("cpu_per_100k_s", "CPU s per 100k events", lambda r: r["cpu_per_100k_s"]),
    ("rss_idle_mib", "RSS when ready, MiB", lambda r: r["rss_idle_mib"]),
    (
        "peak_rss_at_generator_end_mib",
        "peak RSS at generator end (VmHWM), MiB",
        lambda r: r.get("peak_rss_at_generator_end_mib"),
    ),
    ("peak_rss_after_load_mib", "peak RSS after settling, MiB", lambda r: r["peak_rss_after_load_mib"]),
    ("peak_rss_mib", "peak RSS incl. idle scrapes, MiB", lambda r: r["peak_rss_mib"]),
    ("redis_omem", "Redis output buffer peak, MiB", lambda r: r["subscription"].get("max_output_buffer_mib")),
    (
        "rmq_queue_messages",
        "RabbitMQ queue backlog peak, messages",
        lambda r: r["subscription"].get("max_queue_messages"),
    ),
    ("rmq_queue_mib", "RabbitMQ queue backlog peak, MiB", lambda r: r["subscription"].get("max_queue_mib")),
    (
        "rmq_samples",
        "RabbitMQ queue samples (n)",
        lambda r: r["subscription"].get("samples") if r.get("broker") == "rabbitmq" else None,
    ),
    (
        "rmq_ctl_cpu_s",
        "rabbitmqctl CPU s on the generator core",
        lambda r: r.get("rabbitmqctl_cpu_during_load_s"),
    ),
    ("subscription_dropped", "subscription dropped (0/1)", lambda r: r["subscription_dropped"]),
    ("series_task", "series: task label sets", lambda r: r.get("series", {}).get("task")),
    ("series_exception", "series: exception", lambda r: r.get("series", {}).get("exception")),
    ("series_worker", "series: worker", lambda r: r.get("series", {}).get("worker")),
    ("sample_lines", "sample lines served in /metrics", lambda r: r.get("sample_lines")),
    (
        "first_scrape_ms",
        "first scrape after the load, ms",
        lambda r: (
            ms(r["settle"]["first_polls_s"][0])
            if r["consumer"] == "exporter" and r["settle"]["first_polls_s"]
            else None
        ),
    ),
    ("cold_scrape_ms", "first (cold) idle scrape, text, ms", lambda r: (r.get("cold_scrape_ms") or {}).get("plain")),
    (
        "cold_prom_scrape_ms",
        "first (cold) idle scrape, OpenMetrics+gzip, ms",
        lambda r: (r.get("cold_scrape_ms") or {}).get("prom"),
    ),
    (
        "cold_protobuf_scrape_ms",
        "first (cold) idle scrape, protobuf+gzip, ms",
        lambda r: (r.get("cold_scrape_ms") or {}).get("protobuf"),
    ),
    ("idle_scrape_p50_ms", "idle scrape p50, ms", lambda r: (r.get("idle_scrape_ms") or {}).get("p50")),
    ("idle_scrape_p99_ms", "idle scrape p99, ms", lambda r: (r.get("idle_scrape_ms") or {}).get("p99")),
    (
        "prom_scrape_p50_ms",
        "idle scrape p50, OpenMetrics+gzip, ms",
        lambda r: (r.get("idle_scrape_prometheus_ms") or {}).get("p50"),
    ),
    (
        "prom_scrape_p99_ms",
        "idle scrape p99, OpenMetrics+gzip, ms",
        lambda r: (r.get("idle_scrape_prometheus_ms") or {}).get("p99"),
    ),
    (
        "protobuf_scrape_p50_ms",
        "idle scrape p50, protobuf+gzip, ms",
        lambda r: (r.get("idle_scrape_protobuf_ms") or {}).get("p50"),
    ),
    (
        "protobuf_scrape_p99_ms",
        "idle scrape p99, protobuf+gzip, ms",
        lambda r: (r.get("idle_scrape_protobuf_ms") or {}).get("p99"),
    ),
    ("series_text", "series stored from a text scrape", lambda r: r.get("series_text")),
    ("series_native", "series stored from a protobuf scrape (native histograms)", lambda r: r.get("series_native")),
    (
        "native_series_share",
        "native / text series",
        lambda r: round(r["series_native"] / r["series_text"], 3) if r.get("series_text") else None,
    ),
    ("load_scrape_p50_ms", "scrape under load p50, ms", lambda r: (r.get("load_scrape_ms") or {}).get("p50")),
    ("load_scrape_p99_ms", "scrape under load p99, ms", lambda r: (r.get("load_scrape_ms") or {}).get("p99")),
    ("load_scrapes", "scrapes under load (n)", lambda r: (r.get("load_scrape_ms") or {}).get("n")),
    ("checks_failed", "ground-truth checks failed", lambda r: r.get("checks_failed")),
]


def mmm(values: List[Optional[float]]) -> Optional[List[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return [min(vals), statistics.median(vals), max(vals)]


def summarize(runs: List[dict]) -> dict:
    out: Dict[str, Any] = {}
    for kind in ("exporter", "reference"):
        rs = [r for r in runs if r["consumer"] == kind and "error" not in r]
        if not rs:
            continue
        out[kind] = {key: mmm([get(r) for r in rs]) for key, _, get in FIGURES}
    ratios = []
    for rep in sorted({r["repeat"] for r in runs}):
        e = [r for r in runs if r["repeat"] == rep and r["consumer"] == "exporter" and "error" not in r]
        f = [r for r in runs if r["repeat"] == rep and r["consumer"] == "reference" and "error" not in r]
        if e and f and e[0]["cpu_per_100k_s"] and f[0]["cpu_per_100k_s"]:
            ratios.append(round(e[0]["cpu_per_100k_s"] / f[0]["cpu_per_100k_s"], 3))
    out["cpu_ratio_exporter_over_reference"] = mmm(ratios)
    out["cpu_ratio_per_repeat"] = ratios
    return out


def evaluate_targets(scen: Scenario, runs: List[dict]) -> List[dict]:
    """Each target is checked on the exporter's worst repeat."""
    rs = [r for r in runs if r["consumer"] == "exporter" and "error" not in r]
    getters = {key: get for key, _, get in FIGURES}
    out = []
    for key, op, bound in scen.targets:
        vals = [getters[key](r) for r in rs]
        if not vals or any(v is None for v in vals):
            out.append({"figure": key, "target": f"{op} {bound:g}", "worst": None, "pass": False})
            continue
        worst = max(vals)
        ok = {"==": worst == bound, "<": worst < bound, "<=": worst <= bound}[op]
        out.append({"figure": key, "target": f"{op} {bound:g}", "worst": worst, "pass": ok})
    return out


def fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return f"{int(v):,}"


def fmt_mmm(t: Optional[List[float]]) -> str:
    if t is None:
        return "-"
    lo, med, hi = t
    if lo == hi:
        return fmt(med)
    return f"{fmt(lo)} / {fmt(med)} / {fmt(hi)}"


def print_table(
    scen: Scenario, summary: dict, targets: List[dict], repeats: int, errors: List[dict], out=sys.stdout
) -> None:
    def p(*a: object) -> None:
        print(*a, file=out)

    p("")
    p(f"== {scen.name} [broker: {scen.broker}]: {scen.summary}")
    p(f"   {scen.describe()}; {repeats} repeat(s); cells: min / median / max (one value when all equal)")
    code = ", ".join(f"{c['git_head']} (sources {c['source_sha1']})" for c in summary.get("exporter_code", []))
    if code:
        p(f"   exporter code: {code}")
    kinds = [k for k in ("exporter", "reference") if k in summary]
    width = 46
    p(f"   {'figure':{width}} " + " ".join(f"{k:>30}" for k in kinds))
    for key, label, _ in FIGURES:
        cells = [summary[k].get(key) for k in kinds]
        if all(c is None for c in cells):
            continue
        p(f"   {label:{width}} " + " ".join(f"{fmt_mmm(c):>30}" for c in cells))
    ratio = summary.get("cpu_ratio_exporter_over_reference")
    if ratio:
        p(f"   {'CPU per event, exporter / reference':{width}} {fmt_mmm(ratio):>30}")
    for t in targets:
        p(f"   target {t['figure']} {t['target']}: worst {fmt(t['worst'])} -> {'PASS' if t['pass'] else 'FAIL'}")
    for e in errors:
        p(f"   ERROR in repeat {e['repeat']} ({e['consumer']}): {e['error']}")


def markdown(paths: List[str]) -> str:
    """Markdown tables (exporter | reference; median, [min–max]) from results JSON files."""
    out = []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        s = summarize(d["runs"])  # recomputed, so figures added since the run show too
        s["exporter_code"] = d["summary"].get("exporter_code", [])
        scen = Scenario(**{k: v for k, v in d["parameters"].items() if k in Scenario.__dataclass_fields__})
        code = ", ".join(c["git_head"] for c in s.get("exporter_code", []))
        out.append(f"### {d['scenario']}{' (quick)' if d['quick'] else ''} [{d.get('broker', 'redis')}]\n")
        out.append(
            f"{scen.describe()}; {d['repeats']} repeats; exporter at {code}; "
            f"`{os.path.basename(path)}`. Cells: median [min – max].\n"
        )
        kinds = [k for k in ("exporter", "reference") if k in s]
        out.append("| figure | " + " | ".join(kinds) + " |")
        out.append("|---|" + "---|" * len(kinds))

        def cell(t):
            if t is None:
                return "–"
            lo, med, hi = t
            return fmt(med) if lo == hi else f"{fmt(med)} [{fmt(lo)} – {fmt(hi)}]"

        for key, label, _ in FIGURES:
            cells = [s[k].get(key) for k in kinds]
            if all(c is None for c in cells):
                continue
            out.append(f"| {label} | " + " | ".join(cell(c) for c in cells) + " |")
        if s.get("cpu_ratio_exporter_over_reference"):
            out.append(
                f"| **CPU per event, exporter / reference** | {cell(s['cpu_ratio_exporter_over_reference'])} |"
                + " |" * (len(kinds) - 1)
            )
        for t in d["targets"]:
            out.append(
                f"\nTarget `{t['figure']} {t['target']}`: worst {fmt(t['worst'])} → "
                f"**{'PASS' if t['pass'] else 'FAIL'}**"
            )
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# machine info


def machine_info(args, brokers: List[str]) -> dict:
    from importlib.metadata import version

    import celery
    import kombu
    import redis as redis_py

    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        redis_version = subprocess.run([args.redis_server, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        redis_version = None
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", REPO, "status", "--porcelain", "--", "celery_exporter"], capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = None, None
    rabbitmq_version = None
    if "rabbitmq" in brokers:
        try:
            rabbitmq_version = subprocess.run(
                [args.rabbitmqctl, "-q", "version"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis_py.__version__,
        "prometheus_client": version("prometheus_client"),
        "exporter": version("celery-exporter"),
        "redis_server": redis_version,
        "rabbitmq_server": rabbitmq_version,
        "amqp_py": version("amqp"),
        "git_commit": commit,
        "package_dirty": dirty,
        "consumer_core": args.consumer_core,
        "generator_core": args.generator_core,
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="scenarios (groups: all, redis, rabbitmq):\n"
        + "\n".join(f"  {n:17} {SCENARIOS[n].summary}" for n in ORDER),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        "-s",
        action="append",
        choices=ORDER + list(GROUPS),
        help="scenario to run (repeatable); 'all' runs them all in order, 'redis' / 'rabbitmq' "
        "those on one broker (default: all)",
    )
    p.add_argument("--repeats", "-r", type=int, default=3, help="repeats per scenario (default 3)")
    p.add_argument("--quick", action="store_true", help="~10x shorter durations and counts: a smoke run")
    p.add_argument(
        "--consumers", default="exporter,reference", help="comma-separated, in run order (default: exporter,reference)"
    )
    p.add_argument(
        "--generators",
        type=int,
        default=1,
        help="generator processes (each gets 1/K of the rate, tasks and workers; default 1)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.005,
        help="generator: workers' task.multi buffer flush interval, s (default 0.005)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--consumer-core", type=int, default=0)
    p.add_argument(
        "--generator-core",
        type=int,
        default=1,
        help="core for the generator(s), redis-server and this runner (default 1)",
    )
    p.add_argument(
        "--exporter",
        default=os.path.join(os.path.dirname(sys.executable), "celery-exporter"),
        help="the exporter's console script (default: next to this Python)",
    )
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument(
        "--rabbitmq-url",
        default="amqp://guest:guest@127.0.0.1:5672",
        help="RabbitMQ to use for the rmq-* scenarios, without vhost: each run gets a fresh one "
        "(default: amqp://guest:guest@127.0.0.1:5672)",
    )
    p.add_argument(
        "--rabbitmqctl",
        default=shutil.which("rabbitmqctl") or "rabbitmqctl",
        help="rabbitmqctl of that (local) broker: vhosts, readiness, queue sampling",
    )
    p.add_argument(
        "--no-pin-rabbitmq",
        dest="pin_rabbitmq",
        action="store_false",
        help="leave RabbitMQ's beam.smp on every core (by default its threads are moved to the "
        "generator's core for the run, as redis-server is, and moved back after)",
    )
    p.add_argument(
        "--rabbitmq-sample-interval",
        type=float,
        default=1.0,
        help="seconds between rabbitmqctl list_queues samples during the load (each costs ~0.4 CPU s "
        "on the generator core; default 1)",
    )
    p.add_argument(
        "--py-spy",
        nargs="?",
        const=shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
        default=None,
        metavar="PATH",
        help="profile the exporter during the load with py-spy (raw stacks saved beside the results)",
    )
    p.add_argument("--poll-interval", type=float, default=0.1, help="count polling while settling, s")
    p.add_argument(
        "--settle-quiet", type=float, default=3.0, help="stop waiting once the count has not moved for this long, s"
    )
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-save", action="store_true", help="do not write the JSON results")
    p.add_argument("--keep-logs", action="store_true", help="keep the per-run logs (printed path)")
    p.add_argument(
        "--markdown", nargs="+", metavar="JSON", help="print Markdown tables from results files instead of running"
    )
    args = p.parse_args(argv)
    names = args.scenario or ["all"]
    wanted = {m for n in names for m in GROUPS.get(n, [n])}
    args.scenarios = [n for n in ORDER if n in wanted]
    args.consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    for c in args.consumers:
        if c not in ("exporter", "reference"):
            p.error(f"unknown consumer {c!r}")
    if os.cpu_count() and max(args.consumer_core, args.generator_core) >= os.cpu_count():
        p.error("core numbers beyond this machine's cores")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    # the runner (scrapers, pollers, parsing) stays off the consumer's core
    os.sched_setaffinity(0, {args.generator_core})
    if not os.path.exists(args.exporter):
        print(f"run.py: exporter not found at {args.exporter} (use --exporter)", file=sys.stderr)
        return 2
    if any(SCENARIOS[n].broker == "rabbitmq" for n in args.scenarios) and not shutil.which(args.rabbitmqctl):
        print(f"run.py: rabbitmqctl not found at {args.rabbitmqctl} (use --rabbitmqctl)", file=sys.stderr)
        return 2
    # on SIGTERM unwind like on Ctrl-C, so that every run's finally stops its processes and
    # deletes its RabbitMQ vhost
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.makedirs(args.results_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="celery-exporter-bench-")
    brokers = sorted({SCENARIOS[n].broker for n in args.scenarios})
    info = machine_info(args, brokers)
    print(
        f"# {info['cpu_model']}, {info['cores']} cores, Python {info['python']}, celery {info['celery']}, "
        f"kombu {info['kombu']}, redis-py {info['redis_py']}, {info['redis_server']}"
        + (f", RabbitMQ {info['rabbitmq_server']}, py-amqp {info['amqp_py']}" if "rabbitmq" in brokers else "")
    )
    print(
        f"# consumer on core {args.consumer_core}; generator, redis-server and runner on core "
        f"{args.generator_core}; load average at start {info['loadavg_at_start']}; logs in {workdir}"
    )
    pinned: Dict[int, set] = {}
    if "rabbitmq" in brokers:
        where = "not pinned (it runs on either core, its share of the consumer core shows as other processes')"
        if args.pin_rabbitmq:
            pinned, why = pin_rabbitmq(args.generator_core)
            where = f"pinned to core {args.generator_core} with the generator" if pinned else f"not pinned ({why})"
        info["rabbitmq_pinned_to_core"] = args.generator_core if pinned else None
        print(
            f"# RabbitMQ: the shared broker at {args.rabbitmq_url}, a fresh vhost per run; its beam.smp is "
            f"{where}; queue sampled with rabbitmqctl every {args.rabbitmq_sample_interval:g} s on core "
            f"{args.generator_core}"
        )
    if args.py_spy:
        print(
            "# py-spy samples the exporter during the load: its figures in this run are perturbed "
            "(slower, more lag); use them for the profile only"
        )
    try:
        return run_scenarios(args, info, workdir)
    finally:
        unpin(pinned)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


def pin_rabbitmq(core: int) -> Tuple[Dict[int, set], str]:
    """Move every thread of the local RabbitMQ (beam.smp) to `core`, so that the broker does not
    run on the consumer's core: on Redis the broker shares the generator's core too. Returns
    each thread's affinity before (for unpin), or {} and why not."""
    try:
        found = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
    except OSError as exc:
        return {}, f"pgrep: {exc}"
    if not pids:
        return {}, "no local beam.smp process"
    before: Dict[int, set] = {}
    try:
        for pid in pids:
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                try:
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {core})
                except ProcessLookupError:  # the thread ended meanwhile
                    before.pop(tid, None)
    except OSError as exc:  # e.g. another user's process
        unpin(before)
        return {}, f"{type(exc).__name__}: {exc}"
    return before, ""


def unpin(before: Dict[int, set]) -> None:
    for tid, cores in before.items():
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # ended meanwhile
            pass


def run_scenarios(args, info: dict, workdir: str) -> int:
    failed_targets = 0
    for name in args.scenarios:
        scen = SCENARIOS[name].scaled(args.quick)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        runs, errors = [], []
        for rep in range(1, args.repeats + 1):
            for kind in args.consumers:
                t0 = time.monotonic()
                try:
                    res = run_one(args, scen, kind, rep, workdir)
                    runs.append(res)
                    print(
                        f"  {name} [{scen.broker}] r{rep} {kind:9}: published {res['generator']['total_events']:,} "
                        f"({res['generator']['events_per_s']:,.0f}/s), counted {res['counted']:,}, "
                        f"lost {res['lost']}, lag {fmt(res['lag_s'])} s, CPU {fmt(res['cpu_per_100k_s'])} s/100k, "
                        f"peak RSS {fmt(res['peak_rss_mib'])} MiB, checks failed {res['checks_failed']} "
                        f"[{time.monotonic() - t0:.0f} s]",
                        flush=True,
                    )
                except Exception as exc:  # record and go on with the next run
                    err = {"consumer": kind, "repeat": rep, "error": f"{type(exc).__name__}: {exc}"}
                    errors.append(err)
                    print(f"  {name} r{rep} {kind}: ERROR {err['error']}", flush=True)
        versions = sorted(
            {(r["code"]["git_head"], r["code"]["source_sha1"]) for r in runs if r["consumer"] == "exporter"}
        )
        if len(versions) > 1:
            print(f"   WARNING: the exporter's code changed during this scenario: {versions}")
        summary = summarize(runs)
        summary["exporter_code"] = [{"git_head": g, "source_sha1": h} for g, h in versions]
        targets = evaluate_targets(scen, runs)
        failed_targets += sum(1 for t in targets if not t["pass"])
        print_table(scen, summary, targets, args.repeats, errors)
        if not args.no_save:
            suffix = ("-quick" if args.quick else "") + ("-pyspy" if args.py_spy else "")
            path = os.path.join(args.results_dir, f"{name}{suffix}-{stamp}.json")
            with open(path, "w") as f:
                json.dump(
                    {
                        "scenario": name,
                        "broker": scen.broker,
                        "quick": args.quick,
                        "repeats": args.repeats,
                        "profiled_with_py_spy": bool(args.py_spy),
                        "parameters": dataclasses.asdict(scen),
                        "generator_flush_interval": args.flush_interval,
                        "generators": args.generators,
                        "machine": info,
                        "loadavg_at_end": os.getloadavg(),
                        "summary": summary,
                        "targets": targets,
                        "errors": errors,
                        "runs": runs,
                    },
                    f,
                    indent=1,
                )
            print(f"   results: {os.path.relpath(path, os.getcwd())}")
        sys.stdout.flush()
    return 1 if failed_targets else 0


if __name__ == "__main__":
    sys.exit(main())
