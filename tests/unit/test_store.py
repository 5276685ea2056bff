"""TTL expiry, the series cap and malformed input through the whole handler path."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_exporter import catalogue

from .conftest import T0, Rig, heartbeat, received, started, succeeded


def test_task_series_expire_after_the_series_ttl():
    rig = Rig(series_ttl=3600)
    rig.feed(received("u1"), started("u1"), succeeded("u1"))
    rig.settle()
    rig.advance(3600 - rig.settle_seconds)  # held events count as of their arrival
    assert rig.value("celery_task_succeeded_total", name="app.add", queue_name="unknown") == 1
    rig.advance(1)
    assert rig.family("celery_task_") == {}  # hidden at scrape time
    assert rig.value("celery_exporter_series", kind="task") == 1  # still in memory until swept
    assert rig.store.sweep(rig.clock.now()) == 1
    assert rig.value("celery_exporter_series", kind="task") == 0
    assert rig.value("celery_exporter_series_expired_total", kind="task") == 1


def test_an_update_keeps_a_series_alive():
    rig = Rig(series_ttl=100)
    rig.feed(received("u1"))
    rig.advance(90)
    rig.feed(received("u2"))
    rig.advance(90)
    assert rig.value("celery_task_received_total", name="app.add", queue_name="unknown") == 2


def test_series_cap_refuses_new_label_sets_and_counts_them():
    rig = Rig(max_series=3)
    rig.feed(heartbeat())
    for i in range(5):
        rig.feed(received(f"u{i}", name=f"app.t{i}"))
    rig.settle()
    assert len(rig.family("celery_task_received_total")) == 2
    assert rig.value("celery_exporter_series_refused_total", kind="task") == 3
    assert rig.value("celery_exporter_events_dropped_total", reason="series_limit") == 3
    rig.feed(received("u9", name="app.t0"))  # an existing label set still counts
    rig.settle()
    assert rig.value("celery_task_received_total", name="app.t0", queue_name="unknown") == 2


HOSTILE = [
    "not a dict",
    ["nested", "list"],
    None,
    {},
    {"type": 5},
    {"type": "task-received", "uuid": 1, "timestamp": T0, "name": "x"},
    {"type": "task-received", "uuid": "u", "timestamp": "yesterday", "name": "x"},
    {"type": "task-received", "uuid": "u", "timestamp": float("nan"), "name": "x"},
    {"type": "task-received", "uuid": "u", "timestamp": T0, "name": None},
    {"type": "task-received", "uuid": "u", "timestamp": T0, "name": "x" * 100_000},
    {"type": "task-received", "uuid": "u", "timestamp": T0, "name": "evil\nname"},
    {"type": "task-sent", "uuid": "v", "timestamp": T0, "name": "ok", "queue": ["q"]},
    {"type": "task-succeeded", "uuid": "u", "timestamp": T0, "runtime": "fast"},
    {"type": "worker-heartbeat", "hostname": {"a": 1}, "timestamp": T0},
    {"type": "x" * 10_000},
]


def test_hostile_events_never_crash_and_the_exposition_still_parses(rig):
    rig.feed(*HOSTILE)
    rig.feed(received("q1", name='quote"and\\backslash'), succeeded("q1"))
    rig.settle()
    text = rig.text()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "celery_task_received" in families
    assert rig.value("celery_task_received_total", name='quote"and\\backslash', queue_name="unknown") == 1
    assert rig.value("celery_exporter_events_dropped_total", reason="bad_message") == 3
    assert rig.value("celery_exporter_events_dropped_total", reason="bad_field") >= 8
    assert rig.value("celery_exporter_events_total", type="other") == 1  # bogus types share one label


@pytest.mark.parametrize(
    "reason", ["undecodable", "bad_message", "bad_field", "unknown_task", "duplicate", "series_limit", "handler_error"]
)
def test_every_drop_reason_is_exported_from_the_start(rig, reason):
    assert rig.value("celery_exporter_events_dropped_total", reason=reason) == 0


def test_a_row_is_never_changed_by_later_events_and_an_unchanged_series_is_held_once():
    """Copy on write: a snapshot's row holds the series' own lists (no copy per scrape);
    the next change copies them first, so the row handed out before stays as it was."""
    rig = Rig()
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    tasks.observe(key, 3, T0, [(0, 0.2)], ("id-1", "w1"))
    first = tasks.snapshot_locked(T0).rows[0]
    series = tasks._series[key]
    assert first.counts is series.counts and first.hist_counts is series.hist_counts
    assert tasks.snapshot_locked(T0).rows[0] is first  # unchanged: the same row again
    tasks.observe(key, 3, T0 + 1, [(0, 0.2), (1, 3.0)], ("id-2", "w2"))
    assert first.counts[3] == 1 and sum(first.hist_counts[0]) == 1 and first.hist_counts[1] is None
    assert sum(first.native[0].buckets.values()) == 1 and first.hist_sums[0] == 0.2
    assert [e[2] for e in first.exemplars[0] if e] == ["id-1"]
    second = tasks.snapshot_locked(T0 + 1).rows[0]
    assert second is not first and second.counts[3] == 2 and sum(second.hist_counts[0]) == 2
    assert sum(second.hist_counts[1]) == 1 and sum(second.native[0].buckets.values()) == 2
    assert [e[2] for e in second.exemplars[0] if e] == ["id-2"]


def test_remembered_label_values_are_bounded_and_a_bad_value_is_never_remembered():
    from celery_exporter import events

    for i in range(events._GOOD_LABELS_MAX + 10):
        assert events.repeated_label(f"app.t{i}") == f"app.t{i}"
    assert 0 < len(events._GOOD_LABELS) <= events._GOOD_LABELS_MAX
    for bad in ("bad\x00name", "\ud800", "", "x" * (events.MAX_LABEL_LENGTH + 1), 7, None):
        assert events.repeated_label(bad) is None and events.repeated_label(bad) is None
        assert bad not in events._GOOD_LABELS
    assert events.repeated_label("app.ok") == "app.ok" and "app.ok" in events._GOOD_LABELS


def test_every_change_moves_the_label_sets_version_and_those_of_the_parts_it_touched():
    from celery_exporter.store.tasks import HISTOGRAM_PART, LAST_SEEN_PART, part_versions

    rig = Rig()
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    tasks.observe(key, 1, T0)  # received
    (first,) = tasks.snapshot_locked(T0).rows
    tasks.observe(key, 3, T0 + 1, [(0, 0.2)], ("id-1", "w1"))  # succeeded, with a runtime
    (second,) = tasks.snapshot_locked(T0 + 1).rows
    assert second.version == first.version + 1
    changed = {i for i, (a, b) in enumerate(zip(part_versions(first), part_versions(second))) if a != b}
    assert changed == {3, HISTOGRAM_PART + 0}
    # a last-seen time goes with its state's counter
    assert LAST_SEEN_PART == (1, 3, 4)
    # no change: the same row
    assert tasks.snapshot_locked(T0 + 2).rows[0] is second
    # another label set: none of the same numbers
    tasks.observe(("app.mul", "celery"), 1, T0 + 2)
    other = tasks.snapshot_locked(T0 + 2).rows[1]
    assert not set(part_versions(other)) & set(part_versions(second)) and other.version != second.version


def test_versions_are_never_handed_out_twice_not_even_to_a_label_set_made_again():
    from celery_exporter.store.tasks import part_versions

    rig = Rig(series_ttl=10)
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    tasks.observe(key, 1, T0)
    tasks.exception(key, "KeyError", T0)
    before = tasks.snapshot_locked(T0)
    seen = set(part_versions(before.rows[0])) | {before.rows[0].version, before.exceptions[0].version}
    assert rig.store.sweep(T0 + 11) == 2
    tasks.observe(key, 1, T0 + 12)
    tasks.exception(key, "KeyError", T0 + 12)
    after = tasks.snapshot_locked(T0 + 12)
    assert after.rows[0].counts == before.rows[0].counts and after.exceptions[0].total == 1
    assert not (set(part_versions(after.rows[0])) | {after.rows[0].version, after.exceptions[0].version}) & seen


def test_an_exception_row_is_replaced_at_each_count_never_changed():
    rig = Rig()
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    tasks.exception(key, "KeyError", T0)
    (first,) = tasks.snapshot_locked(T0).exceptions
    assert tasks.snapshot_locked(T0).exceptions[0] is first  # unchanged: the same row
    tasks.exception(key, "KeyError", T0 + 1)
    (second,) = tasks.snapshot_locked(T0 + 1).exceptions
    assert (first.total, second.total) == (1, 2) and second.version > first.version


def test_a_fresh_snapshot_copies_the_live_data_and_leaves_the_kept_rows_alone():
    rig = Rig()
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    tasks.observe(key, 3, T0, [(0, 0.2)], ("id-1", "w1"))
    fresh = tasks.snapshot_locked(T0, fresh=True).rows[0]
    series = tasks._series[key]
    assert not series.shared and fresh.counts == series.counts and fresh.counts is not series.counts
    assert fresh.native[0] is not series.native[0] and fresh.native[0].buckets == series.native[0].buckets
    assert tasks._rows == {}
    kept = tasks.snapshot_locked(T0).rows[0]
    assert kept.counts is series.counts and series.shared


def test_a_change_after_a_scrape_copies_only_the_histograms_it_observes():
    """Copy on write per histogram: the row a scrape holds keeps its data; the series copies
    the counters and the histogram an event observes, and keeps sharing the others."""
    rig = Rig()
    tasks = rig.store.tasks
    key = ("app.add", "celery")
    succeeded, started = catalogue.STATE_INDEX["succeeded"], catalogue.STATE_INDEX["started"]
    runtime, wait = 0, 1  # by catalogue.HISTOGRAMS
    tasks.observe(key, started, T0, [(wait, 0.1)], ("id-1", "w1"))
    tasks.observe(key, succeeded, T0, [(runtime, 0.2)], ("id-1", "w1"))
    (row,) = tasks.snapshot_locked(T0).rows
    before = tasks.snapshot_locked(T0, fresh=True).rows[0]
    tasks.observe(key, succeeded, T0 + 1, [(runtime, 3.0)], ("id-2", "w1"))
    series = tasks._series[key]
    assert series.counts is not row.counts and series.counts[succeeded] == 2 and row.counts[succeeded] == 1
    assert series.hist_counts[runtime] is not row.hist_counts[runtime]
    assert series.native[runtime] is not row.native[runtime] and series.exemplars[runtime] is not row.exemplars[runtime]
    assert series.hist_counts[wait] is row.hist_counts[wait]  # not observed: still shared
    assert series.native[wait] is row.native[wait] and series.exemplars[wait] is row.exemplars[wait]
    tasks.observe(key, started, T0 + 1, [(wait, 0.5)], ("id-2", "w1"))
    assert series.hist_counts[wait] is not row.hist_counts[wait] and sum(series.hist_counts[wait]) == 2
    # the scraped row still holds exactly what it held
    assert row.counts == before.counts and row.hist_counts == before.hist_counts and row.hist_sums == before.hist_sums
    assert [n.buckets if n else None for n in row.native] == [n.buckets if n else None for n in before.native]
    assert row.exemplars == before.exemplars
    now = tasks.snapshot_locked(T0 + 1, fresh=True).rows[0]
    assert now.hist_counts[runtime] != before.hist_counts[runtime] and now.hist_sums[runtime] == 3.2


def test_a_workers_emptied_reservations_are_kept_until_the_sweep():
    """A worker's set of reserved task ids is kept while it empties and fills, task after
    task (not made anew for each); an empty one shows no reservations and the sweep forgets it."""
    rig = Rig()
    running = rig.store.running
    running.reserve("a", "w1@h")
    running.start("a", "w1@h", ("app.add", "celery"), T0, T0)
    assert running._reserved == {"w1@h": set()} and running._reserved_on == {}
    with rig.store.lock:
        assert running.reserved_locked() == {}
    running.reserve("b", "w1@h")
    running.reserve("b", "w2@h")  # redelivered to another worker: the reservation moves
    with rig.store.lock:
        assert running.reserved_locked() == {"w2@h": 1}
    running.end("b", unreserve=True)
    rig.store.sweep(T0)
    assert running._reserved == {} and running._reserved_on == {}
