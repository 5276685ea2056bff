"""The queue poller against a fake backend and a fake clock."""

import threading

from celery_exporter.poller import Inspector, PollError, QueuePoller
from celery_exporter.runtime import Exporter

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
        if isinstance(self.inspect_reply, Exception):
            raise self.inspect_reply
        return self.inspect_reply

    def close(self):
        pass


def make(**settings):
    rig = Rig(**settings)
    backend = FakeBackend()
    poller = QueuePoller(rig.settings, rig.store, rig.clock, threading.Event(), backend=backend)
    inspector = Inspector(rig.settings, rig.store, rig.clock, threading.Event(), backend=backend)
    return rig, backend, poller, inspector


def test_configured_and_discovered_queues_are_polled():
    rig, backend, poller, inspector = make(queues=("idle",), inspect=False)
    rig.feed(sent("u1", queue="q1"), received("u2"))  # u2 has no queue: 'unknown' is never polled
    rig.advance(3)
    backend.depths = {"q1": (12, None)}
    poller.poll_once()
    assert backend.polled == [["idle", "q1"]]
    assert rig.value("celery_queue_length", queue_name="q1") == 12
    assert rig.value("celery_queue_length", queue_name="idle") == 0
    assert rig.value("celery_exporter_queue_poll_success") == 1


def test_a_failed_poll_keeps_the_last_values_and_reports_it():
    rig, backend, poller, inspector = make(queues=("q1",), inspect=False)
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
    rig, backend, poller, inspector = make(series_ttl=100, inspect=False)
    rig.feed(sent("u1", queue="q1"))
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") == 0
    rig.advance(101)
    poller.poll_once()
    assert rig.value("celery_queue_length", queue_name="q1") is None


def test_queues_reported_by_inspect_stay_polled_until_the_series_ttl():
    rig, backend, poller, inspector = make(series_ttl=100)
    rig.feed(heartbeat(host="w1@h"))
    backend.inspect_reply = ({"w1@h": ("a",)}, {"w1@h": 1})
    inspector.poll_once()
    poller.poll_once()
    assert backend.polled[-1] == ["a"]
    # the workers scale to zero: nobody answers, the queue's backlog stays visible...
    backend.inspect_reply = ({}, {})
    rig.clock.advance(90)
    inspector.poll_once()
    poller.poll_once()
    assert backend.polled[-1] == ["a"]
    # ...until nobody reported it for longer than the series TTL
    rig.clock.advance(20)
    poller.poll_once()
    assert len(backend.polled) == 2
    assert rig.value("celery_queue_length", queue_name="a") is None


def test_inspect_gives_worker_counts_labels_and_follows_heartbeats():
    rig, backend, poller, inspector = make()
    rig.feed(heartbeat(host="w1@h"), heartbeat(host="w2@h"))
    backend.inspect_reply = ({"w1@h": ("a",), "w2@h": ("a", "b")}, {"w1@h": 4, "w2@h": 2})
    inspector.poll_once()
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
    assert rig.value("celery_queue_active_workers", queue_name="b") == 0
    assert rig.value("celery_queue_active_workers", queue_name="a") == 1
    inspector.poll_once()
    assert backend.inspected == [2, 1]


def test_a_failed_inspect_is_counted_but_does_not_fail_the_queue_lengths():
    rig, backend, poller, inspector = make(queues=("q",))
    backend.inspect_reply = PollError("inspect", "OperationalError: connection refused")
    inspector.poll_once()
    poller.poll_once()
    assert rig.value("celery_exporter_queue_poll_errors_total", reason="inspect") == 1
    assert rig.value("celery_exporter_queue_poll_success") == 1
    assert rig.value("celery_queue_length", queue_name="q") == 0


def test_inspect_has_its_own_thread_and_interval_and_can_be_off():
    settings = Rig(inspect_interval=45, queue_poll_interval=5).settings
    exporter = Exporter(settings)
    assert exporter.poller.interval == 5
    assert exporter.inspector.interval == 45 and exporter.inspector is not exporter.poller
    assert exporter.inspector.backend is not exporter.poller.backend  # own connection each
    assert Exporter(Rig(inspect=False).settings).inspector is None


def test_a_worker_that_inspect_missed_is_inspected_again_soon():
    """The exporter starts and inspects before a busy worker answers: without a task-sent,
    that worker's tasks would be labelled "unknown" until the next --inspect-interval (30 s).
    A worker up by heartbeat and missing from the last inspect is inspected again after 2 s,
    then 4, 8... up to the interval; once every worker up is reported, the interval again."""
    rig, backend, poller, inspector = make()  # --inspect-interval 30 s
    assert inspector.due()  # the first inspect: at once
    inspector.poll_once()  # nobody answered in time
    rig.feed(heartbeat(host="w1@h"))  # the worker is up
    rig.clock.advance(1.0)
    assert not inspector.due()
    rig.feed(received("u1", host="w1@h"))  # its task waits for its task-sent (the hold)
    rig.clock.advance(1.0)
    assert inspector.due()  # 2 s after the last inspect, w1 still unreported
    backend.inspect_reply = ({"w1@h": ("only",)}, {"w1@h": 1})
    inspector.poll_once()
    assert len(backend.inspected) == 2
    rig.settle()  # no task-sent came: the single queue of w1 is the label, not "unknown"
    assert rig.value("celery_task_received_total", name="app.add", queue_name="only") == 1
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") is None
    # everyone up is reported: nothing more until the interval
    for _ in range(30 - int(rig.settle_seconds) - 4):
        rig.clock.advance(1.0)
        rig.feed(heartbeat(host="w1@h"))
        assert not inspector.due()
    # a worker that never answers (remote control off) is retried less and less often
    rig.feed(heartbeat(host="w2@h"))
    polls = []
    for second in range(1, 90):
        rig.clock.advance(1.0)
        rig.feed(heartbeat(host="w1@h"), heartbeat(host="w2@h"))
        if inspector.due():
            polls.append(second)
            inspector.poll_once()  # still only w1 answers
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    assert polls[0] <= 5 and gaps == sorted(gaps) and gaps[-1] == 30, polls
