"""Worker liveness from real heartbeats: a SIGKILLed worker turns to up 0 after the
timeout and stays visible, a worker stopped with SIGTERM leaves at once (worker-offline),
and a worker in another time zone than the exporter stays up with sane durations."""

from __future__ import annotations

import signal
import time

import pytest

from .rig import BROKERS, WORKER_TIMEOUT, Metrics

pytestmark = pytest.mark.integration

HEARTBEAT_MISSES = 3  # the exporter's effective timeout: max(--worker-timeout, 3 x freq)


def last_heartbeat(m: Metrics, hostname: str):
    return m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=hostname)


@pytest.mark.parametrize("broker", BROKERS)
def test_sigkilled_worker_goes_down_and_stays_listed(make_rig, broker):
    rig = make_rig(broker)
    exporter = rig.start_exporter()  # --worker-ttl 60s
    short_ttl = 8.0
    brief = rig.start_exporter("--worker-ttl", f"{short_ttl:g}s")  # same events, shorter TTL
    victim = rig.start_worker(exporter=exporter)
    control = rig.start_worker(exporter=exporter)  # stays alive: liveness is per worker
    brief.wait_for(
        lambda m: m.get_value("celery_worker_up", hostname=victim.hostname) == 1,
        10,
        what="the second exporter to see the worker",
        contains=victim.hostname,
    )

    m = exporter.metrics()
    freq = m.get_value("celery_worker_heartbeat_interval_seconds", hostname=victim.hostname)
    assert freq == 2.0
    timeout = max(WORKER_TIMEOUT, HEARTBEAT_MISSES * freq)

    victim.proc.signal_group(signal.SIGKILL)  # the main process and its pool children
    killed_at = time.time()
    assert victim.proc.popen.wait(5) == -signal.SIGKILL

    # Poll until up turns 0, remembering the last scrape that still said 1.
    seen = {}

    def down(m: Metrics) -> bool:
        up = m.get_value("celery_worker_up", hostname=victim.hostname)
        assert up in (0.0, 1.0), f"the killed worker's series vanished or is odd: up={up}"
        if up == 1.0:
            seen["last_up"] = m
        return up == 0.0

    m = exporter.wait_for(
        down, timeout + 5, what="the killed worker to show up 0", contains=victim.hostname, interval=0.05
    )
    went_down = m.after
    print(f"killed -> up 0 after {went_down - killed_at:.2f} s (effective timeout {timeout:g} s)")

    hb = last_heartbeat(m, victim.hostname)
    assert hb is not None and hb < killed_at + 0.5, "a heartbeat after the kill?"
    # Down exactly when the last heartbeat is older than the effective timeout...
    assert went_down - hb > timeout - 0.05, (went_down - hb, timeout)
    if "last_up" in seen:  # ...and not before
        up_m = seen["last_up"]
        age = up_m.before - last_heartbeat(up_m, victim.hostname)
        assert age <= timeout + 0.05, (age, timeout)
    # so at most the timeout (+ polling margin) after the kill.
    assert went_down - killed_at <= timeout + 1.0, went_down - killed_at
    assert m.get_value("celery_worker_up", hostname=control.hostname) == 1

    # It stays listed with up 0 and a frozen last heartbeat (alerts can fire), while the
    # control worker stays up; the exporter with the short TTL drops it after its TTL.
    def long_ttl_keeps_it(m: Metrics) -> None:
        assert m.get_value("celery_worker_up", hostname=victim.hostname) == 0
        assert last_heartbeat(m, victim.hostname) == hb
        assert list(m.select("celery_worker_info", hostname=victim.hostname).values()) == [1.0]
        assert m.get_value("celery_worker_up", hostname=control.hostname) == 1

    def short_ttl_dropped_it(m: Metrics) -> bool:
        long_ttl_keeps_it(exporter.metrics())
        up = m.get_value("celery_worker_up", hostname=victim.hostname)
        # The exporter's clock read lies between m.before and m.after.
        if up is not None:  # still listed: not older than the TTL
            assert up == 0 and m.before - hb <= short_ttl + 0.05, (up, m.before - hb)
            return False
        assert m.after - hb > short_ttl - 0.05, f"dropped {m.after - hb:.2f} s after its last heartbeat"
        return True

    m = brief.wait_for(
        short_ttl_dropped_it,
        short_ttl + 5,
        what="the short-TTL exporter to drop the worker",
        contains="celery_worker_up",
        interval=0.05,
    )
    print(f"short-TTL exporter dropped it {m.after - hb:.2f} s after its last heartbeat (TTL {short_ttl:g} s)")
    assert not any(victim.hostname in str(labels) for (_, labels) in m)
    assert m.get_value("celery_worker_up", hostname=control.hostname) == 1
    final = exporter.metrics()
    long_ttl_keeps_it(final)
    assert final.get_value("celery_exporter_events_total", type="worker-offline") is None


@pytest.mark.parametrize("broker", BROKERS)
def test_sigtermed_worker_leaves_at_once(make_rig, broker):
    rig = make_rig(broker)
    exporter = rig.start_exporter()
    worker = rig.start_worker(exporter=exporter)
    other = rig.start_worker(exporter=exporter)

    worker.proc.signal(signal.SIGTERM)  # warm shutdown: the worker sends worker-offline
    stopped_at = time.time()

    def gone(m: Metrics) -> bool:
        return not any(worker.hostname in str(labels) for (_, labels) in m)

    m = exporter.wait_for(
        gone, WORKER_TIMEOUT, what="the stopped worker's series to disappear", contains=worker.hostname, interval=0.05
    )
    elapsed = time.time() - stopped_at
    print(f"SIGTERM -> series gone after {elapsed:.2f} s")
    # Well before the worker timeout: it left on worker-offline, not on heartbeat age.
    assert elapsed < WORKER_TIMEOUT - 1.0, elapsed
    assert m.get_value("celery_exporter_events_total", type="worker-offline") == 1
    assert m.get_value("celery_worker_up", hostname=other.hostname) == 1

    assert worker.proc.popen.wait(10) == 0
    # Nothing brings it back once the process is gone.
    m = exporter.metrics()
    assert not any(worker.hostname in str(labels) for (_, labels) in m)
    assert m.get_value("celery_worker_up", hostname=other.hostname) == 1


@pytest.mark.parametrize("broker", BROKERS)
def test_worker_in_another_time_zone(make_rig, broker):
    """Worker in Europe/Berlin, exporter in UTC (the exporter runs with TZ=UTC)."""
    rig = make_rig(broker)
    exporter = rig.start_exporter()
    worker = rig.start_worker(exporter=exporter, env={"TZ": "Europe/Berlin"})

    # Up for several heartbeats in a row, the heartbeat time advancing and sane.
    beats = []

    def three_more_beats(m: Metrics) -> bool:
        assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1, "worker went down"
        hb = last_heartbeat(m, worker.hostname)
        assert abs(hb - time.time()) < 10, f"last heartbeat {hb} is off by {hb - time.time():.0f} s"
        if not beats or hb > beats[-1]:
            beats.append(hb)
        return len(beats) >= 4

    exporter.wait_for(three_more_beats, 15, what="three more heartbeats", contains=worker.hostname)
    assert beats == sorted(beats)

    rig.prime(exporter)
    rig.send("it.sleep", [0.2])
    rig.truth.wait({("it.sleep", "celery", "succeeded"): 1})
    # Ground truth: the worker really ran at a non-UTC offset (hours west: -1 or -2).
    assert float(rig.truth.value("worker_utcoffset")) in (-1.0, -2.0)

    labels = dict(name="it.sleep", queue_name="celery")
    m = exporter.wait_for(
        lambda m: (
            m.get_value("celery_task_succeeded_total", **labels) == 1
            and m.get_value("celery_task_queue_wait_seconds_count", **labels) == 1
        ),
        15,
        what="it.sleep to be counted",
        contains="it.sleep",
    )
    assert m.get_value("celery_task_sent_total", **labels) == 1
    assert m.get_value("celery_task_runtime_seconds_count", **labels) == 1
    assert 0.15 <= m.get_value("celery_task_runtime_seconds_sum", **labels) <= 5
    assert m.get_value("celery_task_prefetch_wait_seconds_count", **labels) == 1
    # An hour of time-zone error would show here (wait times are differences of event
    # timestamps, the queue wait across two processes in different zones).
    assert 0 <= m.get_value("celery_task_queue_wait_seconds_sum", **labels) < 60
    assert 0 <= m.get_value("celery_task_prefetch_wait_seconds_sum", **labels) < 60
    assert m.bucket("celery_task_queue_wait_seconds", 60.0, **labels) == 1
    assert m.get_value("celery_worker_up", hostname=worker.hostname) == 1
