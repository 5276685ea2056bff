"""Integration rig: the real exporter and real Celery workers as subprocesses.

Everything here talks to 127.0.0.1 only. Waits poll with a deadline (wait_for), never
sleep a fixed time. Every subprocess runs in its own session (process group), writes its
stdout and stderr to a log file under the test's tmp_path, and is stopped by the rig
(SIGTERM to its main process, SIGKILL to its whole group after a deadline). The conftest
hook attaches the logs of every rig still open to the report of a failed test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
REDIS_PORT = 6379
AMQP_PORT = 5672
BIN = Path(sys.executable).parent


def executable(name: str) -> str:
    """A console script of the venv running the tests (celery, celery-exporter)."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


# -- waiting ------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    describe: Optional[Callable[[], str]] = None,
):
    """Poll `predicate` until it returns something truthy (which is returned), or raise
    WaitTimeout after `timeout` seconds with `describe()` (e.g. the last /metrics values).

    An AssertionError from the predicate fails at once: predicates use it for what must
    hold on every poll. Other exceptions (connection refused while a process starts...)
    count as "not yet" and are shown on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last_error = None
        except AssertionError:
            raise
        except Exception as exc:  # e.g. connection refused while a process starts
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"\nlast error: {type(last_error).__name__}: {last_error}" if last_error else ""
            if describe is not None:
                try:
                    detail += "\n" + describe()
                except Exception as exc:
                    detail += f"\n(could not describe state: {exc!r})"
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


# -- /metrics ---------------------------------------------------------------------------

SampleKey = Tuple[str, FrozenSet[Tuple[str, str]]]


class Metrics(Dict[SampleKey, float]):
    """{(sample name, frozenset(labels.items())): value} of one scrape. Exporter.metrics()
    also sets `before` and `after`: time.time() around the request."""

    before: float = 0.0
    after: float = 0.0

    def __repr__(self) -> str:  # keeps assertion messages short
        return f"<Metrics: {len(self)} samples>"

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def get_value(self, metric: str, /, **labels: str) -> Optional[float]:
        """The sample with exactly these labels, or None when absent."""
        return self.get((metric, frozenset(labels.items())))

    def select(self, metric: str, /, **labels: str) -> Dict[FrozenSet[Tuple[str, str]], float]:
        """All samples of `metric` whose labels include `labels`."""
        want = set(labels.items())
        return {lbl: v for (n, lbl), v in self.items() if n == metric and want <= lbl}

    def bucket(self, metric: str, bound: float, /, **labels: str) -> Optional[float]:
        """Cumulative count of histogram `metric` (base name) at le=bound, whatever the
        spelling of the bound ("60", "60.0", "+Inf")."""
        for lbl, value in self.select(f"{metric}_bucket", **labels).items():
            if float(dict(lbl)["le"]) == bound:
                return value
        return None

    def label_values(self, metric: str, label: str, /, **labels: str) -> set:
        return {dict(lbl).get(label) for lbl in self.select(metric, **labels)}

    def render(self, prefixes: Sequence[str] = ("celery_",), contains: str = "") -> str:
        lines = []
        for (name, labels), value in sorted(self.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
            if not name.startswith(tuple(prefixes)) or name.endswith("_bucket"):
                continue
            text = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "} " + repr(value)
            if contains in text:
                lines.append(text)
        return "\n".join(lines)


def http_get(url: str, headers: Optional[Dict[str, str]] = None, timeout: float = 5.0):
    """(status, headers, body text); HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def refusing_port() -> socket.socket:
    """A socket bound to a port of 127.0.0.1 and never listening: connections to its port
    are refused for as long as it stays open, and no other process (an exporter picking a
    free port for itself) can take that port meanwhile. Close it after the test."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s


# -- processes --------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group, output to a log file."""

    def __init__(self, title: str, argv: List[str], log_path: Path, env: Dict[str, str], cwd: Optional[Path] = None):
        self.title = title
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(f"$ {' '.join(argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.terminated = False

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the main process only."""
        if self.running:
            os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group (pool children too)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM to the main process, once (a second one makes the exporter exit 1)."""
        if self.running and not self.terminated:
            self.terminated = True
            try:
                self.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL to the group after `timeout`; returns the exit code."""
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(5)
        self.signal_group(signal.SIGKILL)  # leftovers of the group, if any
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def log_text(self, limit: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        text = data.decode(errors="replace")
        return text if len(text) <= limit else "...\n" + text[-limit:]


def stop_all(procs: Iterable[Proc], timeout: float = 10.0) -> None:
    """Stop processes in parallel: SIGTERM to all first, then wait for each."""
    procs = [p for p in procs]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.stop(max(0.1, deadline - time.monotonic()))


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment for a subprocess, without settings that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "IT_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# -- the exporter -----------------------------------------------------------------------

EXPORTER_TIMINGS = ("--worker-timeout", "4s", "--worker-ttl", "60s")
WORKER_TIMEOUT = 4.0


class Exporter:
    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.port = port
        self.base = f"http://{HOST}:{port}"

    def get(self, path: str, headers: Optional[Dict[str, str]] = None):
        return http_get(self.base + path, headers)

    def metrics(self) -> Metrics:
        before = time.time()
        status, _, body = self.get("/metrics")
        after = time.time()
        if status != 200:
            raise AssertionError(f"/metrics answered {status}: {body[:500]}")
        m = Metrics.parse(body)
        m.before, m.after = before, after
        return m

    def wait_for(
        self,
        predicate: Callable[[Metrics], object],
        timeout: float,
        what: str,
        contains: str = "",
        interval: float = 0.1,
        explain: Optional[Callable[[Metrics], str]] = None,
    ) -> Metrics:
        """Scrape until predicate(metrics) is truthy; returns those metrics. On timeout
        the error shows explain(last metrics), if given, and the last scrape's celery_*
        samples (filtered by `contains`)."""
        last: Dict[str, Metrics] = {}

        def check():
            if not self.proc.running:
                raise AssertionError(f"the exporter exited with code {self.proc.popen.returncode}")
            m = self.metrics()
            last["m"] = m
            return m if predicate(m) else None

        def describe():
            if "m" not in last:
                return "(no successful scrape)"
            text = f"{explain(last['m'])}\n" if explain else ""
            return text + "last /metrics values:\n" + last["m"].render(contains=contains)

        return wait_for(check, timeout, interval, what, describe)


# -- Redis DBs, vhosts, ground truth ----------------------------------------------------

MARKER = "celery-exporter-integration-tests"
STALE_MARKER = 1800.0  # a claim older than this is left over from a run that was killed


class RedisDbs:
    """Hands out Redis DB numbers 1..15 of the shared server, one test at a time each (a DB
    comes back after its test, emptied: release()). A DB is taken only when empty (claimed
    atomically with SET NX of a marker key, so concurrent sessions never share one) or when it holds a stale marker of a
    killed run; DBs other people use on the shared server are left alone."""

    def __init__(self, port: int = REDIS_PORT):
        self.port = port
        self.used: set = set()

    def claim(self) -> int:
        candidates = [n for n in range(1, 16) if n not in self.used]
        random.shuffle(candidates)
        stamp = f"{time.time():.0f} pid {os.getpid()}"
        for n in candidates:
            client = redis.Redis(host=HOST, port=self.port, db=n, decode_responses=True)
            try:
                if client.dbsize() == 0:
                    claimed = client.set(MARKER, stamp, nx=True)
                else:
                    marker = client.get(MARKER)
                    claimed = bool(marker) and time.time() - float(marker.split()[0]) > STALE_MARKER
                    if claimed:
                        client.flushdb()
                        client.set(MARKER, stamp)
                if claimed:
                    self.used.add(n)
                    return n
            finally:
                client.close()
        raise RuntimeError(
            f"no free Redis DB left among 1..15 (this session used {sorted(self.used)}; the others are not empty)"
        )

    def flush(self, n: int) -> None:
        client = redis.Redis(host=HOST, port=self.port, db=n)
        try:
            client.flushdb()
        finally:
            client.close()

    def release(self, n: int) -> None:
        """A test is done with DB n (its processes are stopped): empty it and hand it out again.
        Events cannot leak between tests through it: kombu's PUB/SUB topics carry the DB number,
        and nothing of the old test is left running."""
        self.flush(n)
        self.used.discard(n)


def rabbitmqctl(*args: str) -> None:
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): {result.stdout} {result.stderr}"
        )


class Truth:
    """What the tasks recorded: INCR <prefix>:<task>:<queue>:<outcome> (it_worker_app)."""

    def __init__(self, db: int, prefix: str):
        self.db = db
        self.prefix = prefix
        self.url = f"redis://{HOST}:{REDIS_PORT}/{db}"
        self.client = redis.Redis(host=HOST, port=REDIS_PORT, db=db, decode_responses=True)

    def get(self, task: str, queue: str, outcome: str) -> int:
        return int(self.client.get(f"{self.prefix}:{task}:{queue}:{outcome}") or 0)

    def value(self, key: str) -> Optional[str]:
        return self.client.get(f"{self.prefix}:{key}")

    def starts(self, task: str, queue: str) -> List[float]:
        """Real start times (epoch seconds) that it.hold / it.hold_late recorded."""
        return [float(v) for v in self.client.lrange(f"{self.prefix}:starts:{task}:{queue}", 0, -1)]

    def snapshot(self) -> Dict[str, int]:
        out = {}
        for key in self.client.scan_iter(f"{self.prefix}:*"):
            if self.client.type(key) != "string":  # the start-time lists of it.hold
                continue
            value = self.client.get(key)
            out[key[len(self.prefix) + 1 :]] = int(value) if value and value.lstrip("-").isdigit() else value
        return out

    def wait(self, expected: Dict[Tuple[str, str, str], int], timeout: float = 30.0) -> None:
        """Wait until the tasks recorded exactly these counts."""
        wait_for(
            lambda: all(self.get(*k) == v for k, v in expected.items()),
            timeout,
            what=f"the tasks to record {expected}",
            describe=lambda: f"ground truth: {self.snapshot()}",
        )

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)
        self.client.close()


# -- one test's world -------------------------------------------------------------------


class Worker:
    def __init__(self, proc: Proc, hostname: str, queues: Sequence[str]):
        self.proc = proc
        self.hostname = hostname
        self.queues = tuple(queues)


class Rig:
    """One test's broker namespace, exporter, workers, producer and ground truth.

    kind: "redis" (a DB of the shared Redis), "rabbitmq" (a fresh vhost), or a broker URL
    owned by the caller (e.g. a private redis-server)."""

    def __init__(self, kind: str, tmp: Path, dbs: RedisDbs, truth_db: int):
        self.kind = kind
        self.tmp = tmp
        self.dbs = dbs
        self.id = uuid.uuid4().hex[:10]
        self.procs: List[Proc] = []
        self.exporters: List[Exporter] = []
        self.workers: List[Worker] = []
        self._producer: Optional[Celery] = None
        # broker_transport_options of the producer and the workers (e.g. Sentinel's master_name)
        self.transport_options: Dict[str, object] = {}
        self.sent: Dict[Tuple[str, str], int] = {}
        self._cleanups: List[Callable[[], None]] = []
        self.truth = Truth(truth_db, f"it:{self.id}")
        self._cleanups.append(self.truth.cleanup)
        if kind == "redis":
            db = dbs.claim()
            self.broker_url = f"redis://{HOST}:{REDIS_PORT}/{db}"
            self._cleanups.append(lambda: dbs.release(db))
        elif kind == "rabbitmq":
            vhost = f"it-{self.id}"
            rabbitmqctl("add_vhost", vhost)
            self._cleanups.append(lambda: rabbitmqctl("delete_vhost", vhost))
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            self.broker_url = f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{vhost}"
        else:
            self.broker_url = kind

    # -- files for the failure report --

    @property
    def log_files(self) -> List[Tuple[str, Proc]]:
        return [(p.title, p) for p in self.procs]

    def _log_path(self, title: str) -> Path:
        return self.tmp / f"{title}.log"

    # -- processes --

    def start_exporter(
        self,
        *extra: str,
        env: Optional[Dict[str, str]] = None,
        broker_url: Optional[str] = None,
        wait_ready: bool = True,
        short_timings: bool = True,
    ) -> Exporter:
        """`celery-exporter` on a free port of 127.0.0.1, with short worker timings unless
        short_timings=False (then with the defaults a user gets). Retries on another port if
        the chosen one was taken in between."""
        for attempt in range(3):
            port = free_port()
            argv = [
                executable("celery-exporter"),
                "--broker-url",
                broker_url or self.broker_url,
                "--listen-address",
                HOST,
                "--port",
                str(port),
                *(EXPORTER_TIMINGS if short_timings else ()),
                "--log-level",
                "DEBUG",
                *extra,
            ]
            title = f"exporter-{len(self.exporters) + 1}"
            proc = Proc(title, argv, self._log_path(title), clean_env(TZ="UTC", **(env or {})))
            self.procs.append(proc)
            exporter = Exporter(proc, port)

            # (default arguments bind this attempt's proc and exporter)
            def answering(proc: Proc = proc, exporter: Exporter = exporter) -> object:
                if not proc.running:
                    return "exited"
                status, _, _ = exporter.get("/-/healthy")
                return status == 200

            state = wait_for(
                answering, 20, what=f"{title} to serve /-/healthy", describe=lambda proc=proc: proc.log_text(4000)
            )
            if state == "exited":
                if "cannot listen" in proc.log_text() and attempt < 2:
                    continue
                raise AssertionError(f"{title} exited with {proc.popen.returncode}:\n{proc.log_text(4000)}")
            self.exporters.append(exporter)
            if wait_ready:
                wait_for(
                    lambda exporter=exporter: exporter.get("/-/ready")[0] == 200,
                    20,
                    what=f"{title} to connect to the broker (/-/ready 200)",
                    describe=lambda proc=proc: proc.log_text(4000),
                )
            return exporter
        raise AssertionError("could not start the exporter")  # pragma: no cover

    def start_worker(
        self,
        queues: Sequence[str] = ("celery",),
        concurrency: int = 1,
        env: Optional[Dict[str, str]] = None,
        extra: Sequence[str] = (),
        exporter: Optional[Exporter] = None,
        broker_url: Optional[str] = None,
        hostname: Optional[str] = None,
        celery_bin: Optional[str] = None,
        task_events: bool = True,
    ) -> Worker:
        """`celery worker -E` with a unique node name (or `hostname`, to restart a worker
        under its old name). With `exporter`, waits until the exporter reports it up (its
        heartbeats arrive). `celery_bin`: another environment's `celery` (another release).
        task_events=False: without -E (heartbeats only)."""
        hostname = hostname or f"w-{uuid.uuid4().hex[:12]}@host"
        argv = [
            celery_bin or executable("celery"),
            "-A",
            "it_worker_app",
            "worker",
            *(["-E"] if task_events else []),
            "-n",
            hostname,
            "-c",
            str(concurrency),
            "-Q",
            ",".join(queues),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            *extra,
        ]
        title = f"worker-{len(self.workers) + 1}"
        worker_env = clean_env(
            IT_BROKER_URL=broker_url or self.broker_url,
            IT_TRUTH_URL=self.truth.url,
            IT_TRUTH_PREFIX=self.truth.prefix,
            PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        if self.transport_options:
            worker_env["IT_TRANSPORT_OPTIONS"] = json.dumps(self.transport_options)
        worker_env.update(env or {})
        proc = Proc(title, argv, self._log_path(title), worker_env, cwd=HERE)
        self.procs.append(proc)
        worker = Worker(proc, hostname, queues)
        self.workers.append(worker)
        if exporter is not None:
            exporter.wait_for(
                lambda m: proc.running and m.get_value("celery_worker_up", hostname=hostname) == 1.0,
                30,
                what=f"{title} ({hostname}) to show up in /metrics",
                contains=hostname,
            )
            if not proc.running:
                raise AssertionError(f"{title} exited:\n{proc.log_text(4000)}")
        return worker

    # -- producing tasks --

    @property
    def producer(self) -> Celery:
        if self._producer is None:
            app = Celery(f"it-producer-{self.id}", broker=self.broker_url, set_as_current=False)
            app.conf.update(
                task_send_sent_event=True,
                broker_connection_retry_on_startup=True,
                task_ignore_result=True,
                broker_transport_options=dict(self.transport_options),
            )
            self._producer = app
        return self._producer

    def send(self, name: str, args: Sequence = (), queue: str = "celery", **options):
        result = self.producer.send_task(name, args=list(args), queue=queue, **options)
        self.sent[(name, queue)] = self.sent.get((name, queue), 0) + 1
        return result

    def prime(self, exporter: Exporter) -> None:
        """Run one it.prime task and wait until the exporter counted it, so it has seen a
        task-sent before the test's own tasks. Until the first task-sent, the exporter
        labels a task by the fallback queue when its task-received comes first, which
        happens (see test_first_task_takes_the_queue_of_its_late_task_sent)."""
        self.send("it.prime")
        self.truth.wait({("it.prime", "celery", "succeeded"): 1})
        exporter.wait_for(
            lambda m: (
                (m.get_value("celery_exporter_events_total", type="task-sent") or 0) >= 1
                and sum(m.select("celery_task_succeeded_total", name="it.prime").values()) == 1
            ),
            15,
            what="the primer task to be counted",
            contains="it.prime",
        )

    # -- teardown --

    def close(self) -> None:
        errors = []
        try:
            stop_all(self.procs)
        except Exception as exc:  # keep cleaning up
            errors.append(exc)
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception as exc:
                errors.append(exc)
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class RedisServer:
    """A private redis-server on a free port, for tests that stop and restart it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.proc: Optional[Proc] = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    title_prefix = "redis-server"

    def listen_args(self) -> List[str]:
        return ["--port", str(self.port)]

    def client_args(self) -> Dict[str, object]:
        return {}

    def start(self) -> Proc:
        self.starts += 1
        title = f"{self.title_prefix}-{self.starts}"
        argv = [
            shutil.which("redis-server") or "redis-server",
            *self.listen_args(),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.tmp),
        ]
        self.proc = Proc(title, argv, self.tmp / f"{title}.log", clean_env())
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5, **self.client_args())
        try:
            wait_for(
                lambda: client.ping(),
                10,
                what=f"{title} on port {self.port} to answer PING",
                describe=lambda: self.proc.log_text(2000),
            )
        finally:
            client.close()
        return self.proc

    def stop(self) -> int:
        assert self.proc is not None
        code = self.proc.stop(10)
        return code


def _openssl(tmp: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise AssertionError("openssl not found (Debian package openssl; .ci/run installs it)")
    subprocess.run([openssl, *args], cwd=tmp, check=True, capture_output=True, timeout=60)


def _issue(tmp: Path, name: str, subject: str, extensions: str) -> Dict[str, Path]:
    """`name`.crt and `name`.key, for `subject` with `extensions` (openssl's extfile lines),
    issued by the CA of make_certs in `tmp`."""
    key, csr = f"{name}.key", f"{name}.csr"
    _openssl(tmp, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", subject)
    (tmp / f"{name}.ext").write_text(extensions)
    _openssl(
        tmp,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
    )
    return {f"{name}.crt": tmp / f"{name}.crt", f"{name}.key": tmp / f"{name}.key"}


def make_certs(tmp: Path, client: bool = False) -> Dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and, with client=True, a client
    certificate (SANs DNS:prometheus and email:scraper@example.org), made by the openssl
    command line. Returns their paths by name."""
    _openssl(
        tmp,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=celery-exporter-it-ca",
    )
    paths = {"ca.crt": tmp / "ca.crt", "ca.key": tmp / "ca.key"}
    paths.update(_issue(tmp, "server", "/CN=127.0.0.1", f"subjectAltName=IP:{HOST}\n"))
    if client:
        paths.update(make_client_cert(tmp, "client", "DNS:prometheus,email:scraper@example.org"))
    return paths


def make_client_cert(tmp: Path, name: str, sans: str) -> Dict[str, Path]:
    """A client certificate `name`.crt/.key with the subject alternative names `sans`
    (openssl's form: DNS:a,IP:1.2.3.4), issued by make_certs' CA in `tmp`."""
    return _issue(tmp, name, f"/CN={name}", f"extendedKeyUsage=clientAuth\nsubjectAltName={sans}\n")


class TlsRedisServer(RedisServer):
    """A private redis-server that speaks only TLS, with certificates from make_certs()."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        certs = make_certs(tmp)
        self.ca, self.cert, self.key = certs["ca.crt"], certs["server.crt"], certs["server.key"]

    title_prefix = "redis-server-tls"

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0"

    def listen_args(self) -> List[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
        ]

    def client_args(self) -> Dict[str, object]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


class RedisSentinel:
    """A Sentinel on a free port monitoring a private RedisServer as `mymaster`."""

    MASTER = "mymaster"

    def __init__(self, tmp: Path, master: RedisServer):
        self.tmp = tmp
        self.master = master
        self.port = free_port()
        self.proc: Optional[Proc] = None

    @property
    def url(self) -> str:
        return f"sentinel://{HOST}:{self.port}/0"

    def start(self) -> Proc:
        conf = self.tmp / "sentinel.conf"  # Sentinel rewrites its config file: it must be writable
        conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.tmp}\n"
            f"sentinel monitor {self.MASTER} {HOST} {self.master.port} 1\n"
        )
        argv = [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
        self.proc = Proc("redis-sentinel", argv, self.tmp / "redis-sentinel.log", clean_env())
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5, decode_responses=True)
        try:
            wait_for(
                lambda: client.execute_command("SENTINEL", "get-master-addr-by-name", self.MASTER),
                10,
                what=f"the sentinel on port {self.port} to know {self.MASTER}",
                describe=lambda: self.proc.log_text(2000),
            )
        finally:
            client.close()
        return self.proc


BROKERS = ["redis", "rabbitmq"]


# Rig factories not closed yet: their process logs go into the report of a failed test
# (also when a fixture fails during setup, before it is in item.funcargs).
ACTIVE: List["RigFactory"] = []


class RigFactory:
    """make_rig(kind) -> Rig; every rig is closed after the test (or the module)."""

    def __init__(self, tmp: Path, dbs: RedisDbs, truth_db: int):
        self.tmp = tmp
        self.dbs = dbs
        self.truth_db = truth_db
        self.rigs: List[Rig] = []
        ACTIVE.append(self)

    def __call__(self, kind: str) -> Rig:
        tmp = self.tmp / f"rig{len(self.rigs) + 1}"
        tmp.mkdir()
        rig = Rig(kind, tmp, self.dbs, self.truth_db)
        self.rigs.append(rig)
        return rig

    @property
    def log_files(self):
        return [item for rig in self.rigs for item in rig.log_files]

    def close(self) -> None:
        if self in ACTIVE:
            ACTIVE.remove(self)
        errors = []
        for rig in self.rigs:
            try:
                rig.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
