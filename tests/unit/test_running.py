"""The task lifecycle through the handler, as rows: events (and what else happens: time
passing, the exporter's connection, the broker's silence, a sweep) in, metrics out, checked
where each row says. Tasks in flight (the running gauge and the oldest start), tasks
interrupted when their worker is lost or restarts, redeliveries, duplicate terminal events
and retries, in every order the events can come in. The rules are lifecycle.py's table;
tests/unit/test_lifecycle.py walks the table itself."""

import dataclasses
from typing import Any, Callable, Dict, List, Union

import pytest

from celery_exporter import catalogue
from celery_exporter.receiver import TICK_INTERVAL
from celery_exporter.tasks import FINISHED_GRID

from .conftest import T0, Rig, failed, heartbeat, received, rejected, retried, revoked, sent, started, succeeded

L = {"name": "app.add", "queue_name": "celery"}
UNKNOWN = {"name": "app.add", "queue_name": "unknown"}
TIMEOUT = 30.0  # Settings().worker_timeout; with freq=2 the effective timeout stays 30 s
NOW = object()  # an expected value: the clock's time at the check

Step = Callable[[Rig], None]
Event = Union[dict, Callable[[float], dict]]  # an event, or one made at the clock's time


def connected_rig(**overrides) -> Rig:
    rig = Rig(**overrides)
    rig.store.exporter.set_connected(True, rig.clock.now())
    return rig


def active_on(rig, host):
    return len(rig.store.running._hosts.get(host, {}))


# -- steps ------------------------------------------------------------------------------------


def feed(*events: Event) -> Step:
    """Deliver events as the receiver would, each at the current clock time (a callable is
    given the clock's time to make its event then)."""

    def step(rig):
        rig.feed(*(dict(e(rig.clock.now()) if callable(e) else e) for e in events))

    return step


def begin(uuid, host="w1@h") -> Step:
    return feed(sent(uuid), received(uuid, host=host), started(uuid, host=host))


def draining(*uuids) -> List[Step]:
    """w1 runs these tasks and has begun a warm shutdown (worker-offline sent)."""
    return [
        feed(heartbeat(processed=5, active=len(uuids))),
        *(begin(uuid) for uuid in uuids),
        feed(heartbeat(etype="worker-offline")),
    ]


def advance(seconds: Union[float, Callable[[Any], float]]) -> Step:
    """Let time pass with the receiver's tick every TICK_INTERVAL (a callable is given the
    settings to say how long)."""
    return lambda rig: rig.advance(seconds(rig.settings) if callable(seconds) else seconds)


def settle() -> Step:
    return lambda rig: rig.settle()


def clock(seconds: float) -> Step:
    """Move the clock without ticks (events arriving that much later, or a frozen process)."""
    return lambda rig: rig.clock.advance(seconds)


def tick() -> Step:
    return lambda rig: rig.tick()


def connected(up: bool) -> Step:
    """The exporter's own broker connection lost (nothing arrives) or made again."""
    return lambda rig: rig.store.exporter.set_connected(up, rig.clock.now() if up else None)


def broker_heard(alive: bool) -> Step:
    """Whether the broker answers on the connection (pongs, AMQP heartbeats) on each tick."""

    def step(rig):
        rig.broker_alive = alive

    return step


def sweep() -> Step:
    return lambda rig: rig.store.sweep(rig.clock.now())


def keep_alive(seconds, *hosts, step=2.0) -> Step:
    """Advance the clock by `seconds`, with heartbeats from `hosts` every `step`, each
    reporting as active the tasks the store has running there (as a real worker would)."""

    def run(rig):
        elapsed = 0.0
        while elapsed < seconds:
            dt = min(step, seconds - elapsed)
            rig.advance(dt)
            elapsed += dt
            rig.feed(*(heartbeat(host=h, ts=rig.clock.now(), active=active_on(rig, h)) for h in hosts))

    return run


# -- expectations -----------------------------------------------------------------------------


def _metric(name):
    return lambda rig, labels: rig.value(name, **labels)


# probe -> value, for the label set of the check
PROBES: Dict[str, Callable[[Rig, dict], Any]] = {
    "running": _metric("celery_task_running"),
    "oldest": _metric("celery_task_running_oldest_start_timestamp_seconds"),
    **{counter: _metric(f"celery_task_{counter}_total") for counter in catalogue.TASK_COUNTERS},
    "counters": lambda rig, labels: {s: rig.value(f"celery_task_{s}_total", **labels) for s in catalogue.TASK_STATES},
    "queue_wait_count": _metric("celery_task_queue_wait_seconds_count"),
    "queue_wait_sum": _metric("celery_task_queue_wait_seconds_sum"),
    "prefetch_wait_count": _metric("celery_task_prefetch_wait_seconds_count"),
    "prefetch_wait_sum": _metric("celery_task_prefetch_wait_seconds_sum"),
    "failed_runtime_count": _metric("celery_task_failed_runtime_seconds_count"),
    "failed_runtime_sum": _metric("celery_task_failed_runtime_seconds_sum"),
    "retried_runtime_count": _metric("celery_task_retried_runtime_seconds_count"),
    "retried_runtime_sum": _metric("celery_task_retried_runtime_seconds_sum"),
    "runtime_count": _metric("celery_task_runtime_seconds_count"),
    "reservations": lambda rig, labels: len(rig.store.running._reserved_on),  # task ids reserved, in memory
    "evicted": lambda rig, labels: rig.value("celery_exporter_tasks_evicted_total"),
    "runs_held": lambda rig, labels: rig.store.running.size(),  # (runs, displaced runs) in memory
    "runs": lambda rig, labels: rig.store.running.size()[0],
    "tracked": lambda rig, labels: len(rig.handler.tracker),  # records in the uuid map
}
# probe -> value for one key, for the label set of the check; expected as {key: value}
KEYED: Dict[str, Callable[[Rig, dict, str], Any]] = {
    "worker_up": lambda rig, labels, host: rig.value("celery_worker_up", hostname=host),
    "reserved": lambda rig, labels, host: rig.value("celery_worker_tasks_reserved", hostname=host),
    "events": lambda rig, labels, etype: rig.value("celery_exporter_events_total", type=etype),
    "dropped": lambda rig, labels, reason: rig.value("celery_exporter_events_dropped_total", reason=reason),
    "exceptions": lambda rig, labels, exc: rig.value("celery_task_exceptions_total", exception=exc, **labels),
    "queue_wait_bucket": lambda rig, labels, le: rig.value("celery_task_queue_wait_seconds_bucket", le=le, **labels),
    "known": lambda rig, labels, uuid: rig.handler.tracker.peek(uuid) is not None,
}


@dataclasses.dataclass
class Expect:
    values: Dict[str, Any]
    labels: Dict[str, str]

    def __call__(self, rig):
        for probe, want in self.values.items():
            if probe in KEYED:
                for key, value in want.items():
                    assert KEYED[probe](rig, self.labels, key) == value, f"{probe}[{key}] under {self.labels}"
            else:
                want = rig.clock.now() if want is NOW else want
                assert PROBES[probe](rig, self.labels) == want, f"{probe} under {self.labels}"


def expect(labels=L, **values) -> Step:
    unknown = set(values) - set(PROBES) - set(KEYED)
    assert not unknown, unknown
    return Expect(values, labels)


# -- the rows ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    steps: List[Union[Step, List[Step]]]
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    connected: bool = True  # the exporter connected since the start (else never: a bare Rig)


def _hb(**fields):
    """A heartbeat of w1 sent at the clock's time."""
    return lambda now: heartbeat(ts=now, **fields)


RUNNING = [
    Case(
        "a started task runs until it ends, with its start time",
        [
            feed(heartbeat()),
            begin("a"),
            clock(5),
            begin("b"),
            expect(running=2, oldest=T0),  # the exporter's clock when a's task-started arrived
            feed(succeeded("a")),
            expect(running=1, oldest=T0 + 5),
            feed(failed("b")),
            expect(running=0, oldest=None),  # still shown, as 0, for the label set
            expect(interrupted=0, redelivered=0),
        ],
    ),
    *(
        Case(
            f"a run ends at task-{end.__name__}",
            [begin("a"), expect(running=1), feed(end("a")), expect(running=0)],
        )
        for end in (succeeded, failed, revoked, retried, rejected)
    ),
    Case(
        "task-started before task-received runs from the started arrival",
        [
            feed(started("a")),  # no name yet: held
            clock(1),
            feed(received("a")),
            settle(),  # no task-sent flowing before: the fallback queue label after the hold
            expect(UNKNOWN, running=1, oldest=T0),
        ],
    ),
    Case(
        "a terminal event before task-started leaves nothing running",
        [feed(sent("a"), received("a"), succeeded("a"), started("a")), expect(running=0, succeeded=1)],
    ),
    Case(
        "a retry ends the run and the next attempt runs again",
        [
            begin("a"),
            feed(retried("a")),
            expect(running=0),
            clock(3),
            feed(sent("a", retries=1), received("a", retries=1), started("a")),
            expect(running=1, oldest=T0 + 3),
            expect(redelivered=0),  # a retry is a new attempt, not a redelivery
            feed(succeeded("a")),
            expect(running=0),
        ],
    ),
    Case(
        "an idle heartbeat ends runs whose end event was lost",
        # The end events of a task can be lost (published while the exporter reconnected, or
        # Celery <= 5.6 after a broker reconnect): a heartbeat that says nothing runs ends them.
        [
            feed(heartbeat()),
            feed(sent("a"), received("a"), started("a", ts=T0 + 1)),
            clock(2),
            feed(heartbeat(ts=T0 + 2, active=1)),
            expect(running=1),
            feed(started("b", ts=T0 + 5)),  # no name known: not running, nothing else changes
            feed(sent("c"), received("c"), started("c", ts=T0 + 5)),
            feed(heartbeat(ts=T0 + 4, active=0)),  # sent before c started: only a's end was lost
            expect(running=1, oldest=T0 + 2),
            feed(heartbeat(ts=T0 + 6, active=0)),
            expect(running=0),
            expect(interrupted=0),
        ],
    ),
    Case(
        "Task.replace() reuses the id but is no redelivery",
        [
            feed(heartbeat()),
            begin("a"),
            feed(sent("a", name="app.step2"), received("a", name="app.step2"), started("a")),
            expect(redelivered=0),
            expect(running=1),  # the replacement, counted under the task id's first labels
            feed(succeeded("a")),
            expect(running=0),
        ],
    ),
    Case(
        "a late task-retried of the previous attempt keeps the next one running",
        # The pool child publishes the retry at once; the next attempt can start (on another
        # worker) before the worker's buffered task-retried of the old attempt arrives.
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            feed(
                sent("a", retries=1, ts=T0 + 1),
                received("a", host="w2@h", retries=1, ts=T0 + 1),
                started("a", host="w2@h", ts=T0 + 1.1),
                retried("a", ts=T0 + 0.9),  # attempt 0's, late
            ),
            expect(running=1),
            feed(retried("a", host="w2@h", ts=T0 + 2)),  # attempt 1's own retry
            expect(running=0),
        ],
    ),
    Case(
        "a late task-started of the previous attempt starts no run",
        [
            feed(heartbeat()),
            feed(sent("a", ts=T0), received("a", ts=T0)),
            feed(sent("a", retries=1, ts=T0 + 1)),  # the retry, published before attempt 0's start arrives
            feed(started("a", ts=T0 + 0.5), retried("a", ts=T0 + 0.9)),  # attempt 0's late events
            expect(running=0),
            feed(received("a", retries=1, ts=T0 + 1), started("a", ts=T0 + 1.2)),
            expect(running=1),
            feed(succeeded("a", ts=T0 + 2)),
            expect(running=0),
        ],
    ),
    Case(
        "running carries the hostname label when asked",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            begin("b", host="w2@h"),
            expect({**L, "hostname": "w1@h"}, running=1),
            expect({**L, "hostname": "w2@h"}, running=1),
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect({**L, "hostname": "w1@h"}, interrupted=1),
            expect({**L, "hostname": "w2@h"}, interrupted=0),
        ],
        settings={"task_hostname_label": True},
    ),
    Case(
        "running memory follows the uuid map",
        [
            feed(heartbeat()),
            *(begin(f"t{i}") for i in range(50)),
            expect(runs=50),
            feed(*(succeeded(f"t{i}") for i in range(50))),
            expect(runs=0),
            advance(lambda settings: settings.finished_grace_seconds + 1),
            expect(tracked=0),
        ],
    ),
    Case(
        "a worker without heartbeats runs its tasks and loses none",
        [
            begin("a"),  # w1 never heartbeats (--without-heartbeat): it cannot be told lost
            advance(TIMEOUT * 3),
            expect(running=1),
            expect(interrupted=0),
        ],
    ),
]

LOST = [
    Case(
        "a lost worker interrupts its running tasks once and spares the survivor",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            begin("b"),
            begin("c"),
            begin("s", host="w2@h"),
            feed(sent("p"), received("p")),  # prefetched on w1, never started
            keep_alive(TIMEOUT, "w2@h"),
            expect(interrupted=0, running=4),  # w1's heartbeat is exactly TIMEOUT old: still up
            keep_alive(1, "w2@h"),
            expect(worker_up={"w1@h": 0}),
            expect(interrupted=3),  # a, b, c; not the prefetched p
            expect(running=1),  # s on the survivor, untouched
            keep_alive(60, "w2@h"),
            expect(interrupted=3),  # counted once, not on every tick
            feed(_hb(active=1, processed=3)),  # w1 comes back (a partition, not a kill)
            feed(succeeded("a")),  # and reports a's end after all
            expect(interrupted=3),
            expect(succeeded=1),
            expect(running=1),
        ],
    ),
    Case(
        "a down worker runs nothing before it is declared lost",
        [
            feed(heartbeat()),
            begin("a"),
            connected(False),  # the exporter's own outage: heartbeats stop arriving
            advance(TIMEOUT + 5),
            expect(worker_up={"w1@h": 0}),
            expect(running=0),  # only workers not down count
            expect(interrupted=0),  # but nobody is declared lost while we could not hear them
            connected(True),
            feed(_hb(active=1)),  # the worker was fine all along
            expect(running=1),
            advance(TIMEOUT + 1),
            expect(interrupted=1),  # now silent for a whole timeout while connected: lost
        ],
    ),
    Case(
        "redelivered after the loss: counted, and tracked as a new attempt",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect(interrupted=1, running=0),
            feed(
                lambda now: received("a", host="w2@h", ts=now),
                lambda now: started("a", host="w2@h", ts=now + 0.25),
            ),
            expect(redelivered=1),
            expect(received=2),
            expect(running=1, oldest=NOW),
            # the new attempt's prefetch wait is its own (0.25 s), observed once per attempt
            expect(prefetch_wait_count=2),
            expect(prefetch_wait_sum=pytest.approx(0.25)),
            expect(queue_wait_count=1),  # publish -> first start, once
            feed(succeeded("a", host="w2@h")),
            expect(succeeded=1, running=0),
            expect(interrupted=1),
        ],
    ),
    Case(
        "a prefetched task of a lost worker is not interrupted but redelivered",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            feed(sent("p"), received("p")),
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect(interrupted=0),
            feed(received("p", host="w2@h"), started("p", host="w2@h"), succeeded("p", host="w2@h")),
            expect(redelivered=1),
            expect(succeeded=1),
        ],
    ),
    Case(
        "redelivered elsewhere before the loss, still counted as interrupted",
        # RabbitMQ hands a killed consumer's unacked messages to another one at once, before
        # the dead worker's heartbeats are overdue: the first run was still cut off by the death.
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            feed(received("a", host="w2@h"), started("a", host="w2@h")),
            expect(redelivered=1, running=1),
            feed(succeeded("a", host="w2@h")),  # the copy even finished before w1 is declared lost
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect(interrupted=1),
            expect(running=0),
            expect(succeeded=1),
        ],
    ),
    Case(
        "redelivered elsewhere while the first worker lives: not interrupted",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            feed(received("a", host="w2@h"), started("a", host="w2@h")),  # w1's connection blipped
            keep_alive(3 * TIMEOUT, "w1@h", "w2@h"),
            expect(interrupted=0),
            expect(running=1),  # the copy on w2
            expect(runs_held=(1, 0)),  # the displaced run was forgotten
            keep_alive(TIMEOUT + 1, "w2@h"),  # w1 lost much later: its displaced run was forgotten
            expect(worker_up={"w1@h": 0}),
            expect(interrupted=0),
        ],
    ),
    Case(
        "a task redelivered twice after two losses is interrupted once",
        [
            feed(heartbeat(), heartbeat(host="w2@h"), heartbeat(host="w3@h")),
            begin("a"),
            feed(received("a", host="w2@h"), started("a", host="w2@h")),  # w1 killed, redelivered at once
            feed(received("a", host="w3@h"), started("a", host="w3@h")),  # w2 killed too
            feed(succeeded("a", host="w3@h")),
            advance(2),  # the finished record is forgotten before the losses are known
            expect(known={"a": False}),
            keep_alive(TIMEOUT + 1, "w3@h"),
            expect(interrupted=1),
            expect(redelivered=2),
            expect(runs_held=(0, 0)),
        ],
        settings={"finished_grace_seconds": 1.0},
    ),
    Case(
        "an evicted running task leaves the gauge and is never interrupted",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            feed(sent("x"), sent("y")),  # the uuid map holds 2: a is evicted
            expect(running=0),
            advance(0.5),  # the tick publishes the uuid map's figures
            expect(evicted=1),
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect(interrupted=0),
        ],
        settings={"max_tasks": 2},
    ),
    Case(
        "an evicted task leaves no displaced run behind",
        [
            feed(heartbeat(), heartbeat(host="w2@h")),
            begin("a"),
            feed(received("a", host="w2@h"), started("a", host="w2@h")),  # displaced from w1
            feed(sent("x"), sent("y")),  # a is evicted
            expect(runs_held=(0, 0)),
            keep_alive(TIMEOUT + 1, "w2@h"),
            expect(interrupted=0),
        ],
        settings={"max_tasks": 2},
    ),
    Case(
        "a swept worker takes nothing with it",
        [
            feed(heartbeat()),
            begin("a"),
            connected(False),  # never declared lost: we could not hear it
            advance(lambda settings: settings.worker_ttl + 1),
            sweep(),
            expect(runs=0),
            expect(running=0),
        ],
    ),
    Case(
        "a stalled event thread declares nobody lost",
        [
            feed(heartbeat()),
            begin("a"),
            keep_alive(10, "w1@h"),
            clock(TIMEOUT + 10),  # one tick after 40 s: the process was frozen, heartbeats unread
            tick(),
            expect(interrupted=0),
            feed(_hb(active=1)),  # the backlog is read
            keep_alive(TIMEOUT + 5, "w1@h"),
            expect(interrupted=0, running=1),
            advance(TIMEOUT + 2),  # now really silent, with ticks every 0.5 s
            expect(interrupted=1),
        ],
    ),
    Case(
        "a connection that died silently declares nobody lost",
        # Connected by the socket, but nothing comes, not even the replies to our pings: the
        # workers' silence proves nothing until the connection is found dead (or heard again).
        [
            feed(heartbeat()),
            begin("a"),
            broker_heard(False),
            advance(TIMEOUT + 10),
            expect(worker_up={"w1@h": 0}),
            expect(interrupted=0),
            broker_heard(True),  # a pong: the connection lives, and w1 is still silent
            advance(0.5),
            expect(interrupted=1),
        ],
    ),
    Case(
        "task-cancelled on connection loss ends the run until its redelivery",
        # Celery >= 5.1 cancels running acks_late tasks when the worker loses its broker
        # connection (worker_cancel_long_running_tasks_on_connection_loss); the broker
        # delivers them again.
        [
            feed(heartbeat(processed=1, active=1)),
            begin("a"),
            feed({"type": "task-cancelled", "uuid": "a", "hostname": "w1@h", "timestamp": T0 + 1}),
            expect(running=0),
            expect(events={"task-cancelled": 1}),
            feed(received("a", ts=T0 + 3), started("a", ts=T0 + 3)),
            expect(running=1, redelivered=1),
            keep_alive(TIMEOUT + 1, "w1@h"),
            expect(interrupted=0),
            feed(lambda now: succeeded("a", ts=now)),
            expect(running=0),
            expect(succeeded=1),
            feed({"type": "task-cancelled", "hostname": "w1@h", "timestamp": T0}),  # no uuid
            expect(dropped={"bad_field": 1}),
        ],
    ),
]

WORKER_LIFECYCLE = [
    Case(
        "a warm shutdown drains its runs and interrupts nothing",
        # worker-offline comes when the warm shutdown begins; the worker then finishes its tasks.
        [
            draining("a"),
            expect(worker_up={"w1@h": None}),  # the worker leaves at once...
            expect(running=1),  # ...but its task still runs
            advance(TIMEOUT * 3),
            expect(running=1, interrupted=0),
            feed(succeeded("a")),
            expect(running=0),
            advance(lambda settings: settings.worker_ttl + 1),
            expect(interrupted=0),
        ],
    ),
    Case(
        "killed during its warm shutdown, and back under its name",
        # A grace period that ran out (Kubernetes): SIGKILL after worker-offline, then the
        # restarted container comes back under the same name.
        [
            draining("a", "b"),
            advance(30),
            expect(running=2, interrupted=0),
            feed(_hb(etype="worker-online", processed=0)),
            expect(interrupted=2),
            expect(running=0),
        ],
    ),
    Case(
        "killed during its warm shutdown, and never back",
        [
            draining("a"),
            advance(lambda settings: settings.worker_ttl - 1),
            expect(running=1, interrupted=0),
            advance(2),  # --worker-ttl after its goodbye, and no end: it died with the process
            expect(interrupted=1),
            expect(running=0),
        ],
    ),
    Case(
        "a drain we did not hear all along is forgotten, uncounted",
        [
            draining("a"),
            connected(False),  # its end event may have come while we were away
            advance(5),
            connected(True),
            advance(lambda settings: settings.worker_ttl),
            expect(interrupted=0),
            expect(running=0),
            expect(runs_held=(0, 0)),
        ],
    ),
    Case(
        "a consumer restart after a broker blip interrupts nothing",
        # The worker's consumer restarts after a broker blip: worker-offline and worker-online
        # from the same process, whose count did not go back; its task runs on.
        [
            feed(heartbeat(processed=5, active=1)),
            begin("a"),
            feed(heartbeat(etype="worker-offline"), heartbeat(etype="worker-online", processed=6, active=1)),
            expect(interrupted=0),
            expect(running=1),
            feed(succeeded("a")),
            expect(running=0),
        ],
    ),
    Case(
        "a restart under the same name interrupts at once",
        [
            feed(heartbeat(processed=7)),
            begin("a"),
            begin("b"),
            advance(3),
            feed(_hb(etype="worker-online", processed=0)),  # a new process
            expect(interrupted=2),
            expect(running=0),
            advance(TIMEOUT * 2),  # and the fresh process stays up: nothing is counted again
            expect(interrupted=2),
        ],
    ),
    Case(
        "a restart before any heartbeat reported the tasks",
        # A worker that ran its tasks before its first periodic heartbeat: the last count heard
        # is its online's 0, yet a new process's 0 is below the 2 runs the old one accepted.
        [
            feed(heartbeat(etype="worker-online", processed=0)),
            begin("a"),
            begin("b"),
            feed(heartbeat(etype="worker-offline")),
            feed(heartbeat(etype="worker-online", processed=0, ts=T0 + 1)),
            expect(interrupted=2, running=0),
        ],
    ),
    Case(
        "a worker-online of the same process interrupts nothing",
        [
            feed(heartbeat(processed=7)),
            begin("a"),
            feed(heartbeat(etype="worker-online", processed=9)),  # consumer restart after a broker blip
            expect(interrupted=0, running=1),
        ],
    ),
]

# The hard time limit's pool-side failure, as Celery 5.7 sends it (twice).
POOL_FAILURE = dict(
    exception="ExceptionWithTraceback()",
    traceback="Traceback (most recent call last):\n  ...\n"
    "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n",
)

TERMINAL_AND_RETRIES = [
    Case(
        "duplicate terminal events count once",
        # Celery 5.7 sends two task-failed for one hard time limit.
        [
            feed(sent("u1"), received("u1"), started("u1"), failed("u1", **POOL_FAILURE), failed("u1", **POOL_FAILURE)),
            expect(failed=1),
            expect(exceptions={"TimeLimitExceeded": 1}),
            expect(dropped={"duplicate": 1}),
        ],
        connected=False,
    ),
    Case(
        "a reject after a failure is counted under the same labels",
        [feed(sent("u1"), received("u1"), started("u1"), failed("u1"), rejected("u1")), expect(failed=1, rejected=1)],
        connected=False,
    ),
    Case(
        "a task revoked before its receipt counts once, under its task-sent labels",
        [
            feed(sent("u1", queue="q2"), revoked("u1", expired=True), revoked("u1", expired=True)),
            expect({"name": "app.add", "queue_name": "q2"}, sent=1, received=0, revoked=1),
        ],
        connected=False,
    ),
    Case(
        "a finished task is remembered for its whole grace and forgotten soon after",
        [
            feed(sent("u1"), received("u1"), started("u1"), succeeded("u1")),
            advance(lambda settings: settings.finished_grace_seconds - 0.01),
            expect(known={"u1": True}),
            feed(succeeded("u1")),  # still known: a duplicate
            expect(dropped={"duplicate": 1}),
            advance(FINISHED_GRID + TICK_INTERVAL),  # the grid's rounding and the next tick at most
            expect(known={"u1": False}),
        ],
        connected=False,
    ),
    Case(
        "retries reuse the uuid and arrive out of order",
        # Observed: the retry's task-sent and task-received arrive before the old attempt's task-retried.
        [
            feed(
                sent("u1", ts=T0),
                received("u1", ts=T0 + 0.1),
                started("u1", ts=T0 + 0.2),
                sent("u1", retries=1, ts=T0 + 0.3),
                received("u1", retries=1, ts=T0 + 0.31),
                retried("u1", ts=T0 + 0.3),
                started("u1", ts=T0 + 0.5),
                succeeded("u1", ts=T0 + 0.6, runtime=0.1),
            ),
            expect(
                counters={
                    "sent": 2,
                    "received": 2,
                    "started": 2,
                    "succeeded": 1,
                    "failed": 0,
                    "retried": 1,
                    "rejected": 0,
                    "revoked": 0,
                }
            ),
            expect(exceptions={"Retry": 1}),
            # one queue wait per attempt: 0.2 (first) + 0.2 (second, from its own task-sent)
            expect(queue_wait_count=2),
            expect(queue_wait_sum=pytest.approx(0.4)),
        ],
        connected=False,
    ),
    Case(
        "a late task-started of the attempt before a retry is its own",
        # The retry's task-sent (published by the pool child) can overtake the previous
        # attempt's task-started (still in the worker's event buffer). That start belongs to the
        # previous attempt: both attempts get their own waits, none is clamped to 0.
        [
            feed(
                sent("u1", ts=T0),
                received("u1", ts=T0 + 0.1),
                sent("u1", retries=1, ts=T0 + 0.3),
                started("u1", ts=T0 + 0.2),  # attempt 0's start, arriving late
                retried("u1", ts=T0 + 0.35),
                received("u1", retries=1, ts=T0 + 0.4),
                started("u1", ts=T0 + 0.6),
                succeeded("u1", ts=T0 + 0.7, runtime=0.1),
            ),
            expect(sent=2, received=2, started=2, retried=1, succeeded=1),
            # queue waits: 0.2 (attempt 0) + 0.3 (attempt 1); prefetch waits: 0.1 + 0.2
            expect(queue_wait_count=2),
            expect(queue_wait_sum=pytest.approx(0.5)),
            expect(prefetch_wait_count=2),
            expect(prefetch_wait_sum=pytest.approx(0.3)),
            expect(queue_wait_bucket={"0.001": 0}),
        ],
        connected=False,
    ),
]


def receive(*uuids, host="w1@h", eta=None) -> Step:
    return feed(*(e for u in uuids for e in (sent(u), received(u, host=host, eta=eta))))


W1, W2 = "w1@h", "w2@h"

CAPACITY = [
    Case(
        "a received task is reserved on its worker until it starts",
        [
            feed(heartbeat(), heartbeat(host=W2)),
            receive("a", "b", "c"),
            expect(reserved={W1: 3, W2: 0}),
            feed(started("a")),
            expect(reserved={W1: 2}, running=1),
            feed(succeeded("a"), started("b"), started("c")),
            expect(reserved={W1: 0}, reservations=0),
        ],
    ),
    Case(
        "a reservation ends when the task is revoked, rejected or fails before it starts",
        [
            feed(heartbeat()),
            receive("a", "b", "c", "d"),
            feed(revoked("a", expired=True), rejected("b", requeue=True), failed("c")),
            expect(reserved={W1: 1}),
            feed(rejected("b", host=W2)),  # (a requeued b received nowhere yet)
            expect(reserved={W1: 1}, reservations=1),
        ],
    ),
    Case(
        "a task waiting for its ETA is not reserved",
        [
            feed(heartbeat()),
            receive("a", eta="2027-01-15T08:00:00+00:00"),
            receive("b"),
            expect(reserved={W1: 1}),
            feed(started("a")),
            expect(reserved={W1: 1}, reservations=1),
        ],
    ),
    Case(
        "a redelivered task moves its reservation to the worker that received it",
        [
            feed(heartbeat(), heartbeat(host=W2)),
            receive("a"),
            feed(received("a", host=W2)),
            expect(reserved={W1: 0, W2: 1}, redelivered=1),
            feed(started("a", host=W2)),
            expect(reserved={W1: 0, W2: 0}, reservations=0),
        ],
    ),
    Case(
        "a worker's reservations go at its worker-offline, and at its worker-online",
        [
            feed(heartbeat(), heartbeat(host=W2)),
            receive("a", "b"),
            receive("c", host=W2),
            feed(heartbeat(etype="worker-offline")),
            expect(reserved={W2: 1}, reservations=1),
            feed(heartbeat(host=W2, etype="worker-online")),
            expect(reserved={W2: 0}, reservations=0),
        ],
    ),
    Case(
        "a lost worker's reservations go",
        [
            feed(heartbeat(), heartbeat(host=W2)),
            receive("a", "b"),
            receive("c", host=W2),
            keep_alive(TIMEOUT + 2, W2),
            expect(worker_up={W1: 0, W2: 1}, reserved={W1: 0, W2: 1}, reservations=1),
        ],
    ),
    Case(
        "an evicted task's reservation goes with its record",
        [
            feed(heartbeat()),
            receive("a", "b", "c"),
            tick(),
            expect(reserved={W1: 2}, reservations=2, evicted=1),
        ],
        settings={"max_tasks": 2},
    ),
    Case(
        "a task-retried keeps the next attempt's reservation, received before it",
        [
            feed(heartbeat()),
            begin("a"),
            feed(sent("a", retries=1), received("a", retries=1)),
            expect(reserved={W1: 1}),
            feed(retried("a")),
            expect(reserved={W1: 1}, running=0),
            feed(started("a")),
            expect(reserved={W1: 0}, running=1),
        ],
    ),
    Case(
        "a failed run's duration is observed from task-started to task-failed, on the exporter's clock",
        [
            begin("a"),
            begin("b"),
            clock(1.5),
            feed(failed("a", ts=T0 + 99)),  # (the worker's timestamps play no part)
            clock(1.0),
            feed(failed("b"), failed("b")),  # a duplicate task-failed is not observed again
            expect(failed_runtime_count=2, failed_runtime_sum=pytest.approx(4.0), runtime_count=None),
            feed(sent("c"), received("c"), failed("c")),  # failed before it started: no run time
            expect(failed_runtime_count=2, failed=3),
        ],
    ),
    Case(
        "a retried run's duration is observed per attempt, and the success's runtime stays the worker's",
        [
            begin("a"),
            clock(2.0),
            feed(retried("a")),
            feed(sent("a", retries=1), received("a", retries=1)),
            clock(5.0),
            feed(started("a")),
            clock(3.0),
            feed(retried("a")),
            expect(retried_runtime_count=2, retried_runtime_sum=pytest.approx(5.0), failed_runtime_count=None),
            feed(sent("a", retries=2), received("a", retries=2), started("a"), succeeded("a", runtime=0.25)),
            expect(retried_runtime_count=2, runtime_count=1, failed_runtime_count=None),
        ],
    ),
]

CASES = RUNNING + LOST + WORKER_LIFECYCLE + TERMINAL_AND_RETRIES + CAPACITY


def _steps(steps):
    for step in steps:
        if isinstance(step, list):
            yield from _steps(step)
        else:
            yield step


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_lifecycle(case):
    rig = connected_rig(**case.settings) if case.connected else Rig(**case.settings)
    for step in _steps(case.steps):
        step(rig)


def test_every_row_checks_something_and_the_names_are_unique():
    assert len({case.name for case in CASES}) == len(CASES)
    for case in CASES:
        assert any(isinstance(step, Expect) for step in _steps(case.steps)), case.name
