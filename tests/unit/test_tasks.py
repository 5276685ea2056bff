"""Task events replayed against exact expected samples. (The lifecycle's rules, duplicate
terminal events and retries among them, are rows in test_running.py.)"""

import itertools

import pytest

from celery_exporter import catalogue
from celery_exporter.events import exception_class, parse_eta, queue_from_sent
from celery_exporter.labels import INSPECT_WAIT
from celery_exporter.receiver import TICK_INTERVAL
from celery_exporter.tasks import FINISHED_GRID

from .conftest import T0, Rig, failed, heartbeat, received, sent, started, succeeded

L = {"name": "app.add", "queue_name": "celery"}


def counters(rig, **labels):
    return {s: rig.value(f"celery_task_{s}_total", **labels) for s in catalogue.TASK_STATES}


def test_a_successful_task_gives_exact_samples(rig):
    rig.feed(
        sent("u1", ts=T0),
        received("u1", ts=T0 + 0.2),
        started("u1", ts=T0 + 0.5),
        succeeded("u1", ts=T0 + 1.0, runtime=0.42),
    )
    assert counters(rig, **L) == {
        "sent": 1,
        "received": 1,
        "started": 1,
        "succeeded": 1,
        "failed": 0,
        "retried": 0,
        "rejected": 0,
        "revoked": 0,
    }
    assert rig.value("celery_task_runtime_seconds_count", **L) == 1
    assert rig.value("celery_task_runtime_seconds_sum", **L) == pytest.approx(0.42)
    assert rig.value("celery_task_runtime_seconds_bucket", le="0.25", **L) == 0
    assert rig.value("celery_task_runtime_seconds_bucket", le="0.5", **L) == 1
    assert rig.value("celery_task_runtime_seconds_bucket", le="+Inf", **L) == 1
    assert rig.value("celery_task_queue_wait_seconds_sum", **L) == pytest.approx(0.5)
    assert rig.value("celery_task_prefetch_wait_seconds_sum", **L) == pytest.approx(0.3)
    assert rig.value("celery_task_prefetch_wait_seconds_count", **L) == 1
    assert rig.value("celery_exporter_events_total", type="task-sent") == 1


def test_new_label_set_starts_all_state_counters_at_zero(rig):
    rig.feed(sent("u1"))
    assert counters(rig, **L) == {s: (1 if s == "sent" else 0) for s in catalogue.TASK_STATES}


def test_failure_counts_exception_class(rig):
    rig.feed(sent("u1"), received("u1"), started("u1"), failed("u1", exception="KeyError('x')"))
    assert counters(rig, **L)["failed"] == 1
    assert rig.value("celery_task_exceptions_total", exception="KeyError", **L) == 1
    assert rig.value("celery_task_runtime_seconds_count", **L) is None  # runtime is for successes


def _final(rig):
    return {k: v for k, v in rig.samples().items() if k[0].startswith("celery_task_")}


def test_any_arrival_order_gives_the_same_samples():
    events = [
        sent("u2", ts=T0),
        received("u2", ts=T0 + 0.2),
        started("u2", ts=T0 + 0.5),
        succeeded("u2", ts=T0 + 1.0, runtime=0.4),
    ]
    results = []
    for order in itertools.permutations(events):
        rig = Rig()
        rig.feed(sent("u1"))  # task-sent events are known to flow
        rig.feed(*order)
        rig.advance(5)  # let any hold run out
        results.append(_final(rig))
    assert all(r == results[0] for r in results)
    assert results[0][("celery_task_succeeded_total", frozenset(L.items()))] == 1
    assert results[0][("celery_task_prefetch_wait_seconds_sum", frozenset(L.items()))] == pytest.approx(0.3)


def test_received_before_sent_waits_for_the_queue_from_task_sent(rig):
    rig.feed(sent("u0", queue="other"))  # task-sent events flow
    rig.feed(received("u1"), started("u1"))
    assert counters(rig, name="app.add", queue_name="unknown")["received"] is None
    rig.advance(0.5)
    rig.feed(sent("u1", queue="q2"))
    c = counters(rig, name="app.add", queue_name="q2")
    assert (c["sent"], c["received"], c["started"]) == (1, 1, 1)


def test_before_any_task_sent_a_task_waits_for_its_late_task_sent(rig):
    """Right after a start, task-received can beat the first task-sent (seen on Redis)."""
    rig.feed(received("u1"), started("u1"), succeeded("u1"))
    assert counters(rig, name="app.add", queue_name="unknown")["succeeded"] is None
    rig.advance(0.5)
    rig.feed(sent("u1", queue="q2"))
    c = counters(rig, name="app.add", queue_name="q2")
    assert (c["sent"], c["received"], c["started"], c["succeeded"]) == (1, 1, 1, 1)
    assert rig.family("celery_task_received_total") == {
        ("celery_task_received_total", frozenset(dict(name="app.add", queue_name="q2").items())): 1
    }


def test_without_task_sent_events_queue_is_unknown_after_the_hold_then_at_once(rig):
    rig.feed(received("u1"), started("u1"), succeeded("u1"))
    rig.settle()  # (the hold, and the wait for a first inspect reply about w1)
    assert counters(rig, name="app.add", queue_name="unknown")["succeeded"] == 1
    # ten minutes without any task-sent: they are off, so nothing waits any more
    rig.advance(600)
    rig.feed(received("u2"), started("u2"), succeeded("u2"))
    assert counters(rig, name="app.add", queue_name="unknown")["succeeded"] == 2


def test_single_queue_worker_gives_the_queue_label(rig):
    rig.store.queues.set_worker_queues({"w1@h": ["only"], "w2@h": ["a", "b"]})
    rig.feed(received("u1", host="w1@h"), received("u2", host="w2@h"))
    # the single-queue worker's queue is certain: counted at once, no wait for a task-sent
    assert rig.value("celery_task_received_total", name="app.add", queue_name="only") == 1
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") is None
    rig.settle()
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1


def test_events_held_for_a_missing_task_sent_are_released_after_the_hold(rig):
    rig.feed(sent("u0"))
    rig.feed(received("u1"), started("u1"))
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") is None
    rig.settle()
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1
    assert rig.value("celery_task_started_total", name="app.add", queue_name="unknown") == 1


def test_events_of_a_task_whose_name_never_arrives_are_dropped_as_unknown(rig):
    rig.feed(started("u1"), succeeded("u1"))  # exporter started while u1 was running
    rig.advance(3)
    assert rig.family("celery_task_succeeded") == {}
    assert rig.value("celery_exporter_events_dropped_total", reason="unknown_task") == 2
    rig.feed(failed("u1"))  # later events of that task are dropped at once, not held forever
    assert rig.value("celery_exporter_events_dropped_total", reason="unknown_task") == 3
    assert rig.handler.tracker.get("u1").pending is None


def test_eta_is_subtracted_from_waits(rig):
    eta = "2027-01-15T08:00:10+00:00"
    eta_ts = parse_eta(eta)
    rig.feed(
        sent("u1", ts=eta_ts - 10, eta=eta),
        received("u1", ts=eta_ts - 9.9, eta=eta),
        started("u1", ts=eta_ts + 0.25),
        succeeded("u1", ts=eta_ts + 0.3),
    )
    assert rig.value("celery_task_queue_wait_seconds_sum", **L) == pytest.approx(0.25)
    assert rig.value("celery_task_prefetch_wait_seconds_sum", **L) == pytest.approx(0.25)


def test_clock_skew_is_clamped_at_zero(rig):
    rig.feed(sent("u1", ts=T0 + 5), received("u1", ts=T0), started("u1", ts=T0 + 0.1))
    assert rig.value("celery_task_queue_wait_seconds_sum", **L) == 0
    assert rig.value("celery_task_queue_wait_seconds_bucket", le="0.001", **L) == 1


def test_timezone_fields_do_not_shift_durations(rig):
    # A Berlin worker says utcoffset=-1; timestamps are epoch seconds and stay as they are.
    events = [
        sent("u1", ts=T0),
        received("u1", ts=T0 + 0.1),
        started("u1", ts=T0 + 0.2),
        succeeded("u1", ts=T0 + 0.3, runtime=0.1),
    ]
    for e in events[1:]:
        e["utcoffset"] = -1
    rig.feed(*events)
    assert rig.value("celery_task_queue_wait_seconds_sum", **L) == pytest.approx(0.2, abs=1e-6)
    assert rig.value("celery_task_prefetch_wait_seconds_sum", **L) == pytest.approx(0.1, abs=1e-6)


def test_runtime_none_falls_back_to_timestamps(rig):
    rig.feed(received("u1"), started("u1", ts=T0 + 1), succeeded("u1", ts=T0 + 3.5, runtime=None))
    rig.settle()
    assert rig.value("celery_task_runtime_seconds_sum", name="app.add", queue_name="unknown") == pytest.approx(2.5)


def test_hostname_label_is_opt_in():
    rig = Rig(task_hostname_label=True)
    rig.feed(sent("u1"), received("u1", host="w9@h"), started("u1", host="w9@h"), succeeded("u1", host="w9@h"))
    assert rig.value("celery_task_succeeded_total", hostname="w9@h", **L) == 1
    # task-sent comes from the publisher, not a worker: an empty hostname (absent in Prometheus)
    assert rig.value("celery_task_sent_total", hostname="", **L) == 1
    assert rig.value("celery_task_queue_wait_seconds_count", hostname="w9@h", **L) == 1


def test_custom_and_cancelled_events_are_counted_only_as_events(rig):
    rig.feed(
        received("u1"),
        {"type": "task-progress", "uuid": "u1", "hostname": "w1@h", "timestamp": T0, "pct": 5},
        {"type": "task-cancelled", "uuid": "u1", "hostname": "w1@h", "timestamp": T0},
    )
    rig.settle()
    assert rig.value("celery_exporter_events_total", type="other") == 1
    assert rig.value("celery_exporter_events_total", type="task-cancelled") == 1
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1


def test_finished_tasks_are_forgotten_and_the_uuid_map_is_bounded():
    rig = Rig(max_tasks=100)
    for i in range(50):
        rig.feed(received(f"done{i}"), started(f"done{i}"), succeeded(f"done{i}"))
    rig.settle()  # counted (after the wait for a task-sent), so they are finished
    rig.advance(rig.settings.finished_grace_seconds + 1)
    assert len(rig.handler.tracker) == 0
    for i in range(150):
        rig.feed(received(f"busy{i}"), started(f"busy{i}"))
    rig.advance(1)
    assert rig.value("celery_exporter_tasks_tracked") == 100
    assert rig.value("celery_exporter_tasks_evicted_total") == 50


def test_tasks_finished_together_are_forgotten_together_and_each_on_time():
    rig = Rig()
    grace = rig.settings.finished_grace_seconds
    for i in range(1000):
        rig.feed(sent(f"a{i}"), received(f"a{i}"), started(f"a{i}"), succeeded(f"a{i}"))
    rig.advance(1.0)
    for i in range(10):
        rig.feed(sent(f"b{i}"), received(f"b{i}"), started(f"b{i}"), succeeded(f"b{i}"))
    assert len(rig.handler.tracker._finished) == 2  # one entry per deadline, not per task
    rig.advance(grace - 1.0 + FINISHED_GRID + TICK_INTERVAL)
    assert len(rig.handler.tracker) == 10  # the first thousand are gone, the later ten not yet
    rig.advance(1.0)
    assert len(rig.handler.tracker) == 0


def test_task_records_share_one_string_per_name_queue_and_hostname():
    rig = Rig()
    # as decoded from JSON, every event carries its own copies of the strings
    rig.feed(
        *[
            event
            for i in range(2)
            for event in (
                sent(f"u{i}", name="".join(["app.", "add"]), queue="".join(["cel", "ery"])),
                received(f"u{i}", name="".join(["app.", "add"]), host="".join(["w1", "@h"])),
            )
        ]
    )
    first, second = rig.handler.tracker.peek("u0"), rig.handler.tracker.peek("u1")
    assert (first.name, first.queue, first.worker) == ("app.add", "celery", "w1@h")
    assert first.name is second.name and first.queue is second.queue and first.worker is second.worker


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event,expected",
    [
        ({"exception": "ValueError('boom')"}, "ValueError"),
        ({"exception": "mymod.errors.Custom('x')"}, "Custom"),
        (
            {
                "exception": "ExceptionWithTraceback()",
                "traceback": "Traceback:\n  File x\nbilliard.exceptions.WorkerLostError: Worker exited\n\n",
            },
            "WorkerLostError",
        ),
        ({"exception": "NotRegistered('app.nope')"}, "NotRegistered"),
        (
            {
                "exception": "reject requeue=False: it.reject rejects",
                "traceback": "Traceback (most recent call last):\n  File x\n"
                "celery.exceptions.Reject: ('it.reject rejects', False)\n",
            },
            "Reject",
        ),
        ({"exception": "reject requeue=False: no traceback"}, "Reject"),
        ({"exception": "Retry(Retry(...), TimeoutError('upstream timed out'), 0.5)"}, "TimeoutError"),
        ({"exception": "Retry('Retry in 5s')"}, "Retry"),
        ({"exception": "KeyError('not yet')"}, "KeyError"),
        ({"exception": "<object at 0x1>", "traceback": "Traceback...\n  File x\n    raise Weird()\n"}, "unknown"),
        ({"exception": "<object at 0x1>"}, "unknown"),
        ({"exception": None}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_exception_class(event, expected):
    assert exception_class(event) == expected


@pytest.mark.parametrize(
    "event,expected",
    [
        ({"queue": "q1", "exchange": "", "routing_key": "q1"}, "q1"),
        ({"queue": None, "exchange": "", "routing_key": "q3"}, "q3"),
        ({"queue": None, "exchange": "celery_delayed_27", "routing_key": "0." * 27 + "1.default"}, "default"),
        ({"queue": None, "exchange": "tasks", "routing_key": "x.y"}, None),
        ({}, None),
    ],
)
def test_queue_from_sent(event, expected):
    assert queue_from_sent(event) == expected


def test_parse_eta():
    assert parse_eta("2027-01-15T08:00:00+00:00") == parse_eta("2027-01-15T09:00:00+01:00")
    assert parse_eta("2027-01-15T08:00:00") == parse_eta("2027-01-15T08:00:00Z")
    assert parse_eta("not a date") is None
    assert parse_eta(12) is None


def test_last_received_succeeded_failed_times_on_the_exporter_clock(rig):
    rig.feed(sent("u1"), received("u1", ts=T0 - 3600))  # the worker's clock is an hour off: not used
    rig.advance(rig.settings.sent_hold_seconds)
    rig.feed(started("u1"))
    rig.advance(5)
    rig.feed(succeeded("u1"))
    received_at = T0  # when the exporter got task-received
    assert rig.value("celery_task_last_received_timestamp_seconds", **L) == received_at
    assert rig.value("celery_task_last_succeeded_timestamp_seconds", **L) == rig.clock.now()
    assert rig.value("celery_task_last_failed_timestamp_seconds", **L) is None  # never failed: no sample
    rig.feed(sent("u2"), received("u2"), started("u2"), failed("u2"))
    assert rig.value("celery_task_last_failed_timestamp_seconds", **L) == rig.clock.now()
    assert rig.value("celery_task_last_received_timestamp_seconds", **L) == rig.clock.now()


def test_without_task_sent_a_task_waits_a_little_for_its_workers_first_inspect_reply(rig):
    """The exporter has just started and inspect has not reported w1 yet: its tasks' events
    are held past the hold for the poller's early re-inspect, then counted under w1's queue
    (not "unknown"), each as of its arrival."""
    rig.feed(heartbeat(host="w1@h"), received("u1"), started("u1"), succeeded("u1"))
    rig.advance(rig.settings.sent_hold_seconds + 0.6)  # the hold is over: still waiting for inspect
    assert rig.family("celery_task_received") == {}
    rig.store.queues.set_worker_queues({"w1@h": ("only",)})  # the re-inspect answered
    rig.advance(0.6)
    assert counters(rig, name="app.add", queue_name="only")["succeeded"] == 1
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") is None
    # the next task of that worker is counted at once under its queue
    rig.feed(received("u2"))
    assert rig.value("celery_task_received_total", name="app.add", queue_name="only") == 2


def test_a_worker_inspect_never_reports_is_unknown_after_the_wait_and_without_inspect_after_the_hold():
    rig = Rig()
    rig.feed(received("u1", host="quiet@h"))  # e.g. worker_enable_remote_control=False
    wait = rig.settings.sent_hold_seconds + rig.settings.inspect_timeout + INSPECT_WAIT
    rig.advance(wait - 0.6)
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") is None
    rig.advance(1.0)
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1
    # with --no-inspect nothing will tell the queue: "unknown" after the hold alone
    rig = Rig(inspect=False)
    rig.feed(received("u1", host="quiet@h"))
    rig.advance(rig.settings.sent_hold_seconds + 0.1)
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1
    # a worker that inspect reports with two queues: "unknown" after the hold too
    rig = Rig()
    rig.store.queues.set_worker_queues({"w2@h": ("a", "b")})
    rig.feed(received("u1", host="w2@h"))
    rig.advance(rig.settings.sent_hold_seconds + 0.1)
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 1
