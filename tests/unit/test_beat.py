"""Beat schedule series: interval, next due time after the last run seen, and what an
entry that stopped firing looks like, driven by the fake clock."""

import datetime as dt
import threading

import pytest
from celery import Celery
from celery.schedules import crontab

from celery_exporter.beat import ScheduleError, ScheduleRefresher, entries

from .conftest import T0, Rig, received, started, succeeded


def app_with(schedule):
    app = Celery("beat-test", set_as_current=False)
    app.conf.timezone = "UTC"
    app.conf.beat_schedule = schedule
    return app


SCHEDULE = {
    "tick": {"task": "app.tick", "schedule": 60.0},
    "nightly": {"task": "reports.nightly", "schedule": crontab(hour=3, minute=0)},
    "hourly": {"task": "app.hourly", "schedule": dt.timedelta(hours=1)},
}


def beat_rig():
    return Rig(beat_entries=entries(app_with(SCHEDULE)))


def test_interval_and_next_due_before_and_after_a_run():
    rig = beat_rig()
    labels = dict(entry="tick", task="app.tick")
    # no run seen yet: the next one is due one interval after the exporter started
    assert rig.value("celery_beat_schedule_interval_seconds", **labels) == 60
    assert rig.value("celery_beat_schedule_next_due_timestamp_seconds", **labels) == pytest.approx(T0 + 60)
    assert rig.value("celery_beat_schedule_last_run_timestamp_seconds", **labels) is None
    assert rig.value("celery_beat_schedule_info", schedule="every 60s", **labels) == 1
    rig.advance(50)
    rig.feed(received("u1", name="app.tick"), started("u1"), succeeded("u1"))
    run_at = rig.clock.now()
    rig.settle()
    assert rig.value("celery_beat_schedule_last_run_timestamp_seconds", **labels) == run_at
    assert rig.value("celery_beat_schedule_next_due_timestamp_seconds", **labels) == pytest.approx(run_at + 60)
    assert rig.value("celery_beat_schedule_interval_seconds", entry="hourly", task="app.hourly") == 3600


def test_crontab_entries_get_their_gap_and_next_occurrence():
    rig = beat_rig()
    labels = dict(entry="nightly", task="reports.nightly")
    assert rig.value("celery_beat_schedule_interval_seconds", **labels) == 86400
    due = rig.value("celery_beat_schedule_next_due_timestamp_seconds", **labels)
    due_at = dt.datetime.fromtimestamp(due, tz=dt.timezone.utc)
    assert (due_at.hour, due_at.minute, due_at.second) == (3, 0, 0)
    assert 0 < due - T0 <= 86400


def test_an_entry_that_stops_firing_falls_behind_its_due_time():
    rig = beat_rig()
    labels = dict(entry="tick", task="app.tick")
    for i in range(3):  # it runs on time...
        rig.feed(received(f"t{i}", name="app.tick"))
        rig.advance(60)
    rig.settle()
    assert rig.clock.now() - rig.value("celery_beat_schedule_next_due_timestamp_seconds", **labels) < rig.settle_seconds
    rig.advance(600)  # ...then beat stops: ten minutes without a run
    overdue = rig.clock.now() - rig.value("celery_beat_schedule_next_due_timestamp_seconds", **labels)
    assert overdue == pytest.approx(600 - 60 + 60 + rig.settle_seconds, abs=1)


def test_schedule_series_do_not_expire_with_the_series_ttl():
    rig = Rig(beat_entries=entries(app_with(SCHEDULE)), series_ttl=100)
    rig.advance(10_000)
    rig.store.sweep(rig.clock.now())
    assert rig.value("celery_beat_schedule_info", entry="tick", task="app.tick", schedule="every 60s") == 1


def test_a_broken_entry_is_refused():
    with pytest.raises(ScheduleError, match="'bad' has no task name"):
        entries(app_with({"bad": {"schedule": 5}}))
    with pytest.raises(ScheduleError, match="'worse': unusable schedule"):
        entries(app_with({"worse": {"task": "t", "schedule": "every day"}}))


def test_a_failed_schedule_read_is_counted_in_its_own_metric_and_keeps_the_entries():
    rig = Rig(beat_database_app="mysite")
    loads = [lambda: entries(app_with(SCHEDULE)), lambda: 1 / 0, lambda: entries(app_with({}))]
    refresher = ScheduleRefresher(lambda: loads.pop(0)(), rig.store, 60.0, threading.Event())
    assert rig.value("celery_exporter_beat_schedule_read_errors_total") == 0
    refresher.poll_once()
    assert rig.value("celery_beat_schedule_info", entry="tick", task="app.tick", schedule="every 60s") == 1
    refresher.poll_once()  # the database is down: counted, and the last entries stay
    assert rig.value("celery_exporter_beat_schedule_read_errors_total") == 1
    assert rig.value("celery_beat_schedule_info", entry="tick", task="app.tick", schedule="every 60s") == 1
    assert not rig.family("celery_exporter_queue_poll_errors_total").get(
        ("celery_exporter_queue_poll_errors_total", frozenset({("reason", "schedule")}))
    )
    refresher.poll_once()  # back, and every entry was disabled
    assert rig.family("celery_beat_schedule_info") == {}
    assert rig.value("celery_exporter_beat_schedule_read_errors_total") == 1


def test_the_read_errors_metric_is_absent_without_a_database_schedule():
    rig = Rig(beat_entries=entries(app_with(SCHEDULE)))
    assert rig.family("celery_exporter_beat_schedule") == {}
