"""The diagnosis from the event stream (diagnosis.py), on the fake clock: task events off per
worker, clock skew, heartbeat interval vs --worker-timeout, task-sent missing, undecodable
events by content type; the metrics, the status page lines, the log lines and their expiry."""

import logging
import threading

from celery_exporter import diagnosis
from celery_exporter.check import Report
from celery_exporter.clock import FakeClock
from celery_exporter.poller import ENABLE_EVENTS_RESEND, EventsEnabler, PollError
from celery_exporter.streams import UndecodableMessage
from celery_exporter.web import Web

from .conftest import Rig, heartbeat, received, sent, started, succeeded

HB = 2.0  # heartbeat interval


def beats(rig, processed, host="w1@h", skew=0.0, delay=0.0):
    """One heartbeat sent `skew` seconds off the exporter's clock, arriving `delay` late."""
    rig.clock.advance(delay)
    rig.feed(heartbeat(host=host, ts=rig.clock.now() - delay + skew, processed=processed))
    rig.clock.advance(HB - delay)


def found(rig):
    """The problems found, but those of the rig's own state (it never connects to a broker)."""
    snap = rig.store.snapshot(rig.clock.now())
    return [p for p in diagnosis.problems(snap, rig.settings) if p.kind != diagnosis.NOT_CONNECTED]


def enabled(rig, host="w1@h"):
    return rig.value("celery_worker_task_events_enabled", hostname=host)


def test_a_worker_without_task_events_is_diagnosed_on_the_second_heartbeat_after_its_first_task(rig, caplog):
    beats(rig, 0)
    beats(rig, 0)
    assert enabled(rig) is None  # no task yet: not known
    beats(rig, 1)  # its first task: the grace heartbeat (its task events may be on their way)
    assert enabled(rig) is None
    with caplog.at_level(logging.WARNING, logger="celery_exporter"):
        beats(rig, 1)  # two heartbeat intervals after the task at most
        beats(rig, 2)
    assert enabled(rig) == 0
    lines = [r.getMessage() for r in caplog.records if "task_events_off" in r.getMessage()]
    assert lines == ["task_events_off (w1@h): its heartbeats show tasks processed but no task event came from it. "
                     f"Fix: {diagnosis.TASK_EVENTS_FIX}"]  # fmt: skip
    page = Web(rig.settings, rig.store, rig.collector, rig.process_registry, rig.clock).status_page()
    assert "task_events_off (w1@h)" in page and "enable_events" in page and "<td>OFF</td>" in page


def test_task_events_from_the_worker_say_on_and_clear_the_diagnosis(rig):
    beats(rig, 0)
    beats(rig, 1)
    rig.feed(received("t1"), started("t1"), succeeded("t1"))  # batched after the heartbeat
    beats(rig, 1)
    beats(rig, 1)
    assert enabled(rig) == 1
    beats(rig, 2)
    beats(rig, 3)  # task events turned off on the worker (`celery control disable_events`)
    assert enabled(rig) == 0
    rig.feed(received("t9"))  # turned on again (--enable-events, or a restart with -E)
    assert enabled(rig) == 1


def test_a_steady_flow_with_events_is_never_diagnosed_off(rig):
    beats(rig, 0)
    for n in range(1, 30):
        rig.feed(received(f"t{n}"), started(f"t{n}"), succeeded(f"t{n}"))
        beats(rig, n)
    assert enabled(rig) == 1


def test_a_restart_resets_the_count_and_an_idle_worker_stays_unknown(rig):
    beats(rig, 50)
    beats(rig, 0)  # restarted: processed went down
    beats(rig, 0)
    beats(rig, 0)
    assert enabled(rig) is None


def test_clock_skew_is_the_least_delayed_heartbeat_and_is_reported_once(rig, caplog):
    with caplog.at_level(logging.WARNING, logger="celery_exporter"):
        beats(rig, 0, skew=30.0, delay=1.5)  # a slow delivery: 28.5 s seen
        assert rig.value("celery_worker_clock_skew_seconds", hostname="w1@h") == 28.5
        beats(rig, 0, skew=30.0, delay=0.01)
        beats(rig, 0, skew=30.0, delay=0.9)
    assert abs(rig.value("celery_worker_clock_skew_seconds", hostname="w1@h") - 29.99) < 1e-6
    assert [r.getMessage()[:63] for r in caplog.records if "clock_skew" in r.getMessage()] == [
        "clock_skew (w1@h): its clock is 28.5 s ahead of the exporter's."
    ]
    beats(rig, 0, skew=-5.0, host="w2@h")
    problems = found(rig)
    assert [(p.kind, p.subject) for p in problems] == [("clock_skew", "w1@h"), ("clock_skew", "w2@h")]
    assert "5.0 s behind" in problems[1].seen


def test_skew_within_the_tolerance_is_no_problem(rig):
    beats(rig, 0, skew=0.4, delay=0.2)
    assert abs(rig.value("celery_worker_clock_skew_seconds", hostname="w1@h") - 0.2) < 1e-6
    assert found(rig) == []


def test_a_heartbeat_interval_that_does_not_fit_the_worker_timeout():
    rig = Rig(worker_timeout=30.0)
    rig.feed(heartbeat(host="fits@h", freq=10.0), heartbeat(host="slow@h", freq=60.0))
    assert rig.value("celery_worker_heartbeat_interval_fits", hostname="fits@h") == 1
    assert rig.value("celery_worker_heartbeat_interval_fits", hostname="slow@h") == 0
    (problem,) = found(rig)
    assert problem.kind == "heartbeat_interval" and problem.subject == "slow@h"
    assert "--heartbeat-interval 10 or less" in problem.fix and "--worker-timeout 180s" in problem.fix


def test_tasks_received_without_task_sent_are_named_after_the_grace(rig, caplog):
    rig.feed(heartbeat())
    rig.feed(received("early", name="app.early"))  # may have been published before we listened
    rig.advance(diagnosis_grace())
    with caplog.at_level(logging.WARNING, logger="celery_exporter"):
        rig.feed(received("a1", name="app.a"), received("a2", name="app.a"), received("b1", name="app.b"))
        rig.settle()
    assert rig.family("celery_task_sent_events_missing") == {
        ("celery_task_sent_events_missing", frozenset({("name", "app.a")})): 1,
        ("celery_task_sent_events_missing", frozenset({("name", "app.b")})): 1,
    }
    assert len([r for r in caplog.records if "task_sent_missing" in r.getMessage()]) == 2  # once per name
    (problem,) = found(rig)
    assert problem.subject == "app.a, app.b" and "task_send_sent_event=True" in problem.fix
    rig.feed(sent("a3", name="app.a"))  # its publisher sends task-sent now
    assert set(rig.family("celery_task_sent_events_missing")) == {
        ("celery_task_sent_events_missing", frozenset({("name", "app.b")}))
    }


def test_task_names_missing_their_task_sent_expire_with_the_series_ttl():
    rig = Rig(series_ttl=600.0, sweep_interval=60.0)
    rig.feed(received("a0", name="app.a"))
    rig.advance(diagnosis_grace())
    rig.feed(received("a1", name="app.a"))
    rig.settle()
    assert rig.value("celery_task_sent_events_missing", name="app.a") == 1
    rig.advance(601)
    assert rig.family("celery_task_sent_events_missing") == {}  # hidden at once
    rig.store.sweep(rig.clock.now())  # (the receiver's tick sweeps every --sweep-interval)
    assert rig.store.diagnosis.snapshot_locked().sent_missing == {}  # removed from memory


def test_worker_signs_expire_with_the_worker():
    rig = Rig(worker_timeout=4.0, worker_ttl=60.0)
    beats(rig, 0, skew=3.0)
    beats(rig, 1)
    beats(rig, 2)
    assert enabled(rig) == 0
    rig.advance(61)
    assert rig.family("celery_worker_") == {}


def test_undecodable_events_are_dropped_and_counted_by_content_type(rig, caplog):
    with caplog.at_level(logging.WARNING, logger="celery_exporter"):
        for _ in range(3):
            rig.handler.undecodable(UndecodableMessage("ContentDisallowed: pickle", "application/x-python-serialize"))
        rig.handler.undecodable(UndecodableMessage("bad", "text/evil\x00"))
    assert rig.value("celery_exporter_events_undecodable_total", content_type="pickle") == 3
    assert rig.value("celery_exporter_events_undecodable_total", content_type="other") == 1
    assert rig.value("celery_exporter_events_dropped_total", reason="undecodable") == 4
    hints = [r.getMessage() for r in caplog.records if "undecodable events" in r.getMessage()]
    assert len(hints) == 2 and "--accept-content json,pickle" in hints[0]
    problems = found(rig)
    assert [(p.subject, "--accept-content json,pickle" in p.fix) for p in problems] == [
        ("other", False),
        ("pickle", True),
    ]


def test_content_type_labels_are_a_fixed_set():
    assert diagnosis.content_type_label("application/x-yaml") == "yaml"
    assert diagnosis.content_type_label("") == "json"
    assert diagnosis.content_type_label(None) == "other"
    assert diagnosis.content_type_label("application/x-" + "a" * 1000) == "other"


class FakeBackend:
    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    def enable_events(self, hostnames):
        if self.fail:
            raise PollError("enable_events", "boom")
        self.sent.append(list(hostnames))

    def close(self):
        pass


def test_the_enabler_asks_the_workers_diagnosed_off_and_again_after_the_resend_interval(caplog):
    rig = Rig(enable_events=True)
    clock: FakeClock = rig.clock
    for host in ("on@h", "off@h", "off2@h"):
        rig.feed(heartbeat(host=host, processed=0))
    rig.feed(received("t1", host="on@h"))
    for n in (1, 2):
        rig.clock.advance(HB)
        rig.feed(received(f"on{n}", host="on@h"))
        rig.feed(*(heartbeat(host=h, processed=n) for h in ("on@h", "off@h", "off2@h")))
    backend = FakeBackend()
    enabler = EventsEnabler(rig.settings, rig.store, clock, threading.Event(), backend)
    with caplog.at_level(logging.INFO, logger="celery_exporter"):
        enabler.poll_once()
    assert backend.sent == [["off2@h", "off@h"]]
    assert "sent enable_events to 2 worker(s) with task events off: off2@h, off@h" in caplog.text
    enabler.poll_once()
    assert len(backend.sent) == 1  # not again before the resend interval
    rig.feed(received("t2", host="off@h"))  # it took effect on one of them
    clock.advance(ENABLE_EVENTS_RESEND)
    rig.feed(*(heartbeat(host=h, processed=3) for h in ("on@h", "off@h", "off2@h")))
    enabler.poll_once()
    assert backend.sent == [["off2@h", "off@h"], ["off2@h"]]
    assert rig.value("celery_exporter_enable_events_sent_total") == 3


def test_a_failed_broadcast_is_counted_as_a_poll_error_and_nothing_as_sent():
    rig = Rig(enable_events=True)
    beats(rig, 0)
    beats(rig, 1)
    beats(rig, 2)
    EventsEnabler(rig.settings, rig.store, rig.clock, threading.Event(), FakeBackend(fail=True)).poll_once()
    assert rig.value("celery_exporter_enable_events_sent_total") == 0
    assert rig.value("celery_exporter_queue_poll_errors_total", reason="enable_events") == 1


def test_the_enable_events_counter_is_absent_without_the_flag(rig):
    assert rig.family("celery_exporter_enable_events") == {}


def test_the_check_report_exit_codes_and_formats():
    problem = diagnosis.events_off_problem("w1@h")
    worker = {"hostname": "w1@h", "up": True, "task_events": False, "clock_skew": 0.01, "heartbeat_interval": 2.0}
    report = Report("redis://h/0", True, "", 15.0, "redis-py", [worker], 0, 3, {"celery": 4}, {}, [], [problem])
    assert report.exit_code == 1
    assert "task events OFF" in report.as_table() and "celery=4" in report.as_table()
    assert '"exit_code": 1' in report.as_json() and '"kind": "task_events_off"' in report.as_json()
    healthy = Report("redis://h/0", True, "", 15.0, "redis-py", [], 0, 0, {}, {}, [], [])
    assert healthy.exit_code == 0 and "no problems found" in healthy.as_table()
    assert Report("redis://h/0", False, "refused", 0.0, None, [], 0, 0, {}, {}, [], []).exit_code == 2


def diagnosis_grace() -> float:
    from celery_exporter.handlers import SENT_MISSING_GRACE

    return SENT_MISSING_GRACE


def test_worker_problems_are_logged_for_the_first_workers_of_each_kind_only(caplog):
    rig = Rig(worker_timeout=4.0)  # 3 heartbeats of 2 s do not fit
    with caplog.at_level(logging.WARNING, logger="celery_exporter"):
        for n in range(40):  # pods renamed by every deployment
            rig.feed(heartbeat(host=f"pod-{n}@h"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6, lines
    assert lines[0].startswith("heartbeat_interval (pod-0@h): its heartbeat interval (2 s) times 3 exceeds")
    assert "--heartbeat-interval 1.3 or less" in lines[0] and "--worker-timeout 6s or more" in lines[0]
    assert lines[5] == "more workers with heartbeat_interval: see the status page (/) and the metrics; not logged again"
    assert rig.value("celery_worker_heartbeat_interval_fits", hostname="pod-39@h") == 0
