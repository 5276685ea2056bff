"""The queue label without task-sent events: from the receiving worker's single queue, as
inspect reports it, also for workers that inspect has not reported yet."""

from __future__ import annotations

import pytest

from .rig import wait_for

pytestmark = pytest.mark.integration


def test_workers_started_after_the_exporter_label_their_tasks_by_queue(make_rig):
    """The exporter's first inspect runs at its start, before these workers exist; the
    next regular one is --inspect-interval (30 s) later. Their tasks, published without
    task-sent right after they come up, must still count under their queues, every one,
    none under "unknown" (before, they did until that next inspect)."""
    rig = make_rig("redis")
    exporter = rig.start_exporter()  # default inspect interval and timeout
    workers = [
        rig.start_worker(queues=(queue,), concurrency=2, extra=("-P", "threads"), exporter=exporter)
        for queue in ("default", "heavy")
    ]
    rig.producer.conf.task_send_sent_event = False
    for i in range(15):
        for queue in ("default", "heavy"):
            rig.send("it.succeed", [i], queue=queue)
    rig.truth.wait({("it.succeed", "default", "succeeded"): 15, ("it.succeed", "heavy", "succeeded"): 15})

    def by_queue(m):
        return {dict(labels)["queue_name"]: v for labels, v in m.select("celery_task_succeeded_total").items()}

    m = exporter.wait_for(
        lambda m: by_queue(m) == {"default": 15.0, "heavy": 15.0},
        20,
        what="all 30 successes counted under their workers' queues",
        contains="it.succeed",
        explain=lambda m: f"succeeded by queue: {by_queue(m)}",
    )
    assert m.get_value("celery_task_sent_total", name="it.succeed", queue_name="default") == 0  # no task-sent
    assert m.get_value("celery_exporter_events_dropped_total", reason="unknown_task") == 0
    for worker in workers:
        assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1
    wait_for(lambda: all(w.proc.running for w in workers), 1, what="the workers to be still running")
