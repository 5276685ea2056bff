"""Continuity across an exporter restart and a reconnect of its own, with real prefork
workers: tasks that started before the exporter listened are learned from `inspect active`
(running, with their real start), counted as interrupted when their worker is SIGKILLed,
and counted once when they end by their own events; runs whose end was lost in an outage
end at the reconnect."""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from typing import List
from urllib.parse import urlsplit, urlunsplit

import pytest

from .rig import BROKERS, HOST, WORKER_TIMEOUT, Exporter, Metrics, Rig, wait_for
from .test_running import EFFECTIVE_TIMEOUT, interrupted, oldest, running, stays

pytestmark = pytest.mark.integration

INSPECT_INTERVAL = 30.0  # the default --inspect-interval: "within one inspect cycle"


def counter(m: Metrics, state: str, task: str, queue: str):
    return m.get_value(f"celery_task_{state}_total", name=task, queue_name=queue)


def restart(rig: Rig, old: Exporter) -> Exporter:
    """SIGKILL the exporter (it says nothing on its way out) and start another."""
    old.proc.signal(signal.SIGKILL)
    assert old.proc.popen.wait(5) == -signal.SIGKILL
    return rig.start_exporter()


def learned_line(exporter: Exporter) -> str:
    """The one INFO line the learning at start logs; the status page says the same."""
    lines = [line for line in exporter.proc.log_text().splitlines() if "running tasks from inspect active" in line]
    assert len(lines) == 1, lines
    assert " INFO " in lines[0], lines[0]
    summary = lines[0].split(": ", 1)[1]
    status, _, page = exporter.get("/")
    assert status == 200 and summary in page, summary
    return lines[0]


@pytest.mark.parametrize("broker", BROKERS)
def test_tasks_running_across_a_restart_are_learned_and_interrupted_once(make_rig, broker):
    rig: Rig = make_rig(broker)
    first = rig.start_exporter()  # --worker-timeout 4s (effective 6 s with 2 s heartbeats)
    victim = rig.start_worker(queues=("hold",), concurrency=4, exporter=first)
    survivor = rig.start_worker(queues=("celery", "survivor"), concurrency=2, exporter=first)
    rig.prime(first)
    for _ in range(4):
        rig.send("it.hold", [60], queue="hold")
    for _ in range(2):
        rig.send("it.hold", [25], queue="survivor")
    rig.truth.wait({("it.hold", "hold", "started"): 4, ("it.hold", "survivor", "started"): 2})

    # 1. A new exporter knows within one inspect cycle what ran before it listened.
    second = restart(rig, first)
    ready_at = time.monotonic()
    m = second.wait_for(
        lambda m: running(m, "it.hold", "hold") == 4 and running(m, "it.hold", "survivor") == 2,
        INSPECT_INTERVAL,
        what="the 4 + 2 tasks started before the restart to be running",
        contains="it.hold",
    )
    learned_after = time.monotonic() - ready_at
    assert learned_after < INSPECT_INTERVAL, learned_after
    for queue in ("hold", "survivor"):
        first_start = min(rig.truth.starts("it.hold", queue))
        assert abs(oldest(m, "it.hold", queue) - first_start) < 1.0, (queue, oldest(m, "it.hold", queue), first_start)
    assert counter(m, "started", "it.hold", "hold") == 0  # no event of theirs was seen: none counted
    line = learned_line(second)
    assert "learned 6 running tasks" in line and f"{victim.hostname}: 4" in line and f"{survivor.hostname}: 2" in line

    # 2. Their worker SIGKILLed: the 4 learned runs count as interrupted, once.
    victim.proc.signal_group(signal.SIGKILL)
    killed_at = time.time()
    assert victim.proc.popen.wait(5) == -signal.SIGKILL
    m = second.wait_for(
        lambda m: interrupted(m, "it.hold", "hold") == 4,
        EFFECTIVE_TIMEOUT + 10,
        what="the victim's 4 learned tasks to be counted as interrupted",
        contains="it.hold",
    )
    assert m.after - killed_at >= WORKER_TIMEOUT - 2.5, m.after - killed_at  # by heartbeat age
    assert running(m, "it.hold", "hold") == 0

    # 3. The survivor's learned tasks end by their own events: each counted once.
    rig.truth.wait({("it.hold", "survivor", "succeeded"): 2}, timeout=60)

    def once(m: Metrics) -> None:
        assert counter(m, "succeeded", "it.hold", "survivor") == 2
        assert m.get_value("celery_task_runtime_seconds_count", name="it.hold", queue_name="survivor") == 2
        assert running(m, "it.hold", "survivor") == 0
        assert interrupted(m, "it.hold", "survivor") == 0
        assert interrupted(m, "it.hold", "hold") == 4
        assert counter(m, "succeeded", "it.hold", "hold") in (None, 0)

    second.wait_for(
        lambda m: counter(m, "succeeded", "it.hold", "survivor") == 2, 15, what="2 successes", contains="it.hold"
    )
    stays(second, once, 3, "every count to stay as it is")


@pytest.mark.parametrize("broker", BROKERS)
def test_tasks_learned_after_a_restart_that_finish_are_counted_exactly(make_rig, broker):
    rig: Rig = make_rig(broker)
    first = rig.start_exporter()
    worker = rig.start_worker(queues=("celery", "hold"), concurrency=4, exporter=first)
    rig.prime(first)
    for _ in range(4):
        rig.send("it.hold", [8], queue="hold")
    rig.truth.wait({("it.hold", "hold", "started"): 4})

    second = restart(rig, first)
    m = second.wait_for(
        lambda m: running(m, "it.hold", "hold") == 4, INSPECT_INTERVAL, what="4 learned runs", contains="it.hold"
    )
    assert abs(oldest(m, "it.hold", "hold") - min(rig.truth.starts("it.hold", "hold"))) < 1.0
    assert f"learned 4 running tasks from inspect active ({worker.hostname}: 4;" in learned_line(second)

    rig.truth.wait({("it.hold", "hold", "succeeded"): 4}, timeout=30)
    second.wait_for(
        lambda m: counter(m, "succeeded", "it.hold", "hold") == 4, 15, what="4 successes", contains="it.hold"
    )

    def exact(m: Metrics) -> None:
        assert counter(m, "succeeded", "it.hold", "hold") == 4
        assert m.get_value("celery_task_runtime_seconds_count", name="it.hold", queue_name="hold") == 4
        assert counter(m, "started", "it.hold", "hold") == 0
        assert running(m, "it.hold", "hold") == 0
        assert interrupted(m, "it.hold", "hold") == 0
        assert m.get_value("celery_exporter_events_dropped_total", reason="unknown_task") in (None, 0)

    stays(second, exact, 3, "the successes to be counted exactly once")


class CuttableProxy:
    """A TCP proxy to the broker for the exporter alone: cut() closes every connection
    through it and refuses new ones (accepted, then closed at once) until restore(), so the
    exporter loses what the workers publish meanwhile while the workers go on."""

    def __init__(self, target: str):
        parts = urlsplit(target)
        self._target = (parts.hostname or HOST, parts.port or 0)
        self._listener = socket.create_server((HOST, 0))
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
        self.url = urlunsplit(parts._replace(netloc=netloc))
        self._open = True
        self._pairs: List[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    peer[sock].sendall(data)
        except (OSError, ValueError):
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self._open = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for sock in pairs:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._listener.close()


@pytest.mark.parametrize("broker", BROKERS)
def test_runs_started_and_ended_in_an_outage_of_the_exporter_are_right_after_its_reconnect(make_rig, broker):
    rig: Rig = make_rig(broker)
    proxy = CuttableProxy(rig.broker_url)
    try:
        exporter = rig.start_exporter(broker_url=proxy.url)
        wait_for(  # the learning at start (nothing runs yet) is done
            lambda: "Learned at connect</th><td>learned 0 running tasks" in exporter.get("/")[2],
            20,
            what="the learning at start",
        )
        worker = rig.start_worker(queues=("celery", "hold"), concurrency=4, exporter=exporter)
        rig.prime(exporter)
        rig.send("it.hold", [60], queue="hold")  # runs throughout
        for _ in range(2):
            rig.send("it.hold", [5], queue="hold")  # end during the outage: their events are lost
        rig.truth.wait({("it.hold", "hold", "started"): 3})
        exporter.wait_for(lambda m: running(m, "it.hold", "hold") == 3, 15, what="3 running", contains="it.hold")
        first_start = min(rig.truth.starts("it.hold", "hold"))

        proxy.cut()
        exporter.wait_for(
            lambda m: m.get_value("celery_exporter_broker_connected") == 0,
            30,
            what="the exporter to lose its connection",
            contains="celery_exporter_broker",
        )
        rig.send("it.hold", [60], queue="hold")  # starts unseen, runs on
        rig.truth.wait({("it.hold", "hold", "succeeded"): 2, ("it.hold", "hold", "started"): 4}, timeout=30)
        proxy.restore()

        m = exporter.wait_for(
            lambda m: m.get_value("celery_exporter_broker_connected") == 1 and running(m, "it.hold", "hold") == 2,
            INSPECT_INTERVAL,
            what="reconnected, with the 2 tasks that run now running",
            contains="it.hold",
        )
        assert abs(oldest(m, "it.hold", "hold") - first_start) < 1.0
        assert counter(m, "succeeded", "it.hold", "hold") in (None, 0)  # their events were lost
        lines = [line for line in exporter.proc.log_text().splitlines() if "from inspect active" in line]
        assert len(lines) == 2, lines  # one at start, one at the reconnect
        assert f"learned 1 running tasks from inspect active ({worker.hostname}: 1; 1 already known," in lines[1]
        assert "2 ended unseen" in lines[1], lines[1]

        worker.proc.signal_group(signal.SIGKILL)
        m = exporter.wait_for(
            lambda m: interrupted(m, "it.hold", "hold") == 2,
            EFFECTIVE_TIMEOUT + 10,
            what="the 2 running tasks interrupted",
            contains="it.hold",
        )
        stays(exporter, lambda m: interrupted(m, "it.hold", "hold") == 2 or pytest.fail("changed"), 2, "2 interrupted")
    finally:
        proxy.close()
