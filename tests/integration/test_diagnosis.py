"""The diagnosis with real workers (issue 29): a worker without task events, a publisher
without task_send_sent_event, a worker whose clock is shifted, pickle-serialized events,
--enable-events, and `celery-exporter check` on healthy and broken setups."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from celery import Celery

from .rig import BROKERS, HOST, Metrics, clean_env, executable, wait_for

pytestmark = pytest.mark.integration

HEARTBEAT = 2.0  # Celery's default heartbeat interval, which the workers keep


def succeeded(m: Metrics, name: str = "it.succeed") -> float:
    return sum(m.select("celery_task_succeeded_total", name=name).values())


def received(m: Metrics, name: str = "it.succeed") -> float:
    return sum(m.select("celery_task_received_total", name=name).values())


@pytest.mark.parametrize("broker", BROKERS)
def test_a_worker_without_task_events_is_diagnosed_then_enable_events_turns_them_on(make_rig, broker):
    rig = make_rig(broker)
    exporter = rig.start_exporter("--enable-events")
    worker = rig.start_worker(task_events=False, exporter=exporter)
    host = worker.hostname
    rig.send("it.succeed")
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 1})
    done = time.monotonic()
    exporter.wait_for(
        lambda m: m.get_value("celery_worker_task_events_enabled", hostname=host) == 0,
        20,
        what="the worker to be diagnosed with task events off",
        contains=host,
        interval=0.05,
    )
    # its first task was received before it succeeded: two heartbeats after that at most
    # (and a scrape's worth of slack)
    assert time.monotonic() - done <= 2 * HEARTBEAT + 0.5
    status, _, page = exporter.get("/")
    assert status == 200
    assert f"task_events_off ({host})" in page and "start the worker with -E" in page
    assert f"task_events_off ({host})" in exporter.proc.log_text()

    # --enable-events: the enabler asks it (it checks every 10 s), then its tasks are counted
    exporter.wait_for(
        lambda m: (m.get_value("celery_exporter_enable_events_sent_total") or 0) >= 1,
        25,
        what="enable_events to be sent",
        contains="enable_events",
    )
    assert f"sent enable_events to 1 worker(s) with task events off: {host}" in exporter.proc.log_text()

    def events_on() -> bool:  # a probe task until one is counted: the command has been applied
        rig.send("it.prime")
        try:
            exporter.wait_for(
                lambda m: m.get_value("celery_worker_task_events_enabled", hostname=host) == 1,
                3,
                what="task events from the worker",
            )
        except AssertionError:
            return False
        return True

    wait_for(events_on, 30, interval=0, what="the worker to send task events")
    rig.truth.wait({("it.prime", "celery", "succeeded"): rig.sent[("it.prime", "celery")]})
    before = exporter.metrics()
    assert succeeded(before) == 0  # the task run while its events were off was not seen
    for n in range(10):
        rig.send("it.succeed", [n])
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 11})
    counted = exporter.wait_for(
        lambda m: succeeded(m) >= 10, 15, what="the 10 tasks to be counted", contains="it.succeed"
    )
    assert (received(counted), succeeded(counted)) == (10, 10)
    seen = counted.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=host)
    later = exporter.wait_for(  # two more heartbeats: nothing else came
        lambda m: m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=host) >= seen + 2 * HEARTBEAT,
        10,
        what="two more heartbeats",
    )
    assert (received(later), succeeded(later)) == (10, 10)


def test_a_publisher_without_task_sent_events_is_named(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    rig.start_worker(exporter=exporter)
    rig.prime(exporter)  # task-sent events flow from the rig's producer
    quiet = Celery(f"it-quiet-{rig.id}", broker=rig.broker_url, set_as_current=False)
    quiet.conf.update(task_send_sent_event=False, task_ignore_result=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # after the exporter's grace for tasks published before it listened (10 s)
            quiet.send_task("it.fail", queue="celery")
            try:
                m = exporter.wait_for(
                    lambda m: m.get_value("celery_task_sent_events_missing", name="it.fail") == 1,
                    2,
                    what="it.fail to be named",
                )
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
    finally:
        quiet.close()
    assert m.get_value("celery_task_sent_events_missing", name="it.prime") is None  # it has its task-sent
    status, _, page = exporter.get("/")
    assert "task_sent_missing (it.fail)" in page and "task_send_sent_event=True" in page


def shifted_clock(tmp: Path, offset: float) -> dict:
    """The environment of a worker whose time.time() runs `offset` seconds ahead, from a
    sitecustomize module loaded before Celery is imported."""
    site = tmp / "shifted-clock"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n_real = time.time\ntime.time = lambda: _real() + %r\n" % offset
    )
    here = Path(__file__).parent
    return {"PYTHONPATH": f"{site}:{here}"}


def test_a_worker_with_a_shifted_clock_shows_its_skew(make_rig, tmp_path):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    offset = 42.0
    ahead = rig.start_worker(env=shifted_clock(tmp_path, offset), exporter=exporter)
    normal = rig.start_worker(exporter=exporter)

    def skew(m: Metrics, worker) -> float:
        value = m.get_value("celery_worker_clock_skew_seconds", hostname=worker.hostname)
        return value if value is not None else float("nan")

    exporter.wait_for(
        lambda m: abs(skew(m, ahead) - offset) < 0.5 and abs(skew(m, normal)) < 0.5,
        10,
        what="the skews: 42 s and 0, each within 0.5 s",
        contains="skew",
    )
    status, _, page = exporter.get("/")
    assert f"clock_skew ({ahead.hostname}): its clock is 42" in page
    assert f"clock_skew ({normal.hostname})" not in page


@pytest.mark.parametrize("broker", BROKERS)
def test_pickle_serialized_events_give_the_accept_content_hint_and_count_as_dropped(make_rig, broker):
    rig = make_rig(broker)
    exporter = rig.start_exporter()
    rig.start_worker(env={"IT_EVENT_SERIALIZER": "pickle"})
    m = exporter.wait_for(
        lambda m: (m.get_value("celery_exporter_events_undecodable_total", content_type="pickle") or 0) >= 2,
        15,
        what="pickle heartbeats to be refused",
        contains="undecodable",
    )
    assert m.get_value("celery_exporter_events_dropped_total", reason="undecodable") >= 2
    assert not m.select("celery_worker_up")  # nothing read from them
    status, _, page = exporter.get("/")
    assert "--accept-content json,pickle" in page
    assert "--accept-content json,pickle" in exporter.proc.log_text()


# -- celery-exporter check ----------------------------------------------------------------


def check(broker_url: str, *extra: str, listen: str = "8s") -> subprocess.Popen:
    return subprocess.Popen(
        [executable("celery-exporter"), "check", "--broker-url", broker_url, "--listen", listen, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(TZ="UTC"),
    )


def finish(proc: subprocess.Popen, timeout: float = 60, send=None) -> tuple:
    """The check's exit code and output; `send()` publishes a task every half second while it
    listens (the workload it diagnoses)."""
    if send is not None:
        wait_for(lambda: proc.poll() is not None or send() and False, timeout, interval=0.5, what="the check to end")
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_check_on_a_healthy_setup_exits_0(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    worker = rig.start_worker(exporter=exporter)
    proc = check(rig.broker_url, "--output", "json", listen="6s")
    code, out, err = finish(proc, send=lambda: rig.send("it.succeed"))
    report = json.loads(out)
    assert code == 0, out + err
    assert report["problems"] == [] and report["reachable"] is True
    assert [w["hostname"] for w in report["workers"]] == [worker.hostname]
    assert report["workers"][0]["task_events"] is True
    assert report["task_sent_events"] >= 1
    assert "celery" in report["queues"]


def test_check_names_a_worker_without_task_events_and_exits_1(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    worker = rig.start_worker(task_events=False, exporter=exporter)
    proc = check(rig.broker_url, listen="10s")
    code, out, err = finish(proc, send=lambda: rig.send("it.succeed"))
    print(out)  # the note shows a broken setup's report
    assert code == 1, out + err
    assert f"task_events_off ({worker.hostname})" in out and "start the worker with -E" in out
    assert "task events OFF" in out


def test_check_names_pickle_events_and_tasks_without_task_sent(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter()
    rig.start_worker(exporter=exporter)
    rig.start_worker(env={"IT_EVENT_SERIALIZER": "pickle"})
    quiet = Celery(f"it-quiet-{rig.id}", broker=rig.broker_url, set_as_current=False)
    quiet.conf.update(task_send_sent_event=False, task_ignore_result=True)
    proc = check(rig.broker_url, "--output", "json", listen="8s")
    try:
        code, out, err = finish(proc, send=lambda: quiet.send_task("it.fail", queue="celery"))
    finally:
        quiet.close()
    report = json.loads(out)
    assert code == 1, out + err
    kinds = {(p["kind"], p["subject"]) for p in report["problems"]}
    assert ("undecodable_events", "pickle") in kinds
    assert ("task_sent_missing", "it.fail") in kinds
    assert report["undecodable"]["pickle"] >= 1


def test_check_on_an_unreachable_broker_exits_2():
    code, out, err = finish(check(f"redis://{HOST}:1/0", listen="2s"), timeout=30)
    assert code == 2, out + err
    assert "UNREACHABLE" in out
