"""Tasks in flight with real prefork workers: the running gauge and its oldest start against
the start times the tasks record themselves, tasks interrupted by a SIGKILLed worker, their
redelivery with acks_late, and a warm shutdown that interrupts nothing."""

from __future__ import annotations

import signal
import time
from typing import Tuple

import pytest

from .rig import BROKERS, WORKER_TIMEOUT, Exporter, Metrics, Rig, Worker

pytestmark = pytest.mark.integration

HEARTBEAT_MISSES = 3  # the exporter's effective timeout: max(--worker-timeout, 3 x freq 2 s)
EFFECTIVE_TIMEOUT = max(WORKER_TIMEOUT, HEARTBEAT_MISSES * 2.0)


def gauge(m: Metrics, metric: str, task: str, queue: str):
    return m.get_value(metric, name=task, queue_name=queue)


def running(m: Metrics, task: str, queue: str):
    return gauge(m, "celery_task_running", task, queue)


def oldest(m: Metrics, task: str, queue: str):
    return gauge(m, "celery_task_running_oldest_start_timestamp_seconds", task, queue)


def interrupted(m: Metrics, task: str, queue: str):
    return gauge(m, "celery_task_interrupted_total", task, queue)


def redelivered(m: Metrics, task: str, queue: str):
    return gauge(m, "celery_task_redelivered_total", task, queue)


def stays(exporter: Exporter, check, seconds: float, what: str) -> Metrics:
    """Scrape for `seconds`; `check(m)` must hold on every scrape (it asserts)."""
    until = time.monotonic() + seconds

    def holds(m: Metrics) -> bool:
        check(m)
        return time.monotonic() >= until

    return exporter.wait_for(holds, seconds + 10, what=what, interval=0.25)


@pytest.mark.parametrize("broker", BROKERS)
def test_running_tasks_and_those_a_sigkilled_worker_takes_with_it(make_rig, broker):
    rig: Rig = make_rig(broker)
    exporter = rig.start_exporter()  # --worker-timeout 4s (effective 6 s with 2 s heartbeats)
    victim = rig.start_worker(queues=("victim",), concurrency=3, exporter=exporter)
    survivor = rig.start_worker(queues=("celery", "survivor"), concurrency=2, exporter=exporter)
    rig.prime(exporter)

    for _ in range(3):
        rig.send("it.hold", [30], queue="victim")
    for _ in range(2):
        rig.send("it.hold", [30], queue="survivor")
    rig.truth.wait({("it.hold", "victim", "started"): 3, ("it.hold", "survivor", "started"): 2})

    # 1. Running equals what really runs; the oldest start is the first real start.
    m = exporter.wait_for(
        lambda m: running(m, "it.hold", "victim") == 3 and running(m, "it.hold", "survivor") == 2,
        15,
        what="3 + 2 tasks running",
        contains="it.hold",
    )
    for queue in ("victim", "survivor"):
        first = min(rig.truth.starts("it.hold", queue))
        assert abs(oldest(m, "it.hold", queue) - first) < 1.0, (queue, oldest(m, "it.hold", queue), first)
    survivor_oldest = oldest(m, "it.hold", "survivor")
    assert interrupted(m, "it.hold", "victim") == 0

    # 2. SIGKILL the victim's whole process group while it runs 3 tasks.
    victim.proc.signal_group(signal.SIGKILL)
    killed_at = time.time()
    assert victim.proc.popen.wait(5) == -signal.SIGKILL

    m = exporter.wait_for(
        lambda m: interrupted(m, "it.hold", "victim") == 3,
        EFFECTIVE_TIMEOUT + 10,
        what="the victim's 3 running tasks to be counted as interrupted",
        contains="it.hold",
    )
    # declared lost by heartbeat age, not before (its last heartbeat was at most 2 s old)
    assert m.after - killed_at >= EFFECTIVE_TIMEOUT - 2.5, m.after - killed_at
    assert running(m, "it.hold", "victim") == 0
    assert oldest(m, "it.hold", "victim") is None
    assert m.get_value("celery_worker_up", hostname=victim.hostname) == 0

    # 3. The survivor's tasks are untouched, and nothing is counted twice on later ticks.
    def unchanged(m: Metrics) -> None:
        assert interrupted(m, "it.hold", "victim") == 3
        assert running(m, "it.hold", "survivor") == 2
        assert oldest(m, "it.hold", "survivor") == survivor_oldest
        assert interrupted(m, "it.hold", "survivor") == 0
        assert redelivered(m, "it.hold", "victim") == 0  # acks early: the broker gives nothing back

    stays(exporter, unchanged, 3, "the survivor's runs to stay as they are")
    assert rig.truth.get("it.hold", "survivor", "succeeded") == 0  # they really still run
    survivor.proc.signal_group(signal.SIGKILL)  # no need to wait 30 s for them


@pytest.mark.parametrize("broker", BROKERS)
def test_acks_late_tasks_of_a_killed_worker_are_redelivered_to_its_restart(make_rig, broker):
    rig: Rig = make_rig(broker)
    if broker == "redis":
        # unacked messages of a dead consumer come back after the visibility timeout (1 h by
        # default), restored by a live worker's sweep (here every second); the run (6 s) stays
        # well inside it, so a running task is never restored
        rig.transport_options = {"visibility_timeout": 10, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    exporter = rig.start_exporter()
    worker = rig.start_worker(queues=("celery", "late"), concurrency=3, exporter=exporter)
    rig.prime(exporter)
    for _ in range(3):
        rig.send("it.hold_late", [6], queue="late")
    rig.truth.wait({("it.hold_late", "late", "started"): 3})
    exporter.wait_for(
        lambda m: running(m, "it.hold_late", "late") == 3, 15, what="3 acks_late tasks running", contains="it.hold"
    )

    worker.proc.signal_group(signal.SIGKILL)
    assert worker.proc.popen.wait(5) == -signal.SIGKILL
    m = exporter.wait_for(
        lambda m: interrupted(m, "it.hold_late", "late") == 3,
        EFFECTIVE_TIMEOUT + 10,
        what="3 interrupted",
        contains="it.hold",
    )
    assert running(m, "it.hold_late", "late") == 0
    assert redelivered(m, "it.hold_late", "late") == 0

    # The same worker, restarted under its name: the broker hands the 3 messages back.
    rig.start_worker(queues=("celery", "late"), concurrency=3, exporter=exporter, hostname=worker.hostname)
    rig.truth.wait({("it.hold_late", "late", "started"): 6, ("it.hold_late", "late", "succeeded"): 3}, timeout=60)
    m = exporter.wait_for(
        lambda m: (m.get_value("celery_task_succeeded_total", name="it.hold_late", queue_name="late") or 0) >= 3,
        15,
        what="the redelivered tasks' successes",
        contains="it.hold",
    )
    assert redelivered(m, "it.hold_late", "late") == 3
    assert m.get_value("celery_task_received_total", name="it.hold_late", queue_name="late") == 6
    assert m.get_value("celery_task_succeeded_total", name="it.hold_late", queue_name="late") == 3
    assert interrupted(m, "it.hold_late", "late") == 3  # still once per task id
    assert running(m, "it.hold_late", "late") == 0
    assert m.get_value("celery_task_runtime_seconds_count", name="it.hold_late", queue_name="late") == 3


def sigterm_while_two_run(rig: Rig, seconds: float) -> Tuple[Exporter, Worker, Metrics]:
    """A worker running two it.hold tasks of `seconds`, sent SIGTERM: returns the exporter,
    the worker and the first scrape after its worker-offline arrived."""
    exporter = rig.start_exporter()
    worker = rig.start_worker(queues=("celery",), concurrency=2, exporter=exporter)
    rig.prime(exporter)
    rig.send("it.hold", [seconds])
    rig.send("it.hold", [seconds])
    rig.truth.wait({("it.hold", "celery", "started"): 2})
    exporter.wait_for(lambda m: running(m, "it.hold", "celery") == 2, 15, what="2 running", contains="it.hold")
    worker.proc.signal(signal.SIGTERM)
    m = exporter.wait_for(
        lambda m: m.get_value("celery_worker_up", hostname=worker.hostname) is None,
        15,
        what="worker-offline",
        contains="it.hold",
        interval=0.05,
    )
    return exporter, worker, m


@pytest.mark.parametrize("broker", BROKERS)
def test_warm_shutdown_drains_its_tasks_and_interrupts_nothing(make_rig, broker):
    rig: Rig = make_rig(broker)
    # SIGTERM: worker-offline comes as the warm shutdown begins, then the worker finishes
    # its tasks. Meanwhile the worker is gone from celery_worker_up, its tasks still run.
    exporter, worker, m = sigterm_while_two_run(rig, 6)
    assert rig.truth.get("it.hold", "celery", "succeeded") == 0  # (so they ran during that scrape)
    assert running(m, "it.hold", "celery") == 2
    assert worker.proc.popen.wait(30) == 0
    assert rig.truth.get("it.hold", "celery", "succeeded") == 2
    exporter.wait_for(
        lambda m: m.get_value("celery_task_succeeded_total", name="it.hold", queue_name="celery") == 2,
        15,
        what="both tasks to succeed",
        contains="it.hold",
    )

    def nothing_lost(m: Metrics) -> None:
        assert interrupted(m, "it.hold", "celery") == 0
        assert running(m, "it.hold", "celery") == 0

    # past the worker timeout: a worker that said goodbye is never declared lost
    stays(exporter, nothing_lost, EFFECTIVE_TIMEOUT + 2, "nothing to be interrupted")


@pytest.mark.parametrize("broker", BROKERS)
def test_killed_during_its_warm_shutdown_and_restarted_under_its_name(make_rig, broker):
    """A grace period that ran out (Kubernetes sends SIGKILL after SIGTERM), then the
    container restarts under the same name: the tasks it was finishing were interrupted."""
    rig: Rig = make_rig(broker)
    exporter, worker, _ = sigterm_while_two_run(rig, 60)
    worker.proc.signal_group(signal.SIGKILL)
    assert worker.proc.popen.wait(5) == -signal.SIGKILL
    m = exporter.metrics()
    assert running(m, "it.hold", "celery") == 2 and interrupted(m, "it.hold", "celery") == 0

    rig.start_worker(queues=("celery",), concurrency=2, exporter=exporter, hostname=worker.hostname)
    m = exporter.wait_for(
        lambda m: interrupted(m, "it.hold", "celery") == 2,
        10,
        what="the restart to interrupt the 2 tasks the old process was finishing",
        contains="it.hold",
    )
    assert running(m, "it.hold", "celery") == 0
