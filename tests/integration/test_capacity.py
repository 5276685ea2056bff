"""Worker capacity and the run time of failures, with real workers: each worker's pool size
(prefork and threads), its tasks reserved (compared with what the worker itself answers to
`inspect reserved`), the pool utilization recording rule and the saturation alert on a real
Prometheus, and the failed and retried run-time histograms against the run times the tasks
measured themselves."""

from __future__ import annotations

import signal
import threading
from typing import List, Optional

import pytest

from .promstack import Prometheus, rules_file
from .rig import BROKERS, Metrics, Rig, wait_for

pytestmark = pytest.mark.integration

PREFETCH_MULTIPLIER = 1  # it_worker_app's worker_prefetch_multiplier


def reserved_by_the_worker(rig: Rig, hostname: str) -> Optional[int]:
    """What the worker itself says it reserved (`celery inspect reserved`), None if it did not answer."""
    replies = rig.producer.control.inspect(destination=[hostname], timeout=2.0).reserved() or {}
    reply = replies.get(hostname)
    return None if reply is None else len(reply)


class Feeder(threading.Thread):
    """Publishes a long task to `queue` every half second, so that the queue grows."""

    def __init__(self, rig: Rig, queue: str):
        super().__init__(daemon=True)
        self.rig, self.queue = rig, queue
        self.stop = threading.Event()
        self.error: Optional[Exception] = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.5):
                self.rig.send("it.hold", [60], queue=self.queue)
        except Exception as exc:  # shown by the test
            self.error = exc


@pytest.mark.parametrize("broker", BROKERS)
def test_pool_sizes_reserved_tasks_utilization_and_the_saturation_alert(make_rig, tmp_path, broker):
    rules = rules_file(tmp_path, {"alerts": {"CeleryWorkerPoolSaturated": {"for": "0m"}}})
    rig: Rig = make_rig(broker)
    exporter = rig.start_exporter("--inspect-interval", "5s")
    prefork = rig.start_worker(queues=("busy",), concurrency=3, exporter=exporter)
    threads = rig.start_worker(queues=("celery", "idle"), concurrency=4, extra=("-P", "threads"), exporter=exporter)
    prometheus = Prometheus(tmp_path, exporter.port, rules)
    rig.procs.append(prometheus.proc)
    rig.prime(exporter)

    # 1. Pool sizes from inspect stats: prefork's concurrency, the thread pool's size.
    def pool(m: Metrics, host: str) -> Optional[float]:
        return m.get_value("celery_worker_pool_size", hostname=host)

    m = exporter.wait_for(
        lambda m: pool(m, prefork.hostname) is not None and pool(m, threads.hostname) is not None,
        30,
        what="both workers' pool sizes",
        contains="celery_worker_pool_size",
    )
    assert (pool(m, prefork.hostname), pool(m, threads.hostname)) == (3.0, 4.0)
    assert m.get_value("celery_worker_tasks_reserved", hostname=prefork.hostname) == 0

    # 2. Three long tasks fill the prefork pool; six more wait: the worker prefetches
    #    concurrency x multiplier of them (acked early, a started task frees its prefetch
    #    slot), the rest stay in the queue.
    for _ in range(3):
        rig.send("it.hold", [60], queue="busy")
    rig.truth.wait({("it.hold", "busy", "started"): 3})
    for _ in range(6):
        rig.send("it.hold", [60], queue="busy")
    prefetched = 3 * PREFETCH_MULTIPLIER

    def full(m: Metrics) -> bool:
        return (
            m.get_value("celery_worker_tasks_active", hostname=prefork.hostname) == 3
            and m.get_value("celery_worker_tasks_reserved", hostname=prefork.hostname) == prefetched
            and m.get_value("celery_queue_length", queue_name="busy") == 6 - prefetched
        )

    m = exporter.wait_for(full, 30, what="3 active, 3 reserved, 3 queued", contains=prefork.hostname)
    assert reserved_by_the_worker(rig, prefork.hostname) == prefetched  # the worker's own word
    assert rig.truth.get("it.hold", "busy", "started") == 3  # none of the reserved ones started
    assert m.get_value("celery_worker_tasks_reserved", hostname=threads.hostname) == 0
    assert m.get_value("celery_worker_tasks_active", hostname=prefork.hostname) / pool(m, prefork.hostname) == 1.0

    # 3. Prometheus: the recording rule's utilization, and the saturation alert while the
    #    prefork worker's queue grows (its `for:` set to 0m here); never for the idle worker.
    def utilization() -> dict:
        return {
            r["metric"]["hostname"]: float(r["value"][1])
            for r in prometheus.query("celery:worker_pool_utilization:ratio")
        }

    wait_for(
        lambda: utilization() == {prefork.hostname: 1.0, threads.hostname: 0.0},
        60,
        what="the recorded utilization: 1 and 0",
        describe=lambda: str(utilization()),
    )
    feeder = Feeder(rig, "busy")
    feeder.start()
    try:
        firing: List[dict] = []

        def fires() -> bool:
            firing[:] = prometheus.firing("CeleryWorkerPoolSaturated")
            return bool(firing)

        wait_for(
            fires,
            60,
            interval=1,
            what="CeleryWorkerPoolSaturated to fire",
            describe=lambda: str(prometheus.query('deriv(celery_queue_length{queue_name="busy"}[10m])')),
        )
        assert [a["hostname"] for a in firing] == [prefork.hostname]
        assert feeder.error is None, feeder.error
        m = exporter.metrics()
        assert m.get_value("celery_worker_tasks_reserved", hostname=prefork.hostname) == prefetched
        assert reserved_by_the_worker(rig, prefork.hostname) == prefetched
    finally:
        feeder.stop.set()
        feeder.join(5)
    prefork.proc.signal_group(signal.SIGKILL)  # no need to wait a minute for its tasks

    # 4. The killed worker's reservations go once it is declared lost (the broker hands its
    #    prefetched messages to the next consumer).
    exporter.wait_for(
        lambda m: (
            m.get_value("celery_worker_up", hostname=prefork.hostname) == 0
            and m.get_value("celery_worker_tasks_reserved", hostname=prefork.hostname) == 0
        ),
        30,
        what="the lost worker's reservations to go",
        contains=prefork.hostname,
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_failed_and_retried_runs_are_timed_from_start_to_end(make_rig, broker):
    rig: Rig = make_rig(broker)
    exporter = rig.start_exporter()
    rig.start_worker(queues=("celery",), concurrency=4, exporter=exporter)
    rig.prime(exporter)
    failures, retries = 4, 3
    for _ in range(failures):
        rig.send("it.sleep_fail", [1.0])
    for _ in range(retries):
        rig.send("it.sleep_retry", [1.0])
    rig.truth.wait(
        {("it.sleep_fail", "celery", "failed"): failures, ("it.sleep_retry", "celery", "succeeded"): retries}, 60
    )

    def count(m: Metrics, metric: str, name: str) -> Optional[float]:
        return m.get_value(f"{metric}_count", name=name, queue_name="celery")

    m = exporter.wait_for(
        lambda m: (
            count(m, "celery_task_failed_runtime_seconds", "it.sleep_fail") == failures
            and count(m, "celery_task_retried_runtime_seconds", "it.sleep_retry") == retries
            and count(m, "celery_task_runtime_seconds", "it.sleep_retry") == retries
        ),
        30,
        what="the failed and retried runs to be observed",
        contains="runtime_seconds",
    )
    for metric, name in (
        ("celery_task_failed_runtime_seconds", "it.sleep_fail"),
        ("celery_task_retried_runtime_seconds", "it.sleep_retry"),
    ):
        ran = [float(v) for v in rig.truth.client.lrange(f"{rig.truth.prefix}:ran:{name}", 0, -1)]
        assert len(ran) == count(m, metric, name)
        observed = m.get_value(f"{metric}_sum", name=name, queue_name="celery")
        # the exporter's clock from task-started to the end event's arrival: the body's run
        # time, plus Celery's own overhead around it, within 5 %
        assert sum(ran) * 0.95 <= observed <= sum(ran) * 1.05, (metric, observed, ran)
        # every run slept 1 s; one may be measured a little under it (its task-started leaves
        # the worker's main process after the pool child began), none by half
        assert m.bucket(metric, 0.5, name=name, queue_name="celery") == 0
        assert m.bucket(metric, 2.5, name=name, queue_name="celery") == len(ran)
    # the success runtime keeps meaning successes only
    assert count(m, "celery_task_runtime_seconds", "it.sleep_fail") is None
    assert count(m, "celery_task_failed_runtime_seconds", "it.sleep_retry") is None
