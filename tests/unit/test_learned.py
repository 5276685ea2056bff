"""Runs learned from `inspect active` (and names from `inspect reserved`) merged with the
events of the same tasks, on a fake clock: learned then its events, events then the learned
reply, a learned run that vanished, the worker's clock offset, and the replies' parsing."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from celery_exporter import learned
from celery_exporter.learned import Learned

from .conftest import T0, Rig, heartbeat, received, sent, started, succeeded

L = {"name": "app.add", "queue_name": "celery"}


def info(uuid: str, start: Optional[float], name: str = "app.add", host: str = "w1@h", exchange: str = "celery"):
    """One entry of an `inspect active` (with a start) or `inspect reserved` reply, as
    Celery's Request.info() makes it."""
    return {
        "id": uuid,
        "name": name,
        "args": "()",
        "kwargs": "{}",
        "type": name,
        "hostname": host,
        "time_start": start,
        "acknowledged": True,
        "delivery_info": {"exchange": exchange, "routing_key": "celery", "priority": 0, "redelivered": False},
        "worker_pid": 4242 if start is not None else None,
    }


def make() -> Rig:
    rig = Rig()
    rig.store.exporter.set_connected(True, rig.clock.now())
    rig.store.queues.set_worker_queues({"w1@h": ("celery", "other")}, {"w1@h": 4}, rig.clock.now())
    rig.feed(heartbeat(ts=rig.clock.now()))  # the worker's clock agrees with the exporter's
    return rig


def learn(
    rig: Rig,
    active: Dict[str, List[Any]],
    reserved: Optional[Dict[str, List[Any]]] = None,
    asked_at: Optional[float] = None,
    first: bool = True,
) -> None:
    """What the inspector hands over, applied on the next tick."""
    answered, running, waiting, refused = learned.parse(active, reserved or {})
    since = rig.store.exporter.connected_since
    assert since is not None
    at = rig.clock.now() if asked_at is None else asked_at
    rig.store.running.offer_learned(Learned(at, since, first, answered, running, waiting, refused))
    rig.tick()


def value(rig: Rig, metric: str, **labels: str) -> Optional[float]:
    return rig.value(metric, **(labels or L))


def running(rig: Rig) -> Optional[float]:
    return value(rig, "celery_task_running")


def oldest(rig: Rig) -> Optional[float]:
    return value(rig, "celery_task_running_oldest_start_timestamp_seconds")


def test_learned_runs_count_from_the_workers_start_and_their_events_count_once(caplog):
    rig = make()
    rig.advance(1)
    caplog.set_level("INFO", logger="celery_exporter.handlers")
    learn(rig, {"w1@h": [info("a", T0 - 100), info("b", T0 - 40)]})
    assert (running(rig), oldest(rig)) == (2, T0 - 100)
    lines = [r.getMessage() for r in caplog.records if "learned" in r.getMessage()]
    assert lines == [
        "learned 2 running tasks from inspect active (w1@h: 2; 0 already known, 0 ended unseen), 0 reserved;"
        " 1 workers answered"
    ]
    assert value(rig, "celery_task_started_total") == 0  # no event was seen: nothing counted

    # a's task-started comes after the reply (it was on its way): still one run
    rig.feed(started("a", ts=T0 - 100))
    assert running(rig) == 2
    assert value(rig, "celery_task_started_total") == 1
    rig.feed(succeeded("a"), succeeded("b"))
    assert (running(rig), oldest(rig)) == (0, None)
    assert value(rig, "celery_task_succeeded_total") == 2
    assert value(rig, "celery_task_runtime_seconds_count") == 2
    rig.feed(succeeded("b"))  # a duplicate is still one
    assert value(rig, "celery_task_succeeded_total") == 2

    # the same reply again (a follow-up made before the ends): finished tasks get no run
    learn(rig, {"w1@h": [info("a", T0 - 100), info("b", T0 - 40)]}, asked_at=rig.clock.now() - 0.5, first=False)
    assert running(rig) == 0
    assert value(rig, "celery_task_interrupted_total") == 0


def test_a_learned_run_of_a_lost_worker_is_interrupted_once():
    rig = make()
    learn(rig, {"w1@h": [info("a", T0 - 10)]})
    assert running(rig) == 1
    rig.advance(60)  # no heartbeat: the worker is lost while the exporter listens
    assert value(rig, "celery_task_interrupted_total") == 1
    assert running(rig) == 0
    learn(rig, {"w1@h": [info("a", T0 - 10)]}, first=False)  # (a stale reply)
    rig.advance(60)
    assert value(rig, "celery_task_interrupted_total") == 1  # once per task id


def test_a_run_from_events_is_kept_as_it_is_and_an_ended_task_gets_none():
    rig = make()
    rig.feed(sent("a"), received("a"), started("a"))  # a's run: the exporter's clock at arrival
    rig.advance(5)
    rig.feed(sent("b"), received("b"), started("b"), succeeded("b"))
    learn(rig, {"w1@h": [info("a", T0 - 3), info("b", T0 + 4)]}, asked_at=T0 + 4.5)
    assert (running(rig), oldest(rig)) == (1, T0)  # a's own run; b finished after the reply
    assert value(rig, "celery_task_started_total") == 2
    assert value(rig, "celery_task_succeeded_total") == 1


def test_a_learned_run_that_vanished_ends_uncounted_and_later_runs_stay():
    rig = make()
    learn(rig, {"w1@h": [info("a", T0 - 10)]})
    assert rig.store.running.learned_runs() == 1
    for _ in range(15):  # the worker stays up, busy
        rig.advance(2)
        rig.feed(heartbeat(ts=rig.clock.now(), active=1))
    asked = rig.clock.now()
    rig.advance(0.5)
    rig.feed(sent("c"), received("c"), started("c"))  # started after the follow-up was asked
    learn(rig, {"w1@h": []}, asked_at=asked, first=False)  # a ended unseen (its end before we listened)
    assert rig.store.running.learned_runs() == 0
    assert (running(rig), oldest(rig)) == (1, asked + 0.5)  # c's run stays
    rig.advance(60)
    assert value(rig, "celery_task_interrupted_total") == 1  # c only: a was not running


def test_a_worker_that_does_not_answer_keeps_its_runs():
    rig = make()
    learn(rig, {"w1@h": [info("a", T0 - 10)]})
    learn(rig, {"w2@h": []}, asked_at=rig.clock.now() + 1, first=False)
    assert running(rig) == 1


def test_the_start_moves_onto_the_exporters_clock_by_the_workers_offset():
    rig = make()
    rig.advance(2)
    rig.feed(heartbeat(ts=rig.clock.now() - 7.0))  # the worker's clock is 7 s behind
    learn(rig, {"w1@h": [info("a", T0 - 20)]})
    assert oldest(rig) == T0 - 13
    learn(rig, {"w1@h": [info("a", T0 - 20), info("f", T0 + 500)]}, first=False)  # f: in the future, so now
    assert oldest(rig) == T0 - 13
    assert rig.store.running._hosts["w1@h"]["f"].start == rig.clock.now()


def test_a_reply_for_a_connection_since_lost_is_not_applied():
    rig = make()
    since = rig.store.exporter.connected_since
    rig.store.exporter.set_connected(False)
    rig.advance(3)
    rig.store.exporter.set_connected(True, rig.clock.now())
    answered, running_, waiting, refused = learned.parse({"w1@h": [info("a", T0 - 10)]}, {})
    assert since is not None
    rig.store.running.offer_learned(Learned(since, since, True, answered, running_, waiting, refused))
    rig.tick()
    assert running(rig) is None
    assert rig.handler.tracker.peek("a") is None


def test_reserved_and_running_tasks_name_events_that_carry_no_name():
    rig = make()
    rig.feed(started("x"))  # no name: held, waiting for one
    learn(rig, {"w1@h": [info("x", T0 - 1)]}, {"w1@h": [info("r", None)]})
    assert running(rig) == 1
    assert value(rig, "celery_task_started_total") == 1  # the held task-started, under x's labels
    rig.feed(started("r"), succeeded("r"), succeeded("x"))
    assert value(rig, "celery_task_started_total") == 2
    assert value(rig, "celery_task_succeeded_total") == 2
    assert running(rig) == 0
    rig.settle()
    assert rig.value("celery_exporter_events_dropped_total", reason="unknown_task") == 0


def test_the_queue_comes_from_the_delivery_info_or_a_routing_key_the_worker_consumes():
    rig = make()
    entry = info("d", T0 - 1, exchange="")  # the default exchange routes by queue name
    entry["delivery_info"]["routing_key"] = "other"
    stranger = info("s", T0 - 1, exchange="topics")
    stranger["delivery_info"]["routing_key"] = "not.a.queue"  # w1 consumes two queues: unknown
    learn(rig, {"w1@h": [info("c", T0 - 1), entry, stranger]})
    assert value(rig, "celery_task_running", name="app.add", queue_name="celery") == 1
    assert value(rig, "celery_task_running", name="app.add", queue_name="other") == 1
    assert value(rig, "celery_task_running", name="app.add", queue_name="unknown") == 1


def test_a_refused_label_set_gets_no_run():
    rig = Rig(max_series=1)
    rig.store.exporter.set_connected(True, rig.clock.now())
    learn(rig, {"w1@h": [info("a", T0 - 1), info("b", T0 - 1, name="app.other")]})
    assert rig.store.running.size() == (1, 0)
    assert rig.value("celery_exporter_events_dropped_total", reason="series_limit") == 1


def test_parse_keeps_what_celery_sends_and_counts_the_rest():
    good = info("a", T0)
    answered, running_, waiting, refused = learned.parse(
        {"w1@h": [good, {"id": "b"}, "junk", info("c", float("nan")), info("d", None)], "w2@h": "no list"},
        {"w1@h": [info("r", None)], "w3@h": None},
    )
    assert answered == ("w1@h",)
    assert [(t.uuid, t.host, t.name, t.started, t.routing_key, t.queue) for t in running_] == [
        ("a", "w1@h", "app.add", T0, "celery", None)
    ]
    assert [(t.uuid, t.started) for t in waiting] == [("r", None)]
    assert refused == 6  # b (no name), junk, c (NaN start), d (no start), w2's reply, w3's reply


def test_tasks_listed_by_inspect_reserved_are_reserved_until_they_start():
    """After a restart, the tasks a worker had received and not started count in
    celery_worker_tasks_reserved (their task-received came before the exporter listened);
    a reply older than a task's start or end reserves nothing."""
    rig = make()
    rig.feed(received("late"), started("late"))  # started before the reply was applied
    rig.feed(received("gone"), started("gone"), succeeded("gone"))
    learn(rig, {"w1@h": []}, {"w1@h": [info("r1", None), info("r2", None), info("late", None), info("gone", None)]})
    assert rig.value("celery_worker_tasks_reserved", hostname="w1@h") == 2
    rig.feed(started("r1"))
    assert rig.value("celery_worker_tasks_reserved", hostname="w1@h") == 1
    rig.feed(succeeded("r1"), started("r2"), succeeded("r2"), succeeded("late"))
    assert rig.value("celery_worker_tasks_reserved", hostname="w1@h") == 0
    assert value(rig, "celery_task_succeeded_total") == 4
