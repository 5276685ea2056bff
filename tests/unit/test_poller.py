"""The queue poller against a fake backend and a fake clock."""

import threading

import pytest

from celery_exporter.poller import Inspector, PollError, QueuePoller
from celery_exporter.runtime import Exporter

from .conftest import Rig, heartbeat, received, sent, started


class FakeBackend:
    def __init__(self):
        self.method = "redis-lists"
        self.depths = {}
        self.fail = None
        self.inspect_reply = ({}, {})
        self.tasks_reply = ({}, {})
        self.polled = []
        self.inspected = []
        self.asked_tasks = []

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

    def tasks(self, expected_replies):
        self.asked_tasks.append(expected_replies)
        if isinstance(self.tasks_reply, Exception):
            raise self.tasks_reply
        return self.tasks_reply

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


def test_each_workers_pool_size_comes_from_inspect_and_outlives_a_missed_reply():
    rig, backend, poller, inspector = make(series_ttl=100.0)
    rig.feed(heartbeat(host="w1@h"), heartbeat(host="w2@h"))
    assert rig.value("celery_worker_pool_size", hostname="w1@h") is None  # no inspect yet
    backend.inspect_reply = (
        {"w1@h": ("a",), "w2@h": ("a",), "w3@h": ("a",), "w9@h": ("a",)},
        {"w1@h": 3, "w2@h": 4, "w3@h": 0, "w9@h": 8},
    )
    rig.feed(heartbeat(host="w3@h"))
    inspector.poll_once()
    assert rig.value("celery_worker_pool_size", hostname="w1@h") == 3
    assert rig.value("celery_worker_pool_size", hostname="w2@h") == 4
    assert rig.value("celery_worker_pool_size", hostname="w9@h") is None  # no heartbeat: no worker label set
    assert rig.value("celery_worker_pool_size", hostname="w3@h") is None  # stats without a size
    assert rig.family("celery_worker_queue_info") == {
        ("celery_worker_queue_info", frozenset({"hostname": "w1@h", "queue_name": "a"}.items())): 1.0,
        ("celery_worker_queue_info", frozenset({"hostname": "w2@h", "queue_name": "a"}.items())): 1.0,
        ("celery_worker_queue_info", frozenset({"hostname": "w3@h", "queue_name": "a"}.items())): 1.0,
    }
    # w2 misses a reply (slow): its size stays; w1 restarted with another concurrency
    rig.clock.advance(60)
    rig.feed(heartbeat(host="w1@h", ts=rig.clock.now()), heartbeat(host="w2@h", ts=rig.clock.now()))
    backend.inspect_reply = ({"w1@h": ("a",)}, {"w1@h": 5})
    inspector.poll_once()
    assert rig.value("celery_worker_pool_size", hostname="w1@h") == 5
    assert rig.value("celery_worker_pool_size", hostname="w2@h") == 4
    # no report of w2 for longer than --series-ttl: forgotten, though its heartbeats go on
    rig.clock.advance(50)
    rig.feed(heartbeat(host="w1@h", ts=rig.clock.now()), heartbeat(host="w2@h", ts=rig.clock.now()))
    assert rig.value("celery_worker_pool_size", hostname="w2@h") is None
    assert rig.value("celery_worker_pool_size", hostname="w1@h") == 5  # reported 50 s ago
    rig.store.sweep(rig.clock.now())
    assert rig.store.queues.pool_sizes_locked(rig.clock.now()) == {"w1@h": 5}  # w2's is gone from memory
    assert "w2@h" not in rig.store.queues._pool_sizes


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


class FakePipeline:
    def __init__(self, lists):
        self.lists, self.asked = lists, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def llen(self, key):
        self.asked.append(key)

    def execute(self):
        return [self.lists.get(key, 0) for key in self.asked]


class FakeClient:
    def __init__(self, lists):
        self.lists = lists

    def pipeline(self):
        return FakePipeline(self.lists)


class NotFound(Exception):
    code = 404


class FakeRedisChannel:
    """kombu's Redis Channel as the length poll reads it, and its passive declare."""

    def __init__(self, lists):
        self.client = FakeClient(lists)
        self.priority_steps = [0, 3]
        self.sep = "\x06\x16"
        self.lists = lists

    def queue_declare(self, queue, passive):
        assert passive
        names = [queue, f"{queue}\x06\x163"]
        if not any(name in self.lists for name in names):
            raise NotFound(f"NOT_FOUND - no queue {queue!r}")
        return queue, sum(self.lists.get(name, 0) for name in names), 0

    def close(self):
        pass


class FakeRedisConnection:
    channel_errors = (NotFound,)

    def __init__(self, channel):
        self.default_channel = channel
        self.transport = type("Transport", (), {"driver_type": "redis"})()

    def channel(self):
        return self.default_channel


@pytest.mark.parametrize("missing", [None, "client", "priority_steps", "sep"])
def test_redis_lengths_fall_back_to_a_passive_declare_without_kombus_internals(missing, caplog, monkeypatch):
    from celery_exporter import internals
    from celery_exporter.poller import KombuBackend

    monkeypatch.setattr(internals, "_WARNED", set())

    lists = {"a": 5, "a\x06\x163": 2, "b": 1}
    channel = FakeRedisChannel(lists)
    if missing == "sep":
        channel.sep = None  # another type: a TypeError
    elif missing is not None:
        delattr(channel, missing)  # gone: an AttributeError
    backend = KombuBackend(Rig().settings)
    backend._connection = FakeRedisConnection(channel)  # (no broker: the connection is given)
    depths = backend.queue_depths(["a", "b", "none"])
    assert {q: d.messages for q, d in depths.items()} == {"a": 7, "b": 1, "none": 0}
    assert backend.method == ("redis-lists" if missing is None else "declare")
    warned = "reading Redis queue lengths with a passive declare" in caplog.text
    assert warned == (missing is not None)
    backend.queue_depths(["a"])
    assert caplog.text.count("passive declare") == (0 if missing is None else 1)  # logged once


def test_what_runs_is_learned_once_connected_then_while_learned_runs_are_unconfirmed():
    rig, backend, poller, inspector = make()  # --inspect-interval 30 s
    backend.inspect_reply = ({"w1@h": ("celery",)}, {"w1@h": 2})
    running = {"id": "a", "name": "app.add", "time_start": rig.clock.now() - 60, "delivery_info": {}}
    backend.tasks_reply = ({"w1@h": [running]}, {"w1@h": []})
    inspector.poll_once()  # the event stream is not connected yet: a task could end unseen
    assert backend.asked_tasks == []
    assert not inspector.due()
    rig.clock.advance(1)
    rig.store.exporter.set_connected(True, rig.clock.now())
    assert inspector.due()  # at once, not at the next cycle
    inspector.poll_once()
    assert backend.asked_tasks == [0]  # the first time every worker gets the whole timeout
    assert len(backend.inspected) == 1  # the cycle's own inspect was not due
    rig.tick()
    assert rig.value("celery_task_running", name="app.add", queue_name="celery") == 1
    assert not inspector.due()
    rig.clock.advance(30)
    assert inspector.due()
    inspector.poll_once()  # the next cycle: a's run is still only learned, so ask again
    assert len(backend.asked_tasks) == 2 and len(backend.inspected) == 2
    rig.feed(received("a", host="w1@h"), started("a", host="w1@h"))  # its task-started replaced it
    rig.clock.advance(30)
    inspector.poll_once()
    assert len(backend.asked_tasks) == 2  # nothing learned is left unconfirmed

    # a reconnect of the event stream: learned anew, within INSPECT_CHECK
    rig.store.exporter.set_connected(False)
    rig.clock.advance(5)
    rig.store.exporter.set_connected(True, rig.clock.now())
    assert inspector.due()
    backend.tasks_reply = PollError("inspect", "ConnectionResetError")
    inspector.poll_once()
    assert len(backend.asked_tasks) == 3
    assert rig.value("celery_exporter_queue_poll_errors_total", reason="inspect") == 1
    assert not inspector.due()  # a failure is tried again on the next cycle, not every second
    rig.clock.advance(30)
    backend.tasks_reply = ({}, {})
    inspector.poll_once()
    assert backend.asked_tasks[3:] == [0]  # still the first for its connection: the whole timeout


def test_the_poll_method_is_a_self_metric():
    rig, backend, poller, inspector = make(queues=("q",))
    poller.poll_once()
    assert rig.value("celery_exporter_queue_poll_method_info", method="redis-lists") == 1
    backend.method = "declare"
    poller.poll_once()
    assert rig.value("celery_exporter_queue_poll_method_info", method="declare") == 1
    assert rig.value("celery_exporter_queue_poll_method_info", method="redis-lists") is None
