"""Tasks in flight: the running gauge, the oldest start, and tasks interrupted when their
worker is lost or redelivered afterwards, in every order the events can come in."""

import pytest

from .conftest import T0, Rig, failed, heartbeat, received, rejected, retried, revoked, sent, started, succeeded

L = {"name": "app.add", "queue_name": "celery"}
TIMEOUT = 30.0  # Settings().worker_timeout; with freq=2 the effective timeout stays 30 s


def connected_rig(**overrides) -> Rig:
    rig = Rig(**overrides)
    rig.store.exporter.set_connected(True, rig.clock.now())
    return rig


@pytest.fixture
def rig():
    return connected_rig()


def running(rig, **labels):
    return rig.value("celery_task_running", **(labels or L))


def oldest(rig, **labels):
    return rig.value("celery_task_running_oldest_start_timestamp_seconds", **(labels or L))


def interrupted(rig, **labels):
    return rig.value("celery_task_interrupted_total", **(labels or L))


def redelivered(rig, **labels):
    return rig.value("celery_task_redelivered_total", **(labels or L))


def begin(rig, uuid, host="w1@h"):
    rig.feed(sent(uuid), received(uuid, host=host), started(uuid, host=host))


def keep_alive(rig, seconds, *hosts, step=2.0):
    """Advance the clock by `seconds`, with heartbeats from `hosts` every `step`, each
    reporting as active the tasks the store has running there (as a real worker would)."""
    elapsed = 0.0
    while elapsed < seconds:
        dt = min(step, seconds - elapsed)
        rig.advance(dt)
        elapsed += dt
        rig.feed(*(heartbeat(host=h, ts=rig.clock.now(), active=active_on(rig, h)) for h in hosts))


def active_on(rig, host):
    return len(rig.store.running._hosts.get(host, {}))


def test_a_started_task_runs_until_it_ends_with_its_start_time():
    rig = connected_rig()
    rig.feed(heartbeat())
    begin(rig, "a")
    rig.clock.advance(5)
    begin(rig, "b")
    assert running(rig) == 2
    assert oldest(rig) == T0  # the exporter's clock when a's task-started arrived
    rig.feed(succeeded("a"))
    assert running(rig) == 1
    assert oldest(rig) == T0 + 5
    rig.feed(failed("b"))
    assert running(rig) == 0  # still shown, as 0, for the label set
    assert oldest(rig) is None
    assert interrupted(rig) == 0 and redelivered(rig) == 0


@pytest.mark.parametrize("end", [succeeded, failed, revoked, retried, rejected])
def test_every_end_of_a_run_leaves_the_gauge(rig, end):
    begin(rig, "a")
    assert running(rig) == 1
    rig.feed(end("a"))
    assert running(rig) == 0


def test_task_started_before_task_received_runs_from_the_started_arrival(rig):
    rig.feed(started("a"))  # no name yet: held
    rig.clock.advance(1)
    rig.feed(received("a"))
    rig.settle()  # no task-sent flowing before: the fallback queue label after the hold
    assert rig.value("celery_task_running", name="app.add", queue_name="unknown") == 1
    assert rig.value("celery_task_running_oldest_start_timestamp_seconds", name="app.add", queue_name="unknown") == T0


def test_a_terminal_event_before_task_started_leaves_nothing_running(rig):
    rig.feed(sent("a"), received("a"), succeeded("a"), started("a"))
    assert running(rig) == 0
    assert rig.value("celery_task_succeeded_total", **L) == 1


def test_a_retry_ends_the_run_and_the_next_attempt_runs_again(rig):
    begin(rig, "a")
    rig.feed(retried("a"))
    assert running(rig) == 0
    rig.clock.advance(3)
    rig.feed(sent("a", retries=1), received("a", retries=1), started("a"))
    assert running(rig) == 1
    assert oldest(rig) == T0 + 3
    assert redelivered(rig) == 0  # a retry is a new attempt, not a redelivery
    rig.feed(succeeded("a"))
    assert running(rig) == 0


def test_lost_worker_interrupts_its_running_tasks_once_and_spares_the_survivor(rig):
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    for uuid in ("a", "b", "c"):
        begin(rig, uuid)
    begin(rig, "s", host="w2@h")
    rig.feed(sent("p"), received("p"))  # prefetched on w1, never started
    keep_alive(rig, TIMEOUT, "w2@h")
    assert interrupted(rig) == 0 and running(rig) == 4  # w1's heartbeat is exactly TIMEOUT old: still up
    keep_alive(rig, 1, "w2@h")
    assert rig.value("celery_worker_up", hostname="w1@h") == 0
    assert interrupted(rig) == 3  # a, b, c; not the prefetched p
    assert running(rig) == 1  # s on the survivor, untouched
    keep_alive(rig, 60, "w2@h")
    assert interrupted(rig) == 3  # counted once, not on every tick
    rig.feed(heartbeat(ts=rig.clock.now(), active=1, processed=3))  # w1 comes back (a partition, not a kill)
    rig.feed(succeeded("a"))  # and reports a's end after all
    assert interrupted(rig) == 3
    assert rig.value("celery_task_succeeded_total", **L) == 1
    assert running(rig) == 1


def test_a_down_worker_runs_nothing_before_it_is_declared_lost(rig):
    rig.feed(heartbeat())
    begin(rig, "a")
    rig.store.exporter.set_connected(False)  # the exporter's own outage: heartbeats stop arriving
    rig.advance(TIMEOUT + 5)
    assert rig.value("celery_worker_up", hostname="w1@h") == 0
    assert running(rig) == 0  # only workers not down count
    assert interrupted(rig) == 0  # but nobody is declared lost while we could not hear them
    rig.store.exporter.set_connected(True, rig.clock.now())
    rig.feed(heartbeat(ts=rig.clock.now(), active=1))  # the worker was fine all along
    assert running(rig) == 1
    rig.advance(TIMEOUT + 1)
    assert interrupted(rig) == 1  # now silent for a whole timeout while connected: lost


def test_redelivered_after_loss_is_counted_and_tracked_as_a_new_attempt(rig):
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert interrupted(rig) == 1 and running(rig) == 0
    t = rig.clock.now()
    rig.feed(
        received("a", host="w2@h", ts=t),
        started("a", host="w2@h", ts=t + 0.25),
    )
    assert redelivered(rig) == 1
    assert rig.value("celery_task_received_total", **L) == 2
    assert running(rig) == 1 and oldest(rig) == t
    # the new attempt's prefetch wait is its own (0.25 s), observed once per attempt
    assert rig.value("celery_task_prefetch_wait_seconds_count", **L) == 2
    assert rig.value("celery_task_prefetch_wait_seconds_sum", **L) == pytest.approx(0.25)
    assert rig.value("celery_task_queue_wait_seconds_count", **L) == 1  # publish -> first start, once
    rig.feed(succeeded("a", host="w2@h"))
    assert rig.value("celery_task_succeeded_total", **L) == 1 and running(rig) == 0
    assert interrupted(rig) == 1


def test_prefetched_task_of_a_lost_worker_is_not_interrupted_but_redelivered(rig):
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    rig.feed(sent("p"), received("p"))
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert interrupted(rig) == 0
    rig.feed(received("p", host="w2@h"), started("p", host="w2@h"), succeeded("p", host="w2@h"))
    assert redelivered(rig) == 1
    assert rig.value("celery_task_succeeded_total", **L) == 1


def test_redelivered_elsewhere_before_the_loss_still_counts_as_interrupted(rig):
    """RabbitMQ hands a killed consumer's unacked messages to another one at once, before the
    dead worker's heartbeats are overdue: the first run was still cut off by the death."""
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    rig.feed(received("a", host="w2@h"), started("a", host="w2@h"))
    assert redelivered(rig) == 1 and running(rig) == 1
    rig.feed(succeeded("a", host="w2@h"))  # the copy even finished before w1 is declared lost
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert interrupted(rig) == 1
    assert running(rig) == 0
    assert rig.value("celery_task_succeeded_total", **L) == 1


def test_redelivered_elsewhere_while_the_first_worker_lives_is_not_interrupted(rig):
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    rig.feed(received("a", host="w2@h"), started("a", host="w2@h"))  # w1's connection blipped
    keep_alive(rig, 3 * TIMEOUT, "w1@h", "w2@h")
    assert interrupted(rig) == 0
    assert running(rig) == 1  # the copy on w2
    assert rig.store.running.size() == (1, 0)  # the displaced run was forgotten
    keep_alive(rig, TIMEOUT + 1, "w2@h")  # w1 lost much later: its displaced run was forgotten
    assert rig.value("celery_worker_up", hostname="w1@h") == 0
    assert interrupted(rig) == 0


def draining(rig, *uuids):
    """w1 runs these tasks and has begun a warm shutdown (worker-offline sent)."""
    rig.feed(heartbeat(processed=5, active=len(uuids)))
    for uuid in uuids:
        begin(rig, uuid)
    rig.feed(heartbeat(etype="worker-offline"))


def test_a_warm_shutdown_drains_its_runs_and_interrupts_nothing(rig):
    """worker-offline comes when the warm shutdown begins; the worker then finishes its tasks."""
    draining(rig, "a")
    assert rig.value("celery_worker_up", hostname="w1@h") is None  # the worker leaves at once...
    assert running(rig) == 1  # ...but its task still runs
    rig.advance(TIMEOUT * 3)
    assert running(rig) == 1 and interrupted(rig) == 0
    rig.feed(succeeded("a"))
    assert running(rig) == 0
    rig.advance(rig.settings.worker_ttl + 1)
    assert interrupted(rig) == 0


def test_killed_during_its_warm_shutdown_and_back_under_its_name(rig):
    """A grace period that ran out (Kubernetes): SIGKILL after worker-offline, then the
    restarted container comes back under the same name."""
    draining(rig, "a", "b")
    rig.advance(30)
    assert running(rig) == 2 and interrupted(rig) == 0
    rig.feed(heartbeat(etype="worker-online", processed=0, ts=rig.clock.now()))
    assert interrupted(rig) == 2
    assert running(rig) == 0


def test_killed_during_its_warm_shutdown_and_never_back(rig):
    draining(rig, "a")
    rig.advance(rig.settings.worker_ttl - 1)
    assert running(rig) == 1 and interrupted(rig) == 0
    rig.advance(2)  # --worker-ttl after its goodbye, and no end: it died with the process
    assert interrupted(rig) == 1
    assert running(rig) == 0


def test_a_drain_we_did_not_hear_all_along_is_forgotten_uncounted(rig):
    draining(rig, "a")
    rig.store.exporter.set_connected(False)  # its end event may have come while we were away
    rig.advance(5)
    rig.store.exporter.set_connected(True, rig.clock.now())
    rig.advance(rig.settings.worker_ttl)
    assert interrupted(rig) == 0
    assert running(rig) == 0
    assert rig.store.running.size() == (0, 0)


def test_a_consumer_restart_after_a_broker_blip_interrupts_nothing(rig):
    """The worker's consumer restarts after a broker blip: worker-offline and worker-online
    from the same process, whose count did not go back; its task runs on."""
    rig.feed(heartbeat(processed=5, active=1))
    begin(rig, "a")
    rig.feed(heartbeat(etype="worker-offline"), heartbeat(etype="worker-online", processed=6, active=1))
    assert interrupted(rig) == 0
    assert running(rig) == 1
    rig.feed(succeeded("a"))
    assert running(rig) == 0


def test_restart_under_the_same_name_interrupts_at_once(rig):
    rig.feed(heartbeat(processed=7))
    begin(rig, "a")
    begin(rig, "b")
    rig.advance(3)
    rig.feed(heartbeat(etype="worker-online", processed=0, ts=rig.clock.now()))  # a new process
    assert interrupted(rig) == 2
    assert running(rig) == 0
    rig.advance(TIMEOUT * 2)  # and the fresh process stays up: nothing is counted again
    assert interrupted(rig) == 2


def test_restart_before_any_heartbeat_reported_the_tasks(rig):
    """A worker that ran its tasks before its first periodic heartbeat: the last count heard
    is its online's 0, yet a new process's 0 is below the 2 runs the old one accepted."""
    rig.feed(heartbeat(etype="worker-online", processed=0))
    begin(rig, "a")
    begin(rig, "b")
    rig.feed(heartbeat(etype="worker-offline"))
    rig.feed(heartbeat(etype="worker-online", processed=0, ts=T0 + 1))
    assert interrupted(rig) == 2 and running(rig) == 0


def test_worker_online_of_the_same_process_interrupts_nothing(rig):
    rig.feed(heartbeat(processed=7))
    begin(rig, "a")
    rig.feed(heartbeat(etype="worker-online", processed=9))  # consumer restart after a broker blip
    assert interrupted(rig) == 0 and running(rig) == 1


def test_evicted_running_task_leaves_the_gauge_and_is_never_interrupted():
    rig = connected_rig(max_tasks=2)
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    rig.feed(sent("x"), sent("y"))  # the uuid map holds 2: a is evicted
    assert running(rig) == 0
    rig.advance(0.5)  # the tick publishes the uuid map's figures
    assert rig.value("celery_exporter_tasks_evicted_total") == 1
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert interrupted(rig) == 0


def test_a_worker_without_heartbeats_runs_its_tasks_and_loses_none(rig):
    begin(rig, "a")  # w1 never heartbeats (--without-heartbeat): it cannot be told lost
    rig.advance(TIMEOUT * 3)
    assert running(rig) == 1
    assert interrupted(rig) == 0


def test_a_swept_worker_takes_nothing_with_it():
    rig = connected_rig()
    rig.feed(heartbeat())
    begin(rig, "a")
    rig.store.exporter.set_connected(False)  # never declared lost: we could not hear it
    rig.advance(rig.settings.worker_ttl + 1)
    rig.store.sweep(rig.clock.now())
    assert rig.store.running.size()[0] == 0
    assert running(rig) == 0


def test_running_carries_the_hostname_label_when_asked():
    rig = connected_rig(task_hostname_label=True)
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    begin(rig, "b", host="w2@h")
    assert rig.value("celery_task_running", hostname="w1@h", **L) == 1
    assert rig.value("celery_task_running", hostname="w2@h", **L) == 1
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert rig.value("celery_task_interrupted_total", hostname="w1@h", **L) == 1
    assert rig.value("celery_task_interrupted_total", hostname="w2@h", **L) == 0


def test_running_memory_follows_the_uuid_map(rig):
    rig.feed(heartbeat())
    for i in range(50):
        begin(rig, f"t{i}")
    assert rig.store.running.size()[0] == 50
    for i in range(50):
        rig.feed(succeeded(f"t{i}"))
    assert rig.store.running.size()[0] == 0
    rig.advance(rig.settings.finished_grace_seconds + 1)
    assert len(rig.handler.tracker) == 0


def test_an_idle_heartbeat_ends_runs_whose_end_event_was_lost(rig):
    """The end events of a task can be lost (published while the exporter reconnected, or
    Celery <= 5.6 after a broker reconnect): a heartbeat that says nothing runs ends them."""
    rig.feed(heartbeat())
    rig.feed(sent("a"), received("a"), started("a", ts=T0 + 1))
    rig.clock.advance(2)
    rig.feed(heartbeat(ts=T0 + 2, active=1))
    assert running(rig) == 1
    rig.feed(started("b", ts=T0 + 5))  # no name known: not running, nothing else changes
    rig.feed(sent("c"), received("c"), started("c", ts=T0 + 5))
    rig.feed(heartbeat(ts=T0 + 4, active=0))  # sent before c started: only a's end was lost
    assert running(rig) == 1 and oldest(rig) == T0 + 2
    rig.feed(heartbeat(ts=T0 + 6, active=0))
    assert running(rig) == 0
    assert interrupted(rig) == 0


def test_task_replace_reuses_the_id_but_is_no_redelivery(rig):
    """Task.replace() publishes the replacement under the replaced task's id."""
    rig.feed(heartbeat())
    begin(rig, "a")
    rig.feed(sent("a", name="app.step2"), received("a", name="app.step2"), started("a"))
    assert redelivered(rig) == 0
    assert running(rig) == 1  # the replacement, counted under the task id's first labels
    rig.feed(succeeded("a"))
    assert running(rig) == 0


def test_a_task_redelivered_twice_after_two_losses_is_interrupted_once():
    rig = connected_rig(finished_grace_seconds=1.0)
    rig.feed(heartbeat(), heartbeat(host="w2@h"), heartbeat(host="w3@h"))
    begin(rig, "a")
    rig.feed(received("a", host="w2@h"), started("a", host="w2@h"))  # w1 killed, redelivered at once
    rig.feed(received("a", host="w3@h"), started("a", host="w3@h"))  # w2 killed too
    rig.feed(succeeded("a", host="w3@h"))
    rig.advance(2)  # the finished record is forgotten before the losses are known
    assert rig.handler.tracker.peek("a") is None
    keep_alive(rig, TIMEOUT + 1, "w3@h")
    assert interrupted(rig) == 1
    assert redelivered(rig) == 2
    assert rig.store.running.size() == (0, 0)


def test_an_evicted_task_leaves_no_displaced_run_behind():
    rig = connected_rig(max_tasks=2)
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    rig.feed(received("a", host="w2@h"), started("a", host="w2@h"))  # displaced from w1
    rig.feed(sent("x"), sent("y"))  # a is evicted
    assert rig.store.running.size() == (0, 0)
    keep_alive(rig, TIMEOUT + 1, "w2@h")
    assert interrupted(rig) == 0


def test_a_late_retried_of_the_previous_attempt_keeps_the_next_one_running(rig):
    """The pool child publishes the retry at once; the next attempt can start (on another
    worker) before the worker's buffered task-retried of the old attempt arrives."""
    rig.feed(heartbeat(), heartbeat(host="w2@h"))
    begin(rig, "a")
    rig.feed(
        sent("a", retries=1, ts=T0 + 1),
        received("a", host="w2@h", retries=1, ts=T0 + 1),
        started("a", host="w2@h", ts=T0 + 1.1),
        retried("a", ts=T0 + 0.9),  # attempt 0's, late
    )
    assert running(rig) == 1
    rig.feed(retried("a", host="w2@h", ts=T0 + 2))  # attempt 1's own retry
    assert running(rig) == 0


def test_a_late_started_of_the_previous_attempt_starts_no_run(rig):
    rig.feed(heartbeat())
    rig.feed(sent("a", ts=T0), received("a", ts=T0))
    rig.feed(sent("a", retries=1, ts=T0 + 1))  # the retry, published before attempt 0's start arrives
    rig.feed(started("a", ts=T0 + 0.5), retried("a", ts=T0 + 0.9))  # attempt 0's late events
    assert running(rig) == 0
    rig.feed(received("a", retries=1, ts=T0 + 1), started("a", ts=T0 + 1.2))
    assert running(rig) == 1
    rig.feed(succeeded("a", ts=T0 + 2))
    assert running(rig) == 0


def test_a_stalled_event_thread_declares_nobody_lost(rig):
    rig.feed(heartbeat())
    begin(rig, "a")
    keep_alive(rig, 10, "w1@h")
    rig.clock.advance(TIMEOUT + 10)  # one tick after 40 s: the process was frozen, heartbeats unread
    rig.tick()
    assert interrupted(rig) == 0
    rig.feed(heartbeat(ts=rig.clock.now(), active=1))  # the backlog is read
    keep_alive(rig, TIMEOUT + 5, "w1@h")
    assert interrupted(rig) == 0 and running(rig) == 1
    rig.advance(TIMEOUT + 2)  # now really silent, with ticks every 0.5 s
    assert interrupted(rig) == 1


def test_a_connection_that_died_silently_declares_nobody_lost(rig):
    """Connected by the socket, but nothing comes, not even the replies to our pings: the
    workers' silence proves nothing until the connection is found dead (or heard again)."""
    rig.feed(heartbeat())
    begin(rig, "a")
    rig.broker_alive = False
    rig.advance(TIMEOUT + 10)
    assert rig.value("celery_worker_up", hostname="w1@h") == 0
    assert interrupted(rig) == 0
    rig.broker_alive = True  # a pong: the connection lives, and w1 is still silent
    rig.advance(0.5)
    assert interrupted(rig) == 1


def test_task_cancelled_on_connection_loss_ends_the_run_until_its_redelivery(rig):
    """Celery >= 5.1 cancels running acks_late tasks when the worker loses its broker
    connection (worker_cancel_long_running_tasks_on_connection_loss); the broker delivers
    them again."""
    rig.feed(heartbeat(processed=1, active=1))
    begin(rig, "a")
    rig.feed({"type": "task-cancelled", "uuid": "a", "hostname": "w1@h", "timestamp": T0 + 1})
    assert running(rig) == 0
    assert rig.value("celery_exporter_events_total", type="task-cancelled") == 1
    rig.feed(received("a", ts=T0 + 3), started("a", ts=T0 + 3))
    assert running(rig) == 1 and redelivered(rig) == 1
    keep_alive(rig, TIMEOUT + 1, "w1@h")
    assert interrupted(rig) == 0
    rig.feed(succeeded("a", ts=rig.clock.now()))
    assert running(rig) == 0
    assert rig.value("celery_task_succeeded_total", **L) == 1
    rig.feed({"type": "task-cancelled", "hostname": "w1@h", "timestamp": T0})  # no uuid
    assert rig.value("celery_exporter_events_dropped_total", reason="bad_field") == 1
