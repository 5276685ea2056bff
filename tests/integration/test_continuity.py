"""Continuity across an exporter restart, with real prefork workers: tasks that started
before the exporter listened are learned from `inspect active` (running, with their real
start), counted as interrupted when their worker is SIGKILLed, and counted once when they
end by their own events."""

from __future__ import annotations

import signal
import time

import pytest

from .rig import BROKERS, WORKER_TIMEOUT, Exporter, Metrics, Rig
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
