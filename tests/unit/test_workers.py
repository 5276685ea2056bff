"""Worker liveness from heartbeat age on the exporter's clock."""

import pytest
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from celery_exporter.clock import Clock
from celery_exporter.collector import CeleryCollector
from celery_exporter.exposition import Encoders
from celery_exporter.handlers import Handler
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.web import Web

from .conftest import T0, Rig, heartbeat


def up(rig, host="w1@h"):
    return rig.value("celery_worker_up", hostname=host)


def test_heartbeat_gives_up_and_worker_gauges(rig):
    rig.feed(heartbeat(etype="worker-online", active=0, processed=0))
    rig.clock.advance(2)
    rig.feed(heartbeat(active=3, processed=41))
    assert up(rig) == 1
    assert rig.value("celery_worker_tasks_active", hostname="w1@h") == 3
    assert rig.value("celery_worker_tasks_processed_total", hostname="w1@h") == 41
    assert rig.value("celery_worker_last_heartbeat_timestamp_seconds", hostname="w1@h") == T0 + 2
    assert rig.value("celery_worker_heartbeat_interval_seconds", hostname="w1@h") == 2.0
    assert rig.value("celery_worker_info", hostname="w1@h", sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux") == 1


def test_silent_worker_goes_down_after_the_timeout_and_stays_until_the_ttl(rig):
    rig.feed(heartbeat())
    rig.advance(30)
    assert up(rig) == 1
    rig.advance(0.5)
    assert up(rig) == 0  # SIGKILLed: no worker-offline, the series stays so alerts can fire
    assert rig.value("celery_worker_last_heartbeat_timestamp_seconds", hostname="w1@h") == T0
    rig.advance(rig.settings.worker_ttl - 30)
    assert up(rig) is None  # past the TTL: gone from scrapes at once...
    assert rig.store.sweep(rig.clock.now()) == 1  # ...and from memory at the next sweep
    assert rig.value("celery_exporter_series_expired_total", kind="worker") == 1


def test_worker_offline_leaves_at_once_and_a_returning_worker_is_up_again(rig):
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    rig.feed(heartbeat(host="w2@h", etype="worker-offline"))
    assert up(rig, "w2@h") is None
    assert up(rig) == 1
    rig.advance(100)
    assert up(rig) == 0
    rig.feed(heartbeat(etype="worker-online"))
    assert up(rig) == 1


def test_timeout_follows_a_long_heartbeat_interval(rig):
    rig.feed(heartbeat(freq=60.0))
    rig.advance(150)
    assert up(rig) == 1  # 3 missed intervals = 180 s, longer than the 30 s default
    rig.advance(31)
    assert up(rig) == 0


def test_wakeup_heartbeat_keeps_freq_and_counts(rig):
    rig.feed(heartbeat(active=2, processed=9))
    rig.feed(
        {
            "type": "worker-heartbeat",
            "hostname": "w1@h",
            "timestamp": T0,
            "freq": 5.0,
            "sw_ident": "py-celery",
            "sw_ver": "5.7.0",
            "sw_sys": "Linux",
        }
    )
    assert rig.value("celery_worker_heartbeat_interval_seconds", hostname="w1@h") == 2.0
    assert rig.value("celery_worker_tasks_active", hostname="w1@h") == 2
    assert rig.value("celery_worker_tasks_processed_total", hostname="w1@h") == 9


def test_liveness_uses_the_exporter_clock_not_the_sender_timestamp(rig):
    # A worker whose clock is an hour behind (or whose events were "localised") is still up.
    rig.feed(heartbeat(ts=T0 - 3600))
    assert up(rig) == 1


def test_two_workers_on_one_host_stay_apart(rig):
    rig.feed(heartbeat(host="celery@host1"), heartbeat(host="other@host1"))
    assert up(rig, "celery@host1") == 1 and up(rig, "other@host1") == 1


def test_freezegun_drives_the_default_clock():
    settings = Settings()
    store = Store(settings)
    handler = Handler(store, settings)
    collector = CeleryCollector(store, settings, Clock())
    with freeze_time("2027-03-01 12:00:00") as frozen:
        handler.handle(heartbeat(), Clock().now())

        def values():
            return {
                s.labels["hostname"]: s.value
                for f in text_string_to_metric_families(Encoders().encode(collector.families()).decode())
                if f.name == "celery_worker_up"
                for s in f.samples
            }

        assert values() == {"w1@h": 1.0}
        frozen.tick(45)
        assert values() == {"w1@h": 0.0}


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "worker-heartbeat", "timestamp": T0},  # no hostname
        {"type": "worker-heartbeat", "hostname": "w@h", "timestamp": "now"},  # wrong type
        {"type": "worker-heartbeat", "hostname": "w\n@h", "timestamp": T0},  # control character
        {"type": "worker-heartbeat", "hostname": "w" * 1000, "timestamp": T0},
    ],
)
def test_malformed_worker_events_are_dropped_and_counted(rig, bad):
    rig.feed(bad)
    assert rig.family("celery_worker_up") == {}
    assert rig.value("celery_exporter_events_dropped_total", reason="bad_field") == 1


def test_wrongly_typed_counts_are_ignored_not_fatal(rig):
    rig.feed(heartbeat(active="many", processed=-1))
    assert up(rig) == 1
    assert rig.value("celery_worker_tasks_active", hostname="w1@h") is None


def test_one_liveness_rule_for_the_metric_the_status_page_and_the_inspector():
    from celery_exporter.liveness import Liveness

    rule = Liveness(worker_timeout=30.0, worker_ttl=900.0)
    assert rule.timeout(None) == 30.0 and rule.timeout(2.0) == 30.0 and rule.timeout(20.0) == 60.0
    assert rule.is_up(T0, 20.0, T0 + 60.0) and not rule.is_up(T0, 20.0, T0 + 60.5)
    assert rule.is_kept(T0, T0 + 900.0) and not rule.is_kept(T0, T0 + 900.5)

    rig = Rig()
    rig.feed(heartbeat("slow@h", freq=20.0), heartbeat("fast@h", freq=2.0))
    rig.advance(45)  # past --worker-timeout, within 3 x slow@h's interval
    assert rig.value("celery_worker_up", hostname="slow@h") == 1
    assert rig.value("celery_worker_up", hostname="fast@h") == 0
    assert rig.store.workers.up_count(rig.clock.now()) == 1
    page = Web(rig.settings, rig.store, rig.collector, rig.process_registry, rig.clock).status_page()
    assert "<td>slow@h</td><td>up</td>" in page and "<td>fast@h</td><td>DOWN</td>" in page


def test_a_count_beyond_what_a_sample_holds_exactly_is_not_taken(rig):
    """2**53 + 1 would print as an integer in text and round in protobuf: refused as malformed,
    the worker's last good count stays."""
    rig.feed(heartbeat(etype="worker-online", active=0, processed=2**53))
    assert rig.value("celery_worker_tasks_processed_total", hostname="w1@h") == 2**53
    rig.feed(heartbeat(active=1, processed=41))
    rig.feed(heartbeat(active=2, processed=2**53 + 1))
    assert rig.value("celery_worker_tasks_processed_total", hostname="w1@h") == 41
    assert rig.value("celery_worker_tasks_active", hostname="w1@h") == 2
