"""Two exporter replicas behind one Prometheus and a real Alertmanager (Debian's), with the
shipped dashboards, rules and alerts/alertmanager.example.yml, while real workers run a known
workload on a private redis-server:

1. every dashboard query gives over both replicas what it gives over one (the same query
   restricted to one replica's instance, over the very same samples);
2. a SIGKILLed worker reaches the test's webhook as exactly one CeleryWorkerLost notification
   holding one alert (not one per replica), with severity, job, hostname, cluster, namespace,
   summary and runbook, and one resolved notification after the worker TTL;
3. a broker outage delivers one CeleryBrokerUnreachable notification, and what it explains is
   inhibited: Alertmanager holds the surviving worker's CeleryWorkerLost and both replicas'
   CeleryExporterBrokerDisconnected suppressed, and none of them reaches the webhook.

The rules' `for:` are shortened through the alert configuration (rendered by
alerts/generate.py), the exporters' worker timings by their flags, and Alertmanager's group
timings by the test; routes and inhibit rules are as shipped."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Dict, FrozenSet, List, Tuple

import pytest

from .promstack import Alertmanager, Prometheus, Webhook, app_env, dashboard_queries, rules_file
from .rig import HOST, Exporter, RedisServer, Rig, wait_for

pytestmark = pytest.mark.integration

LABELS = {"cluster": "ci", "namespace": "celery"}
WORKER_TIMEOUT = 4  # s (--worker-timeout)
WORKER_TTL = 20  # s (--worker-ttl): the lost worker's series, and its alert, end then
# rate() scales a window's increase by the window over the time its samples span; with a
# 0.5 s scrape interval that span differs by one interval from one scrape phase to another,
# about 2 to 4 % in a 25 s window (seen: the two replicas' own values up to 4.3 % apart). A
# query that summed both replicas would be off by 100 %.
RELATIVE = 0.1
# Heartbeat ages: each replica's newest heartbeat may be one heartbeat (2 s) apart.
ABSOLUTE = {"Heartbeat age": 2.5}
# The run times of failed and retried attempts are timed by each replica on its own clock (from
# task-started to task-failed / task-retried as they arrive), so the replicas' values differ by
# their event delivery jitter, milliseconds (seen: 7.3 and 8.5 ms for it.retry's mean, 17 %
# apart): an absolute tolerance for the queries that read them.
OWN_CLOCK = ("celery_task_failed_runtime_seconds", "celery_task_retried_runtime_seconds")
OWN_CLOCK_TOLERANCE = 0.05  # s
# Per process on purpose: each replica's resident memory is its own.
PER_PROCESS = ("Celery / Overview / Exporter memory / A",)


def workload(rig: Rig, stop: threading.Event, errors: List[BaseException]) -> None:
    """Every task outcome the dashboards show, on two queues, until `stop`."""
    i = 0
    try:
        while not stop.wait(0.2):
            i += 1
            rig.send("it.succeed", [i], queue="celery" if i % 3 else "q2")
            if i % 4 == 0:
                rig.send("it.fail")
            if i % 10 == 0:
                rig.send("it.retry")
            if i % 8 == 1:
                rig.send("it.hold", [1])
    except BaseException as exc:  # shown by the test
        errors.append(exc)


def run_workload(rig: Rig, seconds: float) -> None:
    stop = threading.Event()
    errors: List[BaseException] = []
    thread = threading.Thread(target=workload, args=(rig, stop, errors), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(10)
    assert not errors, errors


def settle(rig: Rig, exporters: List[Exporter]) -> None:
    """Every task sent has ended, and both replicas hold the same task counters."""
    expected = {}
    for (name, queue), count in rig.sent.items():
        outcome = "failed" if name == "it.fail" else "succeeded"
        expected[(name, queue, outcome)] = count
    rig.truth.wait(expected, timeout=60)

    def same_counts():
        views = [
            {k: v for k, v in e.metrics().items() if k[0].startswith("celery_task_") and k[0].endswith("_total")}
            for e in exporters
        ]
        ends = ("celery_task_succeeded_total", "celery_task_failed_total")
        finished = sum(v for k, v in views[0].items() if k[0] in ends)
        return views[0] == views[1] and finished >= sum(expected.values())

    wait_for(same_counts, 30, what="both replicas to count the same tasks")

    def heartbeats_idle():
        """The workers' heartbeat gauges too: a heartbeat sent after the last task ended
        (active 0, its final processed count) reached both replicas."""
        views = []
        for e in exporters:
            m = e.metrics()
            active = sum(m.select("celery_worker_tasks_active").values())
            views.append((active, m.select("celery_worker_tasks_processed_total")))
        return views[0] == views[1] and views[0][0] == 0

    wait_for(heartbeats_idle, 30, what="both replicas to hear idle workers")


def values(result: List[dict]) -> Dict[FrozenSet[Tuple[str, str]], float]:
    return {
        frozenset((k, v) for k, v in r["metric"].items() if k not in ("instance", "pod")): float(r["value"][1])
        for r in result
    }


def close(key: str, one: float, two: float, absolute: float = 0.0) -> bool:
    if math.isnan(one) or math.isnan(two):
        return math.isnan(one) and math.isnan(two)
    if absolute:
        return abs(one - two) <= absolute
    for fragment, tolerance in ABSOLUTE.items():
        if fragment in key:
            return abs(one - two) <= tolerance
    return abs(one - two) <= RELATIVE * max(abs(one), abs(two)) + 1e-9


def broker_traffic(pid: int, port: int) -> Tuple[int, int]:
    """(connections, bytes received) of process `pid`'s TCP connections to 127.0.0.1:`port`,
    from the kernel's socket statistics (`ss -tinp`, iproute2)."""
    ss = shutil.which("ss")
    assert ss, "ss not found (Debian package iproute2; .ci/run installs it)"
    lines = subprocess.run(
        [ss, "-tinpH", "state", "established", "dst", f"{HOST}:{port}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    connections, received, mine = 0, 0, False
    for line in lines:
        if not line.startswith((" ", "\t")):  # a socket's line; its details follow, indented
            mine = f"pid={pid}," in line
            connections += mine
        elif mine:
            match = re.search(r"\bbytes_received:(\d+)", line)
            received += int(match.group(1)) if match else 0
    return connections, received


def events_received(exporter: Exporter) -> float:
    """Events counted, heartbeats left out: they keep arriving (a worker sends one every 2 s)
    between the two replicas' scrapes, which are taken one after the other, so a heartbeat
    could be in one count and not yet in the other. Every other event of the workload has
    settled before the count is read."""
    counted = exporter.metrics().select("celery_exporter_events_total")
    return sum(v for labels, v in counted.items() if dict(labels).get("type") != "worker-heartbeat")


def test_two_replicas_count_once_and_page_once(make_rig, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    rig = make_rig(server.url)
    rig.procs.append(server.proc)
    short = {"CeleryWorkerLost": "3s", "CeleryBrokerUnreachable": "2s", "CeleryExporterBrokerDisconnected": "2s"}
    rules = rules_file(tmp_path, {"alerts": {name: {"for": value} for name, value in short.items()}})

    timings = ("--worker-timeout", f"{WORKER_TIMEOUT}s", "--worker-ttl", f"{WORKER_TTL}s")
    replicas = [
        rig.start_exporter("-A", "it_worker_app", *timings, short_timings=False, env=app_env(rig)) for _ in range(2)
    ]
    one, two = replicas
    doomed = rig.start_worker(queues=("celery", "q2"), concurrency=2, exporter=one)
    survivor = rig.start_worker(queues=("celery",), concurrency=2, exporter=one)
    for worker in (doomed, survivor):
        two.wait_for(
            lambda m, w=worker: m.get_value("celery_worker_up", hostname=w.hostname) == 1,
            30,
            what=f"replica 2 to see {worker.hostname}",
            contains=worker.hostname,
        )
    rig.prime(one)

    webhook = Webhook()
    alertmanager = Alertmanager(tmp_path, webhook.url)
    rig.procs.append(alertmanager.proc)
    prometheus = Prometheus(
        tmp_path,
        [one.port, two.port],
        rules,
        labels=LABELS,
        alertmanager=f"{HOST}:{alertmanager.port}",
        scrape_interval="500ms",
    )
    rig.procs.append(prometheus.proc)
    first, second = prometheus.targets

    try:
        # -- 1. the dashboards over two replicas and over one ---------------------------------
        # Every label set the workload makes exists, and holds still, when the compared window
        # ($__rate_interval and $__range) opens; then the workload runs inside it and ends
        # before it closes. So both ends of every rate() are flat, whatever the scrape phase.
        run_workload(rig, 4)
        settle(rig, replicas)
        quiet_from = time.time()
        time.sleep(2.5)  # the settled values scraped (every 0.5 s) before the window opens
        traffic_before = [broker_traffic(r.proc.pid, server.port)[1] for r in replicas]
        events_before = [events_received(r) for r in replicas]
        started = time.monotonic()
        run_workload(rig, 20)
        settle(rig, replicas)
        elapsed = time.monotonic() - started
        # What each replica costs the broker: its connections, and a copy of every event.
        traffic = [broker_traffic(r.proc.pid, server.port) for r in replicas]
        sockets = [connections for connections, _ in traffic]
        per_replica = [
            (received - before_bytes, events_received(r) - before)
            for r, (_, received), before_bytes, before in zip(replicas, traffic, traffic_before, events_before)
        ]
        assert per_replica[0][1] == per_replica[1][1] > 500, per_replica  # every event reached both
        assert sockets[0] == sockets[1] and 1 <= sockets[0] <= 6, sockets
        at = time.time() + 2
        window = int(at - quiet_from - 1)  # opens 1 to 2 s after quiet_from, before the workload
        time.sleep(at - time.time() + 0.5)  # the replicas' last values scraped
        assert prometheus.query('count(up{job="celery-exporter"} == 1)', at)[0]["value"][1] == "2"

        builtins = {"$__rate_interval": f"{window}s", "$__range": f"{window}s", "$__interval": "1s"}
        compared, answered, worst, apart = 0, 0, 0.0, 0.0
        mismatches = []
        for key, expr in dashboard_queries(builtins).items():
            assert 'job=~".*"' in expr, (key, expr)
            single = expr.replace('job=~".*"', f'job=~".*", instance="{first}"')
            both = values(prometheus.query(expr, at))
            alone = values(prometheus.query(single, at))
            if key in PER_PROCESS:
                assert len(prometheus.query(expr, at)) == 2 and len(alone) == 1, key
                continue
            compared += 1
            answered += bool(alone)
            if both.keys() != alone.keys():
                mismatches.append((key, "label sets", sorted(map(sorted, both)), sorted(map(sorted, alone))))
                continue
            own_clock = OWN_CLOCK_TOLERANCE if any(family in expr for family in OWN_CLOCK) else 0.0
            for labels, value in alone.items():
                if not close(key, value, both[labels], own_clock):
                    mismatches.append((key, dict(labels), value, both[labels]))
                elif value and not math.isnan(value) and not own_clock and not any(f in key for f in ABSOLUTE):
                    worst = max(worst, abs(value - both[labels]) / abs(value))
                    # how far the replicas' own values are apart (scrape phase), for the record
                    other = values(prometheus.query(expr.replace('job=~".*"', f'job=~".*", instance="{second}"'), at))
                    if other.get(labels):
                        apart = max(apart, abs(value - other[labels]) / abs(value))
        assert not mismatches, "\n".join(map(str, mismatches))
        assert compared >= 50 and answered >= compared - 3, (compared, answered)

        # The comparison can tell: a plain sum over both replicas is twice one replica's.
        raw = f'sum(increase(celery_task_succeeded_total{{job="celery-exporter"}}[{window}s]))'
        doubled = float(prometheus.query(raw, at)[0]["value"][1])
        single_raw = float(prometheus.query(raw.replace('"}', f'", instance="{first}"}}'), at)[0]["value"][1])
        assert single_raw > 50 and abs(doubled / single_raw - 2) < 0.1, (doubled, single_raw)

        # -- 2. a SIGKILLed worker pages once, then resolves after the worker TTL -------------
        rig.send("it.hold", [300], queue="q2")
        rig.send("it.hold", [300], queue="q2")
        rig.truth.wait({("it.hold", "q2", "started"): 2})
        for replica in replicas:
            replica.wait_for(
                lambda m: m.get_value("celery_task_running", name="it.hold", queue_name="q2") == 2,
                20,
                what="the doomed worker's two it.hold tasks to run",
                contains="it.hold",
            )
        killed_at = time.monotonic()
        doomed.proc.signal_group(signal.SIGKILL)

        lost = {"hostname": doomed.hostname, **LABELS}
        wait_for(
            lambda: webhook.alerts("CeleryWorkerLost", "firing", **lost),
            60,
            interval=0.5,
            what="a CeleryWorkerLost notification for the killed worker",
            describe=lambda: str(webhook.received())[:3000],
        )
        paged_after = time.monotonic() - killed_at
        wait_for(
            lambda: webhook.alerts("CeleryWorkerLost", "resolved", **lost),
            WORKER_TTL + 40,
            interval=0.5,
            what="the CeleryWorkerLost notification to resolve after the worker TTL",
            describe=lambda: str(webhook.received())[:3000],
        )
        resolved_after = time.monotonic() - killed_at
        firing = webhook.alerts("CeleryWorkerLost", "firing", **lost)
        assert len(firing) == 1, firing
        receiver, payload, hits = firing[0]
        assert receiver == "celery-pager" and len(payload["alerts"]) == 1, payload
        assert hits[0]["labels"] == {
            "alertname": "CeleryWorkerLost",
            "severity": "critical",
            "job": "celery-exporter",
            "hostname": doomed.hostname,
            **LABELS,
        }
        annotations = hits[0]["annotations"]
        assert annotations["summary"] == f"Celery worker {doomed.hostname} stopped sending heartbeats"
        assert "--worker-ttl" in annotations["runbook"] and doomed.hostname in annotations["description"]
        assert len(webhook.alerts("CeleryWorkerLost", "resolved", **lost)) == 1
        # up is 0 after the worker timeout, then 3 s of for:; the series ends at the TTL after
        # the last heartbeat, which came up to one heartbeat interval (2 s) before the kill
        assert WORKER_TIMEOUT < paged_after < WORKER_TIMEOUT + 20, paged_after
        assert WORKER_TTL - 2.5 < resolved_after < WORKER_TTL + 40, resolved_after
        # the worker that lives on never paged
        assert not webhook.alerts("CeleryWorkerLost", hostname=survivor.hostname)

        # The two tasks it ran: one CeleryTasksInterrupted notification, counted once.
        interrupted = webhook.alerts("CeleryTasksInterrupted", "firing", name="it.hold", **LABELS)
        assert len(interrupted) == 1 and interrupted[0][0] == "celery-chat", interrupted
        assert interrupted[0][2][0]["annotations"]["description"].startswith("2 run(s) of it.hold"), interrupted

        # -- 3. a broker outage: the broker alert, and the lost-worker alert it explains muted --
        assert server.stop() == 0
        rig.procs.remove(server.proc)
        rig.procs.append(server.proc)  # keep its log for the report
        unreachable = wait_for(
            lambda: webhook.alerts("CeleryBrokerUnreachable", "firing", **LABELS),
            30,
            interval=0.5,
            what="a CeleryBrokerUnreachable notification",
            describe=lambda: str(webhook.received())[-3000:],
        )
        assert len(unreachable) == 1 and unreachable[0][0] == "celery-pager", unreachable
        assert [a["labels"] for a in unreachable[0][1]["alerts"]] == [
            {"alertname": "CeleryBrokerUnreachable", "severity": "critical", "job": "celery-exporter", **LABELS}
        ]

        def muted(alertname: str, **labels: str) -> List[dict]:
            held = [
                a for a in alertmanager.alerts(alertname) if all(a["labels"].get(k) == v for k, v in labels.items())
            ]
            return [a for a in held if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]]

        wait_for(
            lambda: muted("CeleryWorkerLost", hostname=survivor.hostname),
            40,
            interval=0.5,
            what="Alertmanager to hold CeleryWorkerLost for the survivor, inhibited",
            describe=lambda: str(alertmanager.alerts("CeleryWorkerLost"))[:3000],
        )
        wait_for(
            lambda: {a["labels"]["instance"] for a in muted("CeleryExporterBrokerDisconnected")} == {first, second},
            20,
            interval=0.5,
            what="both replicas' CeleryExporterBrokerDisconnected, inhibited",
            describe=lambda: str(alertmanager.alerts("CeleryExporterBrokerDisconnected"))[:3000],
        )
        time.sleep(4)  # group_wait 1 s, group_interval 2 s: a notification would be here by now
        assert not webhook.alerts("CeleryWorkerLost", hostname=survivor.hostname), webhook.received()[-3:]
        assert not webhook.alerts("CeleryExporterBrokerDisconnected"), webhook.received()[-3:]
        assert len(webhook.alerts("CeleryBrokerUnreachable", "firing")) == 1
        print(
            f"{compared} dashboard queries: one replica = two (largest difference {worst:.1%}; the replicas' "
            f"own values up to {apart:.1%} apart); a plain sum over both {doubled / single_raw:.2f}x one; "
            f"each replica: {sockets[0]} broker connections, {per_replica[0][1] / elapsed:.0f} events/s "
            f"read as {per_replica[0][0] / elapsed / 1024:.0f} KiB/s "
            f"({per_replica[0][0] / per_replica[0][1]:.0f} B per event); "
            f"CeleryWorkerLost paged {paged_after:.1f} s after SIGKILL, resolved after {resolved_after:.1f} s; "
            f"{len(webhook.received())} notifications in all"
        )
    finally:
        webhook.close()
