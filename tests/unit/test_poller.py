"""The queue poller against a fake backend and a fake clock."""

import threading

from celery_exporter.poller import PollError, QueuePoller

from .conftest import Rig, heartbeat, received, sent


class FakeBackend:
    def __init__(self):
        self.depths = {}
        self.fail = None
        self.inspect_reply = ({}, {})
        self.polled = []
        self.inspected = []

    def queue_depths(self, queues):
        self.polled.append(list(queues))
        if self.fail:
            raise PollError("broker", self.fail)
        return {q: self.depths.get(q, (0, None)) for q in queues}

    def inspect(self, expected_replies):
        self.inspected.append(expected_replies)
        return self.inspect_reply

    def close(self):
        pass


def make(**settings):
    rig = Rig(**settings)
    backend = FakeBackend()
    poller = QueuePoller(rig.settings, rig.store, rig.clock, threading.Event(), backend=backend)
    return rig, backend, poller


def test_configured_and_discovered_queues_are_polled():
    rig, backend, poller = make(queues=("idle",), inspect=False)
    rig.feed(sent("u1", queue="q1"), received("u2"))  # u2 has no queue: 'unknown' is never polled
    rig.advance(3)
    backend.depths = {"q1": (12, None)}
    poller.poll_once()
    assert backend.polled == [["idle", "q1"]]
    assert rig.value("celery_queue_length", queue_name="q1") == 12
    assert rig.value("celery_queue_length", queue_name="idle") == 0
    assert rig.value("celery_exporter_queue_poll_success") == 1


def test_a_failed_poll_keeps_the_last_values_and_reports_it():
    rig, backend, poller = make(queues=("q1",), inspect=False)
    backend.depths = {"q1": (5, 2)}
    poller.poll_once()
    last_success = rig.value("celery_exporter_queue_poll_last_success_timestamp_seconds")
    rig.clock.advance(10)
    backend.fail = "ConnectionRefusedError: [Errno 111]"
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") == 5
    assert rig.value("celery_queue_active_consumers", queue_name="q1") == 2
    assert rig.value("celery_exporter_queue_poll_success") == 0
    assert rig.value("celery_exporter_queue_poll_errors_total", reason="broker") == 1
    assert rig.value("celery_exporter_queue_poll_last_success_timestamp_seconds") == last_success
    backend.fail = None
    backend.depths = {"q1": (1, 2)}
    rig.clock.advance(10)
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") == 1
    assert rig.value("celery_exporter_queue_poll_success") == 1


def test_discovered_queues_expire_with_their_task_series():
    rig, backend, poller = make(series_ttl=100, inspect=False)
    rig.feed(sent("u1", queue="q1"))
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") == 0
    rig.advance(101)
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") is None


def test_inspect_gives_worker_counts_labels_and_follows_heartbeats():
    rig, backend, poller = make(inspect_interval=30)
    rig.feed(heartbeat(host="w1@h"), heartbeat(host="w2@h"))
    backend.inspect_reply = ({"w1@h": ("a",), "w2@h": ("a", "b")}, {"w1@h": 4, "w2@h": 2})
    poller.poll_once()
    assert backend.inspected == [2]  # stop waiting once both workers up have answered
    assert backend.polled == [["a", "b"]]
    assert rig.value("celery_queue_active_workers", queue_name="a") == 2
    assert rig.value("celery_queue_active_processes", queue_name="a") == 6
    assert rig.value("celery_queue_active_workers", queue_name="b") == 1
    # the worker -> queues map gives the queue label of tasks received by single-queue workers
    rig.feed(received("u1", host="w1@h"))
    assert rig.value("celery_task_received_total", name="app.add", queue_name="a") == 1
    # w2 is killed: its heartbeats stop, and the counts drop without waiting for an inspect
    rig.clock.advance(20)
    rig.feed(heartbeat(host="w1@h"))
    rig.clock.advance(15)
    poller.poll_once()
    assert backend.inspected == [2, 1]
    assert rig.value("celery_queue_active_workers", queue_name="b") == 0
    assert rig.value("celery_queue_active_workers", queue_name="a") == 1


def test_inspect_runs_on_its_own_interval_and_can_be_off():
    rig, backend, poller = make(inspect_interval=30, queues=("q",))
    for _ in range(3):
        poller.poll_once()
        rig.clock.advance(10)
    assert len(backend.inspected) == 1
    rig.clock.advance(10)
    poller.poll_once()
    assert len(backend.inspected) == 2
    rig, backend, poller = make(inspect=False, queues=("q",))
    poller.poll_once()
    assert backend.inspected == []
    assert rig.value("celery_queue_active_workers", queue_name="q") is None
