"""A mixed workload on a real worker, on both brokers: every task counter must equal what
Celery really did (recorded by the tasks themselves), and the exposition must be valid
for promtool and for the OpenMetrics parser."""

from __future__ import annotations

import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import celery
import pytest
from celery import Celery
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from .rig import BROKERS, Exporter, Metrics, Rig, RigFactory, Worker, wait_for

pytestmark = pytest.mark.integration

STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
Key = Tuple[str, str]  # (task name, queue)
# The workers run the Celery of the tests' environment. From 5.7 on, a task that raises
# Reject(requeue=False) also sends task-failed (with the Reject as its exception).
REJECT_FAILS = celery.VERSION >= (5, 7)

# What the workload does, and what Celery 5.7 emits for it (checked against the tasks'
# own records below, so a change in Celery shows up as such, not as an exporter bug).
PLAN: Dict[Key, Dict[str, int]] = {
    # 3 plain successes on the default queue, 2 on the second queue
    ("it.succeed", "celery"): dict(sent=3, received=3, started=3, succeeded=3),
    ("it.succeed", "q2"): dict(sent=2, received=2, started=2, succeeded=2),
    # raises ValueError
    ("it.fail", "celery"): dict(sent=2, received=2, started=2, failed=2),
    # retries twice (countdown 0.2 s, same uuid), then succeeds: every attempt is
    # published again by the worker (task-sent), received and started
    ("it.retry", "celery"): dict(sent=3, received=3, started=3, retried=2, succeeded=1),
    # countdown 2 s
    ("it.later", "celery"): dict(sent=1, received=1, started=1, succeeded=1),
    # Reject(requeue=False) with acks_late: Celery 5.7 sends task-failed, then task-rejected;
    # Celery 5.3 to 5.6 only task-rejected
    ("it.reject", "celery"): dict(sent=1, received=1, started=1, failed=int(REJECT_FAILS), rejected=1),
    # countdown 5 s, revoked while the worker holds it: task-revoked when it falls due
    ("it.never", "celery"): dict(sent=1, received=1, revoked=1),
}
PRIMER = dict(sent=1, received=1, started=1, succeeded=1)  # it.prime, run first (Rig.prime)
EXCEPTIONS = {("it.fail", "celery", "ValueError"): 2, ("it.retry", "celery", "KeyError"): 2}


def full(counts: Dict[str, int]) -> Dict[str, int]:
    return {state: counts.get(state, 0) for state in STATES}


class MixedRun:
    def __init__(self, factory: RigFactory, rig: Rig, exporter: Exporter, worker: Worker, reader: str):
        self.factory = factory
        self.reader = reader  # the event reader this exporter must use
        self.rig = rig
        self.exporter = exporter
        self.worker = worker
        self.settled: Optional[Metrics] = None
        self.settle_error: Optional[BaseException] = None

    def expected_from_truth(self) -> Dict[Key, Dict[str, int]]:
        """Expected counters from what the producer sent and the tasks recorded."""
        truth = self.rig.truth
        expected = {}
        for (name, queue), published in self.rig.sent.items():
            if name == "it.prime":
                continue
            t = {o: truth.get(name, queue, o) for o in ("started", "succeeded", "failed", "retried", "rejected")}
            sent = published + t["retried"]  # each retry is published again by the worker
            expected[(name, queue)] = full(
                dict(
                    sent=sent,
                    received=sent,
                    started=t["started"],
                    succeeded=t["succeeded"],
                    failed=t["failed"] + (t["rejected"] if REJECT_FAILS else 0),
                    retried=t["retried"],
                    rejected=t["rejected"],
                    revoked=1 if name == "it.never" else 0,
                )
            )
        return expected

    def settle(self) -> Metrics:
        """Wait until every task counter has its expected value; the metrics of then."""
        if self.settle_error is not None:  # failed once: the other tests fail fast
            raise self.settle_error
        if self.settled is None:
            expected = counter_samples({k: full(v) for k, v in PLAN.items()})
            try:
                self.settled = self.exporter.wait_for(
                    lambda m: not mismatches(expected, m),
                    30,
                    what="the task counters to reach the expected values",
                    contains="celery_task_",
                    explain=lambda m: "mismatches:\n" + "\n".join(mismatches(expected, m)),
                )
            except AssertionError as exc:
                self.settle_error = exc
                raise
        return self.settled


def counter_samples(table: Dict[Key, Dict[str, int]]) -> Dict[Tuple[str, frozenset], float]:
    out = {}
    for (name, queue), counts in table.items():
        labels = frozenset({"name": name, "queue_name": queue}.items())
        for state, value in counts.items():
            out[(f"celery_task_{state}_total", labels)] = float(value)
    return out


def mismatches(expected: Dict[Tuple[str, frozenset], float], m: Metrics) -> List[str]:
    out = []
    for (name, labels), value in sorted(expected.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        actual = m.get((name, labels))
        if actual != value:
            out.append(f"{name}{dict(sorted(labels))}: expected {value:g}, got {actual}")
    return out


# The event reader each run must use: on Redis the socket read with hiredis; redis-py's
# PubSub when hiredis cannot be imported; kombu's consumer when kombu's Redis Channel lacks
# the internals both readers use (as after a kombu release that renamed them). Each
# fallback is shown to count exactly the same.
READERS = {
    "redis": "redis-hiredis",
    "rabbitmq": "amqp-frames",
    "redis-without-hiredis": "redis-py",
    "redis-kombu-renamed": "kombu",
    "rabbitmq-amqp-renamed": "py-amqp",
    "redis-forced-kombu": "kombu",
    "rabbitmq-forced-kombu": "kombu",
}
# Runs with a reader forced by --event-reader (the operator's way out when a fast reader
# misbehaves after a library upgrade): they count exactly too.
FORCED = {"redis-forced-kombu": "kombu", "rabbitmq-forced-kombu": "kombu"}
SHIMS = {
    # a package that shadows hiredis and cannot be imported
    "redis-without-hiredis": ("hiredis/__init__.py", 'raise ImportError("hiredis hidden by the test")\n'),
    # sitecustomize runs at the exporter's start: the kombu internals the readers use are gone
    "redis-kombu-renamed": (
        "sitecustomize.py",
        "import celery_exporter.internals as internals\n\n\n"
        "def renamed(connection, exchange):\n"
        "    raise AttributeError(\"'Channel' has no attribute '_get_publish_topic' (hidden by the test)\")\n\n\n"
        "internals.redis_subscription = renamed\n",
    ),
    # the py-amqp internals the AMQP frame reader uses are gone: py-amqp dispatches the events
    "rabbitmq-amqp-renamed": (
        "sitecustomize.py",
        "import celery_exporter.internals as internals\n\n\n"
        "def renamed(amqp_connection):\n"
        "    raise AttributeError(\"'TCPTransport' has no attribute '_quick_recv' (hidden by the test)\")\n\n\n"
        "internals.amqp_reader = renamed\n",
    ),
}


@pytest.fixture(scope="module", params=[*BROKERS, *SHIMS, *FORCED])
def mixed(request, tmp_path_factory, redis_dbs, truth_db) -> MixedRun:
    factory = RigFactory(tmp_path_factory.mktemp(f"mixed-{request.param}"), redis_dbs, truth_db)
    request.addfinalizer(factory.close)
    env = {}
    if request.param in SHIMS:
        path, text = SHIMS[request.param]
        shim = tmp_path_factory.mktemp("shim")
        (shim / path).parent.mkdir(parents=True, exist_ok=True)
        (shim / path).write_text(text)
        env["PYTHONPATH"] = str(shim)
    rig = factory(request.param.split("-")[0])
    # fast queue polling, so the queue families are in every scrape the tests check
    forced = ("--event-reader", FORCED[request.param]) if request.param in FORCED else ()
    exporter = rig.start_exporter("--queue-poll-interval", "1s", "--inspect-interval", "2s", *forced, env=env)
    worker = rig.start_worker(queues=("celery", "q2"), exporter=exporter)
    rig.prime(exporter)  # not part of PLAN; see Rig.prime

    never = rig.send("it.never", countdown=5)  # first: its countdown runs while the rest works
    for i in range(3):
        rig.send("it.succeed", [i])
    for i in range(2):
        rig.send("it.succeed", [i], queue="q2")
    for _ in range(2):
        rig.send("it.fail")
    rig.send("it.retry")
    rig.send("it.later", countdown=2)
    rig.send("it.reject")

    # Revoke it.never once the worker holds it as scheduled (received, ETA not reached):
    # then the worker sends task-received, and task-revoked when the ETA comes.
    inspect = rig.producer.control.inspect(destination=[worker.hostname], timeout=2.0)

    def scheduled_ids():
        replies = inspect.scheduled() or {}
        return {entry["request"]["id"] for entry in replies.get(worker.hostname, [])}

    wait_for(lambda: never.id in scheduled_ids(), 10, what="the worker to hold it.never as scheduled")
    rig.producer.control.revoke(never.id)

    run = MixedRun(factory, rig, exporter, worker, READERS[request.param])
    rig.truth.wait(
        {
            ("it.succeed", "celery", "succeeded"): 3,
            ("it.succeed", "q2", "succeeded"): 2,
            ("it.fail", "celery", "failed"): 2,
            ("it.retry", "celery", "succeeded"): 1,
            ("it.later", "celery", "succeeded"): 1,
            ("it.reject", "celery", "rejected"): 1,
        }
    )
    return run


def test_the_event_reader_is_the_expected_one(mixed: MixedRun):
    readers = {labels: v for (name, labels), v in mixed.settle().items() if name == "celery_exporter_event_reader_info"}
    assert readers == {frozenset({("reader", mixed.reader)}): 1.0}


def test_workload_counters_equal_ground_truth(mixed: MixedRun):
    rig, worker = mixed.rig, mixed.worker
    # 1. Celery did what the plan says (else the plan, not the exporter, is wrong).
    assert mixed.expected_from_truth() == {k: full(v) for k, v in PLAN.items()}, rig.truth.snapshot()

    # 2. Every counter of every label set, zeros included, equals it.
    m = mixed.settle()
    expected = counter_samples({k: full(v) for k, v in PLAN.items()})
    assert not mismatches(expected, m)
    assert rig.truth.get("it.never", "celery", "started") == 0, "the revoked task ran"

    # Exactly the expected label sets (and the primer's): real queue names, no 'unknown'.
    for state in STATES:
        label_sets = {
            (dict(lbl)["name"], dict(lbl)["queue_name"])
            for lbl in m.select(f"celery_task_{state}_total")
            if dict(lbl)["name"] != "it.prime"
        }
        assert label_sets == set(PLAN), state
    assert "unknown" not in {
        dict(lbl)["queue_name"] for lbl in m.select("celery_task_sent_total") if dict(lbl)["name"] != "it.prime"
    }

    # Exceptions by class: failures and retries.
    for (name, queue, exc), n in EXCEPTIONS.items():
        assert m.get_value("celery_task_exceptions_total", name=name, queue_name=queue, exception=exc) == n
    by_task: Dict[str, float] = {}
    for lbl, value in m.select("celery_task_exceptions_total").items():
        by_task[dict(lbl)["name"]] = by_task.get(dict(lbl)["name"], 0) + value
    assert by_task == {"it.fail": 2, "it.retry": 2, **({"it.reject": 1} if REJECT_FAILS else {})}

    # Histograms: one runtime per success; one prefetch wait per started attempt.
    for (name, queue), counts in PLAN.items():
        labels = dict(name=name, queue_name=queue)
        counts = full(counts)
        runtime_count = m.get_value("celery_task_runtime_seconds_count", **labels)
        if counts["succeeded"]:
            assert runtime_count == counts["succeeded"], (name, queue)
            runtime_sum = m.get_value("celery_task_runtime_seconds_sum", **labels)
            assert 0 < runtime_sum < 5 * counts["succeeded"], (name, queue, runtime_sum)
            assert m.bucket("celery_task_runtime_seconds", float("inf"), **labels) == runtime_count
        else:
            assert runtime_count in (None, 0), (name, queue, runtime_count)
        prefetch_count = m.get_value("celery_task_prefetch_wait_seconds_count", **labels)
        queue_count = m.get_value("celery_task_queue_wait_seconds_count", **labels)
        if counts["started"]:
            if name == "it.retry":
                # Exporter bug: when the pool child's task-sent of the next
                # attempt reaches the exporter before the worker's task-started of the
                # current one, that attempt loses its wait observations. Racy, so a range.
                assert 1 <= prefetch_count <= counts["started"], prefetch_count
                assert 1 <= queue_count <= counts["started"], queue_count
            else:
                assert prefetch_count == counts["started"], (name, queue, prefetch_count)
                assert queue_count == counts["started"], (name, queue, queue_count)
            for hist in ("queue_wait", "prefetch_wait"):
                total = m.get_value(f"celery_task_{hist}_seconds_sum", **labels)
                assert 0 <= total < 30, (hist, name, queue, total)
        else:
            assert prefetch_count in (None, 0) and queue_count in (None, 0), (name, queue)
    # The 2 s countdown is not queue wait (the ETA is subtracted).
    for hist in ("queue_wait", "prefetch_wait"):
        total = m.get_value(f"celery_task_{hist}_seconds_sum", name="it.later", queue_name="celery")
        assert total < 1.5, (hist, total)

    # Self-metrics: every event arrived once, none dropped.
    totals = {state: sum(full(c)[state] for c in [*PLAN.values(), PRIMER]) for state in STATES}
    for state, n in totals.items():
        assert m.get_value("celery_exporter_events_total", type=f"task-{state}") == n, state
    dropped = m.select("celery_exporter_events_dropped_total")
    assert dropped and all(v == 0 for v in dropped.values()), dropped
    assert m.get_value("celery_exporter_broker_connected") == 1

    # Worker metrics from its heartbeats: tasks accepted (= started), none active.
    accepted = totals["started"]
    wm = mixed.exporter.wait_for(
        lambda m: m.get_value("celery_worker_tasks_processed_total", hostname=worker.hostname) == accepted,
        15,
        what=f"celery_worker_tasks_processed_total to reach {accepted}",
        contains=worker.hostname,
    )
    assert wm.get_value("celery_worker_up", hostname=worker.hostname) == 1
    assert wm.get_value("celery_worker_tasks_active", hostname=worker.hostname) == 0
    assert wm.get_value("celery_worker_heartbeat_interval_seconds", hostname=worker.hostname) == 2.0
    assert (
        wm.get_value(
            "celery_worker_info",
            hostname=worker.hostname,
            sw_ident="py-celery",
            sw_ver=celery.__version__,
            sw_sys="Linux",
        )
        == 1
    )

    # 3. Stable: two more heartbeats later, nothing was counted twice.
    hb = wm.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname)
    later = mixed.exporter.wait_for(
        lambda m: m.get_value("celery_worker_last_heartbeat_timestamp_seconds", hostname=worker.hostname) > hb + 3,
        15,
        what="two more heartbeats",
        contains=worker.hostname,
    )
    assert not mismatches(expected, later)
    for state, n in totals.items():
        assert later.get_value("celery_exporter_events_total", type=f"task-{state}") == n, state


def test_first_task_takes_the_queue_of_its_late_task_sent(make_rig):
    """The exporter has not seen any task-sent yet when a task's task-received arrives
    before its task-sent. This happens with real Celery: on Redis the producer's task-sent
    came after the worker's task-received (even after task-succeeded) in 3 of 15 fresh
    starts. Here the order is made deterministic: the task is published without its
    task-sent, which Celery's own event dispatcher then sends once the task ran."""
    rig = make_rig("redis")
    exporter = rig.start_exporter("--no-inspect")
    # two queues: the worker's queue cannot stand in for the real one
    worker = rig.start_worker(queues=("celery", "q2"), exporter=exporter)
    quiet = Celery(f"it-quiet-{rig.id}", broker=rig.broker_url, set_as_current=False)  # no task-sent
    try:
        result = quiet.send_task("it.succeed", args=[1], queue="celery")
        rig.truth.wait({("it.succeed", "celery", "succeeded"): 1})
        with rig.producer.events.default_dispatcher() as dispatcher:
            dispatcher.send(
                "task-sent",
                uuid=result.id,
                root_id=result.id,
                parent_id=None,
                name="it.succeed",
                args="(1,)",
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
                queue="celery",
                exchange="",
                routing_key="celery",
            )
    finally:
        quiet.close()
    m = exporter.wait_for(
        lambda m: (
            sum(m.select("celery_task_sent_total", name="it.succeed").values()) == 1
            and sum(m.select("celery_task_succeeded_total", name="it.succeed").values()) == 1
        ),
        15,
        what="the task counted",
        contains="it.succeed",
    )
    assert m.get_value("celery_exporter_events_total", type="task-sent") == 1
    assert worker.proc.running
    for state in ("sent", "received", "started", "succeeded"):
        assert m.select(f"celery_task_{state}_total", name="it.succeed") == {
            frozenset(dict(name="it.succeed", queue_name="celery").items()): 1.0
        }, state


def test_reject_exception_class(mixed: MixedRun):
    m = mixed.settle()
    expected = {frozenset(dict(name="it.reject", queue_name="celery", exception="Reject").items()): 1.0}
    assert m.select("celery_task_exceptions_total", name="it.reject") == (expected if REJECT_FAILS else {})


def wait_queue_metrics(mixed: MixedRun) -> Metrics:
    """Wait until the poller reported both queues (and, on RabbitMQ, their consumers)."""

    def polled(m: Metrics) -> bool:
        ok = all(m.get_value("celery_queue_length", queue_name=q) == 0 for q in ("celery", "q2"))
        if mixed.rig.kind == "rabbitmq":
            ok = ok and all(m.get_value("celery_queue_active_consumers", queue_name=q) == 1 for q in ("celery", "q2"))
        return ok and all(m.get_value("celery_queue_active_workers", queue_name=q) == 1 for q in ("celery", "q2"))

    return mixed.exporter.wait_for(polled, 15, what="queue metrics of celery and q2", contains="queue")


def test_queue_metrics_after_workload(mixed: MixedRun):
    """Both queues drained; one worker up consumes each, with its one pool process."""
    mixed.settle()
    m = wait_queue_metrics(mixed)
    for queue in ("celery", "q2"):
        assert m.get_value("celery_queue_length", queue_name=queue) == 0
        assert m.get_value("celery_queue_active_workers", queue_name=queue) == 1
        assert m.get_value("celery_queue_active_processes", queue_name=queue) == 1
    assert m.get_value("celery_exporter_queue_poll_success") == 1
    assert "unknown" not in m.label_values("celery_queue_length", "queue_name")


def promtool_check(body: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found (Debian package prometheus)")
    return subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)


def scrape_all_kinds(mixed: MixedRun) -> str:
    """/metrics once every task event kind was seen and the poller's families are there."""
    mixed.settle()
    wait_queue_metrics(mixed)
    status, headers, body = mixed.exporter.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for family in (
        "celery_task_rejected_total",
        "celery_task_revoked_total",
        "celery_task_retried_total",
        "celery_task_runtime_seconds_bucket",
        "celery_worker_up",
        "celery_task_exceptions_total",
        "celery_queue_length",
        "celery_queue_active_workers",
        "celery_queue_active_processes",
        "celery_exporter_events_total",
    ):
        assert f"\n{family}" in body, family
    return body


def test_metrics_pass_promtool_check(mixed: MixedRun):
    result = promtool_check(scrape_all_kinds(mixed))
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"


def test_openmetrics_exposition_parses(mixed: MixedRun):
    settled = mixed.settle()
    status, headers, body = mixed.exporter.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text"), headers["Content-Type"]
    assert body.endswith("# EOF\n")
    om: Dict[Tuple[str, frozenset], float] = {}
    for family in om_families(body):
        for sample in family.samples:
            om[(sample.name, frozenset(sample.labels.items()))] = sample.value
    # The task series are final: both formats carry the same samples.
    task_samples = {k: v for k, v in settled.items() if k[0].startswith("celery_task_")}
    assert task_samples
    assert {k: om.get(k) for k in task_samples} == task_samples
