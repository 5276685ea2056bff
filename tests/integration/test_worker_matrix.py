"""Workers of every Celery release and pool our users run, against ground truth.

Each cell runs real workers of one Celery release (5.3 to 5.7, each installed from the
package index into an environment of its own, cached in .ci/cache/worker-venvs between runs)
with one pool (prefork on every release; threads, solo and gevent on the newest), while the
exporter under test runs from the tests' own environment. The same small workload in every
cell: successes on two queues, failures, a task retried twice, a countdown, and on prefork
and gevent a task killed by its hard time limit. Every task counter by name and queue must equal what the
tasks recorded, the worker must show up with its release, and once SIGKILLed it must go down.

Known differences between releases and pools, pinned here:
- a hard time limit: a Celery 5.7 prefork worker sends task-failed twice for the killed task,
  earlier releases and the gevent pool once; the exporter counts it once and drops the
  second as a duplicate.
- task events in batches: prefork, threads and solo workers send them as task.multi lists,
  gevent workers one message per event (seen by a subscriber of the test's own).
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Tuple

import pytest
import redis

from .rig import WORKER_TIMEOUT, Metrics, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".ci" / "cache" / "worker-venvs"
NEWEST = "5.7"
RELEASES = ("5.3", "5.4", "5.5", "5.6", NEWEST)
CELLS = [(release, "prefork") for release in RELEASES] + [(NEWEST, "threads"), (NEWEST, "solo"), (NEWEST, "gevent")]
Cell = Tuple[str, str]

STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
# pools whose workers send task events as task.multi batches: Celery buffers them only when
# the worker runs kombu's event loop (the hub), which green pools such as gevent do not
BATCHING = {"prefork", "threads", "solo"}


class EventMessages:
    """Counts, by routing key, the event messages one worker publishes on Redis (a plain
    redis-py subscriber of the test's own, beside the exporter)."""

    def __init__(self, broker_url: str, hostname: str):
        db = broker_url.rsplit("/", 1)[1]
        self._client = redis.Redis.from_url(broker_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(f"/{db}.celeryev/*")
        self._hostname = hostname
        self.kinds: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            if (envelope.get("headers") or {}).get("hostname") == self._hostname:
                kind = message["channel"].decode().rsplit("celeryev/", 1)[1]
                self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def stop(self) -> Dict[str, int]:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()
        return self.kinds


def _environment(release: str, gevent: bool) -> Path:
    """An environment with the newest celery[redis] of `release` (and gevent), made once and
    kept while its requirements stay the same. Returns its `celery` script."""
    path = CACHE / (f"celery-{release}" + ("-gevent" if gevent else ""))
    # kombu of the same release, as users run it (celery 5.3 alone lets pip take kombu 5.7,
    # whose Redis transport refuses the redis-py that celery 5.3 pins); packaging: kombu
    # 5.3's Redis transport imports it without requiring it
    requirements = [f"celery[redis]=={release}.*", f"kombu[redis]=={release}.*", "packaging"]
    requirements += ["gevent"] if gevent else []
    marker = path / "requirements.txt"
    celery_bin = path / "bin" / "celery"
    if marker.exists() and marker.read_text() == "\n".join(requirements) and celery_bin.exists():
        return celery_bin
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    install = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run([*install, *requirements], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"pip install {requirements} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    marker.write_text("\n".join(requirements))
    return celery_bin


class Environments:
    """Every cell's environment, all made at once on first use (pip runs in parallel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: Dict[Tuple[str, bool], "concurrent.futures.Future[Path]"] = {}

    def start_all(self) -> None:
        with self._lock:
            if self._made:
                return
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
            for release, kind in CELLS:
                key = (release, kind == "gevent")
                if key not in self._made:
                    self._made[key] = pool.submit(_environment, *key)
            pool.shutdown(wait=False)

    def celery(self, cell: Cell) -> str:
        self.start_all()
        release, kind = cell
        return str(self._made[(release, kind == "gevent")].result(timeout=900))


@pytest.fixture(scope="session")
def environments() -> Environments:
    return Environments()


def version_of(celery_bin: str) -> str:
    out = subprocess.run([celery_bin, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()[0]


@pytest.mark.parametrize("cell", CELLS, ids=[f"celery{r}-{p}" for r, p in CELLS])
def test_a_worker_release_and_pool_counted_exactly(make_rig, environments, cell):
    release, pool = cell
    celery_bin = environments.celery(cell)
    version = version_of(celery_bin)
    assert version.startswith(release + "."), version

    rig = make_rig("redis")
    exporter = rig.start_exporter("--no-inspect")
    worker = rig.start_worker(
        queues=("celery", "q2"), concurrency=2, extra=("-P", pool), exporter=exporter, celery_bin=celery_bin
    )
    rig.prime(exporter)
    batches = EventMessages(rig.broker_url, worker.hostname)

    for i in range(3):
        rig.send("it.succeed", [i])
    for i in range(2):
        rig.send("it.succeed", [i], queue="q2")
    for _ in range(2):
        rig.send("it.fail")
    rig.send("it.retry")
    rig.send("it.later", countdown=1)
    time_limit = pool in ("prefork", "gevent")  # threads and solo cannot enforce one
    if time_limit:
        rig.send("it.sleep", [30], time_limit=1)
    rig.truth.wait(
        {
            ("it.succeed", "celery", "succeeded"): 3,
            ("it.succeed", "q2", "succeeded"): 2,
            ("it.fail", "celery", "failed"): 2,
            ("it.retry", "celery", "succeeded"): 1,
            ("it.later", "celery", "succeeded"): 1,
            **({("it.sleep", "celery", "started"): 1} if time_limit else {}),
        }
    )

    expected: Dict[Tuple[str, str], Dict[str, int]] = {
        ("it.succeed", "celery"): dict(sent=3, received=3, started=3, succeeded=3),
        ("it.succeed", "q2"): dict(sent=2, received=2, started=2, succeeded=2),
        ("it.fail", "celery"): dict(sent=2, received=2, started=2, failed=2),
        ("it.retry", "celery"): dict(sent=3, received=3, started=3, retried=2, succeeded=1),
        ("it.later", "celery"): dict(sent=1, received=1, started=1, succeeded=1),
    }
    if time_limit:
        expected[("it.sleep", "celery")] = dict(sent=1, received=1, started=1, failed=1)
    # what the tasks themselves recorded agrees with the plan (else the plan is wrong)
    for (name, queue), counts in expected.items():
        for outcome in ("started", "succeeded", "retried"):
            assert rig.truth.get(name, queue, outcome) == counts.get(outcome, 0), (name, queue, outcome)

    def mismatches(m: Metrics) -> list:
        out = []
        for (name, queue), counts in expected.items():
            for state in STATES:
                got = m.get_value(f"celery_task_{state}_total", name=name, queue_name=queue)
                if got != counts.get(state, 0):
                    out.append(f"{name} {queue} {state}: expected {counts.get(state, 0)}, got {got}")
        return out

    m = exporter.wait_for(
        lambda m: not mismatches(m),
        30,
        what=f"the counters of a Celery {version} worker ({pool} pool)",
        contains="celery_task_",
        explain=lambda m: "\n".join(mismatches(m)),
    )
    exceptions = {
        (dict(labels)["name"], dict(labels)["exception"]): v
        for labels, v in m.select("celery_task_exceptions_total").items()
    }
    assert exceptions == {
        ("it.fail", "ValueError"): 2,
        ("it.retry", "KeyError"): 2,
        **({("it.sleep", "TimeLimitExceeded"): 1} if time_limit else {}),
    }
    # the hard time limit's second task-failed (Celery 5.7, prefork) is a duplicate, not a count
    duplicates = m.get_value("celery_exporter_events_dropped_total", reason="duplicate")
    assert duplicates == (1 if pool == "prefork" and release == NEWEST else 0), duplicates
    assert m.get_value("celery_exporter_events_dropped_total", reason="bad_field") == 0
    assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1
    # every pool's worker heartbeats at Celery's default 2 s, gevent's from a greenlet too
    assert m.get_value("celery_worker_heartbeat_interval_seconds", hostname=worker.hostname) == 2.0
    info = m.label_values("celery_worker_info", "sw_ver", hostname=worker.hostname)
    assert info == {version}, info

    # how the worker sent its task events: prefork, threads and solo batch them (task.multi),
    # gevent sends each on its own; the exporter counts both alike
    kinds = batches.stop()
    assert kinds.get("task.multi", 0) > 0 if pool in BATCHING else kinds.get("task.multi", 0) == 0, kinds

    # a worker killed without a goodbye goes down after the worker timeout
    worker.proc.signal_group(signal.SIGKILL)
    exporter.wait_for(
        lambda m: m.get_value("celery_worker_up", hostname=worker.hostname) == 0,
        WORKER_TIMEOUT + 10,
        what=f"the SIGKILLed Celery {version} worker to be down",
        contains=worker.hostname,
    )
    wait_for(lambda: not worker.proc.running, 10, what="the killed worker's processes to end")
