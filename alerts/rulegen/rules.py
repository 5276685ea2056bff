"""The rules: every recording rule and alert of celery-exporter, written once.

Each alert is declared with its configuration keys (enabled, severity, for, and its own
thresholds), its expression as template parts (template.py) and its texts. `document()` lays
them out as the YAML of a rules file; the same parts render the shipped file (the defaults),
a file for a user's configuration, and the chart's template.

Replicas: two exporter replicas export the same series, apart only in `instance` and `pod`.
The task, worker and queue rules take `max without (instance, pod)` of a series (or of its
rate) before they sum, so each fires once per worker, task name or queue however many
replicas run. Every aggregation keeps `cluster` and `namespace` next to `job`.

SLOs: the failure ratio of each task name and the queue wait of each queue are alerted on as
the SRE workbook's multi-window, multi-burn-rate alerts. The bad and all events per second are
recorded per task name (or queue) over each window: from the exporter's series up to 6 hours,
and as averages of the 5-minute rates for the day and the 3 days, so that those read one
recorded series per task, not days of every raw series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple, Union

from .config import (
    RATIO,
    SECONDS,
    Boolean,
    Duration,
    Keyed,
    LabelValue,
    Number,
    Numbers,
    Param,
    Section,
    UrlPattern,
)
from .template import (
    AnyOf,
    Each,
    Equal,
    Exclude,
    Fmt,
    IsTrue,
    Item,
    Key,
    Matcher,
    Matchers,
    NotEmpty,
    Part,
    Parts,
    Selectors,
    Url,
    Value,
    When,
    seq,
)

# The project's docs site: each alert's runbook is a section of its Alerts page.
DOCS = "https://celery-exporter.github.io/celery-exporter/alerts/#%s"
BY_JOB = "cluster, namespace, job"
BY_TASK = "cluster, namespace, job, name"
BY_QUEUE = "cluster, namespace, job, queue_name"
BY_WORKER = "cluster, namespace, job, hostname"
ONE = "max without (instance, pod)"
EXPR_INDENT = 10  # the expression lines of a rule: "          "
NL = "\n" + " " * EXPR_INDENT

# Dashboards (dashboards/build.py) an alert links to, by uid.
OVERVIEW, TASKS, WORKERS = "celery-exporter-overview", "celery-exporter-tasks", "celery-exporter-workers"

# The SRE workbook's windows and burn-rate factors for a 30-day SLO: (severity key, long
# window, short window, factor). 14.4 spends 2 % of the budget in the hour, 6 spends 5 % in
# 6 hours, 3 spends 10 % in a day, 1 spends it all in 30 days.
FAST = (("1h", "5m", "14.4", 3600), ("6h", "30m", "6", 21600))
SLOW = (("1d", "2h", "3", 86400), ("3d", "6h", "1", 259200))
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
LONG_WINDOWS = ("1d", "3d")  # averaged from the 5-minute rates


def sel(*extra: Matcher) -> Matchers:
    """The configured selectors, and more matchers."""
    return Matchers((Selectors(),) + extra)


def alert_value(alert: str, key: str, fmt: Fmt = Fmt.NUMBER) -> Value:
    return Value(("alerts", alert, key), fmt)


def lines(*items: Sequence[Part]) -> Parts:
    """Expression lines: each item one line, the indentation of a rule's expression."""
    out: List[Part] = []
    for i, item in enumerate(items):
        if i:
            out.append(NL)
        out.extend(seq(item))
    return tuple(out)


def overridable(
    lhs: Callable[[Tuple[Matcher, ...]], Parts], default: Part, path: Tuple[str, ...], label: str, op: str = ">"
) -> Parts:
    """`lhs > default`, and for each entry of the mapping at `path` (a task or queue name: its
    own threshold) `or lhs > value` with the left side restricted to that name; the default
    branch leaves the names with their own threshold out."""
    return seq(
        lhs((Exclude(label, path),)),
        f" {op} ",
        default,
        Each(path, seq(NL, "or", NL, lhs((Equal(label, Key()),)), f" {op} ", Item()), EXPR_INDENT),
    )


# -- the configuration ----------------------------------------------------------------------


def common(severity: str, for_: str) -> Tuple[Param, ...]:
    return (
        Param("enabled", Boolean(), True, "false leaves the alert out"),
        Param("severity", LabelValue(), severity, "its severity label"),
        Param("for", Duration(), for_, "how long the condition holds before it fires"),
    )


def task_thresholds(what: str) -> Param:
    return Param(
        "taskThresholds",
        Keyed(Number(minimum=0), "task name"),
        {},
        f"task name: its own {what}; the other names keep `threshold`",
    )


def queue_thresholds(what: str) -> Param:
    return Param(
        "queueThresholds",
        Keyed(Number(minimum=0), "queue name"),
        {},
        f"queue name: its own {what}; the other queues keep `threshold`",
    )


TOP = (
    Param(
        "selectors",
        Keyed(LabelValue(), "label name", keys_are_label_names=True),
        {"job": "celery-exporter"},
        "label: value matchers every rule puts on the exporter's series (and on `up`): the exporter's "
        "`job` (required), and `cluster` or `namespace` to give one set of rules per cluster or namespace",
        chart_default={},
        chart_help="label: value matchers every rule puts on the exporter's series; `job` defaults to this "
        "release's Service name (the job prometheus-operator gives its targets)",
    ),
    Param(
        "runbookUrlPattern",
        UrlPattern(),
        DOCS,
        "the `runbook_url` of every alert: %s is the alert's name in lower case (an anchor of the docs' Alerts page)",
    ),
    Param(
        "dashboardUrlPattern",
        UrlPattern(required=False),
        "",
        "the `dashboard_url` of every alert: %s is the uid of the Grafana dashboard it concerns, e.g. "
        '"https://grafana.example.com/d/%s"; empty: no dashboard_url',
    ),
    Section(
        "taskFailureSlo",
        "the success-ratio objective of every task name (the failure budget burn-rate alerts)",
        (
            Param("target", RATIO, 0.999, "the part of its runs a task name should finish without failing"),
            Param("taskTargets", Keyed(RATIO, "task name"), {}, "task name: its own target"),
        ),
    ),
    Section(
        "queueWaitSlo",
        "the queue-wait objective of every queue (the queue-wait budget burn-rate alerts)",
        (
            Param(
                "threshold",
                SECONDS,
                60,
                "a task that waited longer than this many seconds from publishing to start is a slow one; "
                "a bucket bound of the exporter's --wait-buckets",
            ),
            Param("target", RATIO, 0.99, "the part of the tasks of a queue that should start within the threshold"),
            Param("queueThresholds", Keyed(SECONDS, "queue name"), {}, "queue name: its own threshold"),
            Param("queueTargets", Keyed(RATIO, "queue name"), {}, "queue name: its own target"),
            Param(
                "waitBuckets",
                Numbers(),
                [],
                "the exporter's --wait-buckets when they are not its default; the thresholds must be among them",
                chart=False,
            ),
        ),
    ),
)


# -- the alerts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    name: str
    group: str
    fires: str  # when it fires, for the documentation's table
    comment: str  # above the expression in the rules file
    expr: Parts
    summary: str
    description: str
    runbook: str  # a first hint, in the alert itself; the whole runbook is on the docs' page
    dashboard: str
    params: Tuple[Param, ...]


def worker_lost() -> Alert:
    name = "CeleryWorkerLost"
    return Alert(
        name,
        "celery-workers",
        "a worker stopped heartbeating without a warm shutdown (SIGKILL, OOM, lost node)",
        "up is 0 only for a worker whose heartbeats stopped without worker-offline (SIGKILL, OOM, lost "
        "node). A graceful shutdown removes the series instead. Up on any replica is up: one alert per "
        "worker, not one per replica.",
        seq(f"{ONE} (celery_worker_up", sel(), ") == 0"),
        "Celery worker {{ $labels.hostname }} stopped sending heartbeats",
        "No heartbeat from {{ $labels.hostname }} (job {{ $labels.job }}) for longer than the exporter's "
        "worker timeout, and it did not shut down gracefully. It was probably killed (OOM, SIGKILL) or its "
        "host or pod was lost; tasks it held may need attention.",
        "Check the worker's host/pod for OOM kills or restarts. If it was removed on purpose without a warm "
        "shutdown, the alert resolves by itself after the exporter's --worker-ttl (15m by default).",
        WORKERS,
        common("critical", "2m"),
    )


def no_worker_up() -> Alert:
    return Alert(
        "CeleryNoWorkerUp",
        "celery-workers",
        "an exporter of the job is connected to the broker but not one worker is up",
        "An exporter is connected to the broker, yet no exporter of the job hears a single worker heartbeat.",
        lines(
            seq(f"max by ({BY_JOB}) (celery_exporter_broker_connected", sel(), ") == 1"),
            f"unless on ({BY_JOB})",
            seq(f"(max by ({BY_JOB}) (celery_worker_up", sel(), ") == 1)"),
        ),
        "No Celery worker is up (job {{ $labels.job }})",
        "The exporter of job {{ $labels.job }} is connected to the broker but hears no worker heartbeat: "
        "nothing is processing tasks.",
        "Check the worker deployment (crash loops, scaled to zero, wrong broker URL). If the workers run but "
        "the exporter hears nothing, compare the exporter's broker URL, virtual host / Redis DB and transport "
        "options with the workers'. For fleets that scale to zero on purpose, drop this alert and rely on "
        "CeleryQueueBacklog.",
        WORKERS,
        common("critical", "5m"),
    )


def worker_task_events_disabled() -> Alert:
    return Alert(
        "CeleryWorkerTaskEventsDisabled",
        "celery-workers",
        "a worker runs tasks without sending task events: its tasks are missing from every task metric",
        "The exporter diagnosed the worker from its heartbeats: their `processed` count rises while no task "
        "event comes from it. Its tasks are not counted anywhere. On any replica that hears its task events "
        "the worker is fine.",
        seq(f"{ONE} (celery_worker_task_events_enabled", sel(), ") == 0"),
        "Celery worker {{ $labels.hostname }} runs tasks without sending task events",
        "The heartbeats of {{ $labels.hostname }} (job {{ $labels.job }}) show tasks processed, but no task "
        "event comes from it: its tasks are missing from the task metrics and dashboards.",
        "Start the worker with -E (or set worker_send_task_events=True in its config); meanwhile run "
        "`celery -A <app> control enable_events`, or run the exporter with --enable-events, which asks such "
        "workers itself. The exporter's status page (/) lists the workers concerned.",
        WORKERS,
        common("warning", "5m"),
    )


def tasks_interrupted() -> Alert:
    name = "CeleryTasksInterrupted"

    def lhs(extra: Tuple[Matcher, ...]) -> Parts:
        return lines(
            f"sum by ({BY_TASK})",
            seq(f"({ONE} (increase(celery_task_interrupted_total", sel(*extra), "[15m])))"),
        )

    return Alert(
        name,
        "celery-tasks",
        "runs of a task name were running on a worker that was declared lost (or came back restarted under "
        "its name) in the last 15 minutes, more than the threshold",
        "Tasks of a name were running on a worker when the exporter declared it lost (no heartbeat for the "
        "worker timeout and no worker-offline: SIGKILL, OOM kill, lost node), or when it came back restarted "
        "under the same name, in the last 15 minutes. The counter is created at 0 with its label set, so "
        "increase() sees the first one.",
        overridable(lhs, alert_value(name, "threshold"), ("alerts", name, "taskThresholds"), "name"),
        "Celery task {{ $labels.name }} was interrupted by a lost worker",
        '{{ printf "%.0f" $value }} run(s) of {{ $labels.name }} (job {{ $labels.job }}) were running on a '
        "worker that was lost (killed, OOM, lost node) in the last 15 minutes; they did not finish there.",
        "Look at CeleryWorkerLost for the worker, and at its host/pod for OOM kills. Without acks_late the "
        "interrupted tasks are gone and need re-running by hand; with acks_late the broker delivers them "
        'again (celery_task_redelivered_total{name="{{ $labels.name }}"} counts them).',
        TASKS,
        common("warning", "0m")
        + (
            Param("threshold", Number(minimum=0), 0, "interrupted runs in 15 minutes it tolerates"),
            task_thresholds("number of interrupted runs it tolerates"),
        ),
    )


def running_too_long() -> Alert:
    name = "CeleryTaskRunningTooLong"

    def lhs(extra: Tuple[Matcher, ...]) -> Parts:
        return seq(f"time() - min by ({BY_TASK}) (celery_task_running_oldest_start_timestamp_seconds", sel(*extra), ")")

    return Alert(
        name,
        "celery-tasks",
        "the oldest running task of a name started longer ago than the threshold (absent while none runs): a hung task",
        "The oldest running task of a name started longer ago than the threshold, by the exporter's clock. "
        "The series is absent while none runs. Names whose runs are long on purpose take their own threshold "
        "(taskThresholds).",
        overridable(lhs, alert_value(name, "threshold"), ("alerts", name, "taskThresholds"), "name"),
        "Celery task {{ $labels.name }} has been running for {{ $value | humanizeDuration }}",
        "The oldest running {{ $labels.name }} (job {{ $labels.job }}) started {{ $value | humanizeDuration }} "
        "ago, longer than the alert's threshold: it may hang.",
        "A hung task usually waits on something (an HTTP call without a timeout, a lock): find it with "
        "`celery inspect active` and look at its worker's stack; set task_time_limit / task_soft_time_limit "
        "so it cannot hang for ever. If runs of {{ $labels.name }} are long on purpose, give it its own "
        "threshold in the alert configuration: alerts.CeleryTaskRunningTooLong.taskThresholds.",
        TASKS,
        common("warning", "1m")
        + (
            Param("threshold", SECONDS, 3600, "seconds the oldest run of a name may have been running"),
            task_thresholds("threshold in seconds"),
        ),
    )


def beat_overdue() -> Alert:
    name = "CeleryBeatEntryOverdue"
    return Alert(
        name,
        "celery-beat",
        "a `beat_schedule` entry (exporter run with `--app`) is past its due time by a part of its interval, "
        "at least a minimum, without its task being received",
        "A beat_schedule entry (exporter run with --app) whose task has not been received for a part of an "
        "interval (at least a minimum) past its due time: beat stopped, or the entry's tasks no longer reach "
        "a worker.",
        lines(
            seq(
                f"time() - max by ({BY_JOB}, entry, task) (celery_beat_schedule_next_due_timestamp_seconds",
                sel(),
                ")",
            ),
            "> clamp_min(",
            seq(
                "  ",
                alert_value(name, "intervalFraction"),
                f" * max by ({BY_JOB}, entry, task) (celery_beat_schedule_interval_seconds",
                sel(),
                "), ",
                alert_value(name, "minimumSeconds"),
            ),
            ")",
        ),
        "Scheduled task {{ $labels.entry }} ({{ $labels.task }}) is overdue by {{ $value | humanizeDuration }}",
        "The beat_schedule entry {{ $labels.entry }} (task {{ $labels.task }}, job {{ $labels.job }}) was due "
        "{{ $value | humanizeDuration }} ago and no worker has received its task since.",
        "Check that celery beat runs (one instance) and publishes to a queue a worker consumes; "
        'celery_task_last_received_timestamp_seconds{name="{{ $labels.task }}"} shows the last run.',
        TASKS,
        common("warning", "1m")
        + (
            Param("intervalFraction", Number(above=0), 0.5, "how much of its interval an entry may be late"),
            Param("minimumSeconds", Number(minimum=0), 120, "and at least this many seconds"),
        ),
    )


def worker_pool_saturated() -> Alert:
    name = "CeleryWorkerPoolSaturated"
    return Alert(
        name,
        "celery-worker-capacity",
        "every pool slot of a worker is busy (utilization at or above the threshold) and a queue it consumes "
        "grew over the last 10 minutes",
        "Every slot of the worker's pool busy (celery:worker_pool_utilization:ratio, active tasks from its "
        "heartbeats over its pool size from inspect) and a queue it consumes (celery_worker_queue_info, from "
        "inspect; over 10 minutes, so that a missed inspect reply does not reset `for:`) growing: the worker "
        "cannot keep up. A pool that is merely busy while its queues drain does not fire.",
        lines(
            seq(
                f"max by ({BY_WORKER}) (celery:worker_pool_utilization:ratio",
                sel(),
                ") >= ",
                alert_value(name, "threshold"),
            ),
            f"and on ({BY_WORKER})",
            f"max by ({BY_WORKER}) (",
            seq(f"  {ONE} (max_over_time(celery_worker_queue_info", sel(), "[10m]))"),
            "  * on (cluster, namespace, job, queue_name) group_left ()",
            seq(f"  (max by ({BY_QUEUE}) (deriv(celery_queue_length", sel(), "[10m])) > 0)"),
            ")",
        ),
        "Celery worker {{ $labels.hostname }} is saturated while its queues grow",
        "Every pool slot of {{ $labels.hostname }} (job {{ $labels.job }}) has been busy for a while "
        '(utilization {{ $value | printf "%.2f" }}) and a queue it consumes keeps growing: it cannot keep up.',
        "Add workers for its queues (or concurrency, if the host has room): docs/scaling.md has a KEDA / HPA "
        "example on celery:worker_pool_utilization:ratio. If tasks hang, CeleryTaskRunningTooLong names them; "
        "celery_worker_tasks_reserved shows what it prefetched and waits for a slot.",
        WORKERS,
        common("warning", "10m")
        + (
            Param(
                "threshold",
                Number(above=0, title="ratio (above 0)"),
                1,
                "pool utilization (active tasks / pool size) at which a pool counts as saturated",
            ),
        ),
    )


def queue_backlog() -> Alert:
    name = "CeleryQueueBacklog"

    def lhs(extra: Tuple[Matcher, ...]) -> Parts:
        return seq(f"max by ({BY_QUEUE}) (celery_queue_length", sel(*extra), ")")

    return Alert(
        name,
        "celery-queues",
        "a queue holds more messages than the threshold",
        "More messages waiting than the threshold, for the alert's `for:`. A short burst does not page.",
        overridable(lhs, alert_value(name, "threshold"), ("alerts", name, "queueThresholds"), "queue_name"),
        "Celery queue {{ $labels.queue_name }} has a backlog of {{ $value }} messages",
        "Queue {{ $labels.queue_name }} (job {{ $labels.job }}) has held more waiting messages than the "
        "alert's threshold for a while: producers outpace the workers, or its workers are stuck.",
        "Check celery_queue_active_workers and celery_worker_tasks_active for the queue's workers; scale them "
        "up or look for tasks that hang.",
        OVERVIEW,
        common("warning", "10m")
        + (
            Param("threshold", Number(minimum=0), 100, "messages waiting"),
            queue_thresholds("number of messages"),
        ),
    )


def queue_wait_high() -> Alert:
    name = "CeleryQueueWaitHigh"
    quantile = alert_value(name, "quantile")

    def lhs(extra: Tuple[Matcher, ...]) -> Parts:
        return lines(
            "(",
            seq("  histogram_quantile(", quantile, ","),
            seq(f"    sum by ({BY_QUEUE}) (rate(celery_task_queue_wait_seconds", sel(*extra), "[10m])))"),
            "  or",
            seq("  histogram_quantile(", quantile, ","),
            seq(f"    sum by ({BY_QUEUE}, le) (rate(celery_task_queue_wait_seconds_bucket", sel(*extra), "[10m])))"),
            ")",
        )

    return Alert(
        name,
        "celery-queues",
        "a quantile of publish → start in a queue over 10 minutes is above the threshold, with at least a "
        "minimum number of tasks (needs `task_send_sent_event`)",
        "A quantile of the wait from publishing to start, over 10 minutes and at least a minimum number of "
        "tasks; needs task_send_sent_event in the publishers. Each side reads the native histogram when "
        "Prometheus keeps one, else the classic buckets. Replicas double every bucket alike, which leaves the "
        "quantile as it is; the count is made one first.",
        lines(
            seq(
                "(",
                overridable(lhs, alert_value(name, "threshold"), ("alerts", name, "queueThresholds"), "queue_name"),
            ),
            ")",
            f"and on ({BY_QUEUE})",
            "(",
            f"  sum by ({BY_QUEUE})",
            seq(f"  ({ONE} (histogram_count(increase(celery_task_queue_wait_seconds", sel(), "[10m]))))"),
            "  or",
            f"  sum by ({BY_QUEUE})",
            seq(f"  ({ONE} (increase(celery_task_queue_wait_seconds_count", sel(), "[10m])))"),
            seq(") >= ", alert_value(name, "minimumTasks")),
        ),
        "Tasks wait {{ $value | humanizeDuration }} in queue {{ $labels.queue_name }} (p95)",
        "The 95th percentile of the time from publishing to start in queue {{ $labels.queue_name }} (job "
        "{{ $labels.job }}) is {{ $value | humanizeDuration }}, above the alert's threshold.",
        "Workers are saturated or too few consume the queue: compare celery_queue_active_processes with "
        "celery_worker_tasks_active, and the queue length.",
        TASKS,
        common("warning", "10m")
        + (
            Param("quantile", RATIO, 0.95, "the quantile of the wait"),
            Param("threshold", SECONDS, 60, "seconds the quantile may reach"),
            Param("minimumTasks", Number(minimum=0), 10, "tasks in 10 minutes before it may fire"),
            queue_thresholds("threshold in seconds"),
        ),
    )


def broker_unreachable() -> Alert:
    return Alert(
        "CeleryBrokerUnreachable",
        "celery-exporter",
        "no exporter of the job reaches the broker: the broker is down or cut off",
        "No exporter of the job reaches the broker: the broker (or the way to it) is down. This pages once per "
        "job however many replicas run; alerts/alertmanager.example.yml mutes the worker, task, queue and beat "
        "alerts it explains.",
        seq(f"max by ({BY_JOB}) (celery_exporter_broker_connected", sel(), ") == 0"),
        "No celery-exporter of job {{ $labels.job }} can reach the broker",
        "Every exporter of job {{ $labels.job }} has lost its broker connection: the broker is down or cannot "
        "be reached. Task and worker metrics are frozen, and workers will show as down once their heartbeats "
        "are older than the worker timeout.",
        "Check the broker itself (process, disk, memory), then the network between it and the exporters; the "
        "exporter's log names the broker, password masked, and the error.",
        OVERVIEW,
        common("critical", "2m"),
    )


def broker_disconnected() -> Alert:
    return Alert(
        "CeleryExporterBrokerDisconnected",
        "celery-exporter",
        "one exporter has lost its broker connection (with replicas, the others may still reach it)",
        "One exporter lost the broker. With replicas, the others still see the workers (the worker alerts take "
        "the max over replicas); when none reaches the broker, CeleryBrokerUnreachable pages instead.",
        seq("celery_exporter_broker_connected", sel(), " == 0"),
        "celery-exporter {{ $labels.instance }} cannot reach the broker",
        "The exporter {{ $labels.instance }} (job {{ $labels.job }}) has lost its broker connection. It keeps "
        "retrying; its task and worker metrics are frozen and workers will show as down in it once their "
        "heartbeats are older than the worker timeout.",
        "Check the broker (the exporter's log names it, password masked, and the error). If the workers and "
        "other replicas work, compare credentials, TLS options and network policy of this exporter.",
        OVERVIEW,
        common("warning", "2m"),
    )


def no_events() -> Alert:
    name = "CeleryExporterNoEvents"
    by = f"{BY_JOB}, instance"
    return Alert(
        name,
        "celery-exporter",
        "the exporter is connected but received no event for longer than the threshold (workers heartbeat "
        "every 2 s: no worker exists, or the exporter listens on another vhost/DB/key prefix)",
        "Connected, but no event at all for longer than the threshold: workers heartbeat every 2 s, so either "
        "no worker exists or the exporter listens in the wrong place.",
        lines(
            seq(f"max by ({by}) (celery_exporter_broker_connected", sel(), ") == 1"),
            f"unless on ({by})",
            seq(
                f"(time() - max by ({by}) (celery_exporter_last_event_timestamp_seconds",
                sel(),
                ") < ",
                alert_value(name, "threshold"),
                ")",
            ),
        ),
        "celery-exporter {{ $labels.instance }} receives no Celery events",
        "The exporter {{ $labels.instance }} (job {{ $labels.job }}) is connected to the broker but has "
        "received no event for minutes.",
        "Open the exporter's status page (/): it says what is missing. Usual causes: another virtual host or "
        "Redis DB than the workers, different global_keyprefix/fanout transport options, or workers started "
        "with --without-heartbeat.",
        OVERVIEW,
        common("warning", "5m") + (Param("threshold", SECONDS, 300, "seconds without an event"),),
    )


def exporter_down() -> Alert:
    return Alert(
        "CeleryExporterDown",
        "celery-exporter",
        "Prometheus cannot scrape the exporter (`up` of the selectors' job is 0)",
        "Prometheus cannot scrape an exporter of the job (the selectors' job).",
        seq("up", sel(), " == 0"),
        "celery-exporter {{ $labels.instance }} cannot be scraped",
        "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}); the Celery alerts cannot fire "
        "for what it watches.",
        "Check the exporter's pod or process and its /-/healthy endpoint.",
        OVERVIEW,
        common("warning", "5m"),
    )


# -- the SLOs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slo:
    """A burn-rate SLO: the bad events `bad` among the events `total`, against the objective
    recorded as `objective`. Recorded per window: `<bad>:rate<w>` and `<total>:rate<w>`
    (events per second) and `<bad>:ratio_rate<w>`."""

    bad: str
    total: str
    objective: str


TASK_FAILURES = Slo("celery:task_failed", "celery:task_finished", "celery:task_slo:objective")
QUEUE_WAIT = Slo("celery:queue_wait_slow", "celery:queue_wait_tasks", "celery:queue_wait_slo:objective")


def burn(slo: Slo, branches: Sequence[Tuple[str, str, str, int]]) -> Parts:
    """The workbook's multi-window alert: for each (long, short, factor) the bad ratio over
    both windows above factor × the error budget (1 - objective), and enough events in the
    long window that a single bad one would stay below that (the minimum-traffic guard: events
    × factor × budget > 1). The value is the burn rate over the long window."""
    budget = f"(1 - {slo.objective})"
    parts: List[Sequence[Part]] = []
    for i, (long, short, factor, seconds) in enumerate(branches):
        if i:
            parts.append("or")
        parts += [
            "(",
            f"  {slo.bad}:ratio_rate{long} / {budget} > {factor}",
            "  and",
            f"  {slo.bad}:ratio_rate{short} / {budget} > {factor}",
            "  and",
            f"  {slo.total}:rate{long} * {seconds} * {factor} * {budget} > 1",
            ")",
        ]
    return lines(*parts)


FAST_FIRES = "14.4× the budget over 1h and 5m, or 6× over 6h and 30m"
SLOW_FIRES = "3× the budget over 1d and 2h, or 1× over 3d and 6h"
FAST_SPENDS = (
    "over the last hour (or 6 hours) and the last minutes: a burn this fast spends a 30-day budget in days "
    "(14.4x: 2 % of it in an hour)."
)
SLOW_SPENDS = (
    "over the last day (or 3 days) and the last hours: at this rate the budget of a 30-day window runs out "
    "before the window ends."
)


def failure_burn(name: str, fast: bool) -> Alert:
    return Alert(
        name,
        "celery-task-failure-slo",
        f"a task name spends its failure budget fast enough to {'page' if fast else 'open a ticket'}: its "
        f"failure ratio above {FAST_FIRES if fast else SLOW_FIRES}, with enough runs that one failure alone "
        "would not do it",
        "The failure ratio of a task name against its success-ratio objective (taskFailureSlo), the "
        f"workbook's {'fast' if fast else 'slow'} burn. $value is the burn rate over the long window.",
        burn(TASK_FAILURES, FAST if fast else SLOW),
        'Celery task {{ $labels.name }} spends its failure budget at {{ $value | printf "%.1f" }}x the rate '
        "its objective allows",
        'Runs of {{ $labels.name }} (job {{ $labels.job }}) failed {{ $value | printf "%.1f" }} times as often '
        "as its success-ratio objective allows, " + (FAST_SPENDS if fast else SLOW_SPENDS),
        'Look at celery_task_exceptions_total{name="{{ $labels.name }}"} for the exception classes (the '
        "per-task dashboard shows them), then at the workers' logs. If failures at this ratio are normal for "
        "this task, give it its own target: taskFailureSlo.taskTargets.",
        TASKS,
        common("critical" if fast else "warning", "0m"),
    )


def queue_wait_burn(name: str, fast: bool) -> Alert:
    return Alert(
        name,
        "celery-queue-wait-slo",
        f"the tasks of a queue wait longer than its queue-wait threshold often enough to "
        f"{'page' if fast else 'open a ticket'}: the ratio of slow tasks above "
        f"{FAST_FIRES if fast else SLOW_FIRES} (needs `task_send_sent_event`)",
        "The part of a queue's tasks that waited longer than its threshold from publishing to start, against "
        f"the queue-wait objective (queueWaitSlo), the workbook's {'fast' if fast else 'slow'} burn. Native "
        "or classic histograms alike (the recording rules read either). $value is the burn rate over the "
        "long window.",
        burn(QUEUE_WAIT, FAST if fast else SLOW),
        "Tasks of queue {{ $labels.queue_name }} wait too long: the queue-wait budget goes at "
        '{{ $value | printf "%.1f" }}x the rate its objective allows',
        "Tasks of queue {{ $labels.queue_name }} (job {{ $labels.job }}) waited longer than the queue's "
        'threshold {{ $value | printf "%.1f" }} times as often as its objective allows, '
        + (FAST_SPENDS if fast else SLOW_SPENDS),
        "Workers are saturated or too few consume the queue: compare celery_queue_active_processes with "
        "celery_worker_tasks_active, and the queue length; scale the queue's workers or look for tasks that "
        "hang.",
        TASKS,
        common("critical" if fast else "warning", "0m"),
    )


ALERTS: Tuple[Alert, ...] = (
    worker_lost(),
    no_worker_up(),
    worker_task_events_disabled(),
    failure_burn("CeleryTaskFailureBudgetFastBurn", fast=True),
    failure_burn("CeleryTaskFailureBudgetSlowBurn", fast=False),
    tasks_interrupted(),
    running_too_long(),
    worker_pool_saturated(),
    beat_overdue(),
    queue_backlog(),
    queue_wait_high(),
    queue_wait_burn("CeleryQueueWaitBudgetFastBurn", fast=True),
    queue_wait_burn("CeleryQueueWaitBudgetSlowBurn", fast=False),
    broker_unreachable(),
    broker_disconnected(),
    no_events(),
    exporter_down(),
)
ALERT_GROUPS = ("celery-workers", "celery-tasks", "celery-beat", "celery-queues", "celery-exporter")

CONFIG = Section(
    "",
    "the alert configuration",
    TOP
    + (
        Section(
            "alerts",
            "each alert: enabled, severity, for, and its own thresholds",
            tuple(Section(a.name, a.fires, a.params) for a in ALERTS),
        ),
    ),
)


# -- the recording rules -------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    name: str
    comment: str
    expr: Parts


def windows(slo: Slo, first: Callable[[str], Record], second: Callable[[str], Record]) -> List[Record]:
    """The rates and the ratio over every window: up to 6 hours from the exporter's series
    (`first` and `second` record the two rates, in the order they read each other), the day
    and the three days as averages of the 5-minute rates (one recorded series per task name
    or queue to read, instead of days of every raw series; a lag of minutes does not matter
    to a ticket)."""
    out: List[Record] = []
    for window in WINDOWS:
        if window in LONG_WINDOWS:
            out += [
                Record(f"{rate}:rate{window}", "", (f"avg_over_time({rate}:rate5m[{window}])",))
                for rate in (slo.bad, slo.total)
            ]
        else:
            out += [first(window), second(window)]
        out.append(Record(f"{slo.bad}:ratio_rate{window}", "", (f"{slo.bad}:rate{window} / {slo.total}:rate{window}",)))
    return out


def per_name(series: str, value: Part, path: Tuple[str, ...], label: str, by: str) -> Parts:
    """`value` for every label set of `series`, the entries of the mapping at `path` their own."""
    return overridable(
        lambda extra: seq(f"group by ({by}) ({series}", Matchers(extra), ")"),
        value,
        path,
        label,
        op="*",
    )


def task_failure_records() -> List[Record]:
    def rate(state: str, window: str) -> Parts:
        return seq(f"sum by ({BY_TASK}) ({ONE} (rate(celery_task_{state}_total", sel(), f"[{window}])))")

    def failed(window: str) -> Record:
        comment = "Failed runs per second of each task name, over the window." if window == "5m" else ""
        return Record(f"celery:task_failed:rate{window}", comment, rate("failed", window))

    def finished(window: str) -> Record:
        comment = "Finished runs (succeeded or failed) per second of each task name." if window == "5m" else ""
        return Record(
            f"celery:task_finished:rate{window}",
            comment,
            lines(rate("succeeded", window), "+", f"celery:task_failed:rate{window}"),
        )

    return windows(TASK_FAILURES, failed, finished) + [
        Record(
            "celery:task_slo:objective",
            "The success-ratio objective of each task name (taskFailureSlo), for the alerts and the dashboards.",
            per_name(
                "celery:task_finished:rate5m",
                Value(("taskFailureSlo", "target"), Fmt.NUMBER),
                ("taskFailureSlo", "taskTargets"),
                "name",
                BY_TASK,
            ),
        ),
    ]


def queue_wait_records() -> List[Record]:
    hist = "celery_task_queue_wait_seconds"
    path = ("queueWaitSlo", "queueThresholds")

    def within(window: str, extra: Tuple[Matcher, ...], threshold: Part, le: Union[Value, Item]) -> Parts:
        """Tasks per second that started within the threshold. A native histogram's fraction is
        NaN while the histogram holds nothing (no task in the window): `>= 0` drops the NaN
        and the `or` makes it 0, so that no NaN reaches the averages over the long windows."""
        rate = seq(f"rate({hist}", sel(*extra), f"[{window}])")
        return lines(
            f"sum by ({BY_QUEUE}) ({ONE} (",
            seq("  (histogram_fraction(0, ", threshold, ", ", rate, ") >= 0) * histogram_count(", rate, ")"),
            seq("  or histogram_count(", rate, ") * 0"),
            "))",
            "or",
            seq(f"sum by ({BY_QUEUE}) ({ONE} (rate({hist}_bucket", sel(*extra, Equal("le", le)), f"[{window}])))"),
        )

    def tasks(window: str) -> Record:
        return Record(
            f"celery:queue_wait_tasks:rate{window}",
            "Tasks per second that started with a queue wait measured (published with task-sent), per "
            "queue, from the native histogram where Prometheus keeps one, else from the classic one."
            if window == "5m"
            else "",
            lines(
                seq(f"sum by ({BY_QUEUE}) ({ONE} (histogram_count(rate({hist}", sel(), f"[{window}]))))"),
                "or",
                seq(f"sum by ({BY_QUEUE}) ({ONE} (rate({hist}_count", sel(), f"[{window}])))"),
            ),
        )

    def slow(window: str) -> Record:
        threshold = Value(("queueWaitSlo", "threshold"), Fmt.NUMBER)
        le = Value(("queueWaitSlo", "threshold"), Fmt.LE)
        return Record(
            f"celery:queue_wait_slow:rate{window}",
            "Of those, the tasks per second that waited longer than their queue's threshold "
            "(queueWaitSlo): all of them less those within it (a classic histogram's bucket of that "
            "bound, or the native histogram's fraction up to it)."
            if window == "5m"
            else "",
            lines(
                f"celery:queue_wait_tasks:rate{window}",
                "- (",
                seq(
                    within(window, (Exclude("queue_name", path),), threshold, le),
                    Each(
                        path,
                        seq(NL, "or", NL, within(window, (Equal("queue_name", Key()),), Item(), Item(Fmt.LE))),
                        EXPR_INDENT,
                    ),
                ),
                ")",
            ),
        )

    threshold = Value(("queueWaitSlo", "threshold"), Fmt.NUMBER)
    return windows(QUEUE_WAIT, tasks, slow) + [
        Record(
            "celery:queue_wait_slo:objective",
            "The queue-wait objective of each queue (queueWaitSlo), for the alerts and the dashboards.",
            per_name(
                "celery:queue_wait_tasks:rate5m",
                Value(("queueWaitSlo", "target"), Fmt.NUMBER),
                ("queueWaitSlo", "queueTargets"),
                "queue_name",
                BY_QUEUE,
            ),
        ),
        Record(
            "celery:queue_wait_slo:threshold_seconds",
            "The queue-wait threshold of each queue, for the dashboards.",
            per_name("celery:queue_wait_tasks:rate5m", threshold, path, "queue_name", BY_QUEUE),
        ),
    ]


def worker_capacity_records() -> List[Record]:
    return [
        Record(
            "celery:worker_pool_utilization:ratio",
            "How busy each worker's pool is: tasks active (its heartbeats) over its pool size (inspect stats), "
            "0 to 1, for the workers up; for dashboards, autoscalers (docs/scaling.md) and the saturation alert.",
            lines(
                seq(f"{ONE} (celery_worker_tasks_active", sel(), ")"),
                "/",
                seq(f"{ONE} (celery_worker_pool_size", sel(), " > 0)"),
                "and",
                seq(f"{ONE} (celery_worker_up", sel(), ") == 1"),
            ),
        ),
    ]


RECORDING_GROUPS: Dict[str, List[Record]] = {
    "celery-task-failure-slo": task_failure_records(),
    "celery-queue-wait-slo": queue_wait_records(),
    "celery-worker-capacity": worker_capacity_records(),
}


# -- the document --------------------------------------------------------------------------


def _comment(text: str, indent: int) -> Parts:
    """A YAML comment block, wrapped at 100 columns; nothing for no text."""
    out: List[Part] = []
    pad = " " * indent
    words = text.split()
    line = ""
    for word in words:
        if line and len(pad) + 2 + len(line) + 1 + len(word) > 100:
            out.append(f"\n{pad}# {line}")
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(f"\n{pad}# {line}")
    return tuple(out)


def _block(key: str, text: str) -> Parts:
    """An annotation as a folded block scalar, its lines wrapped at 104 columns."""
    out: List[Part] = [f"\n          {key}: >-"]
    line = ""
    for word in text.split(" "):
        if line and 12 + len(line) + 1 + len(word) > 104:
            out.append(f"\n            {line}")
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(f"\n            {line}")
    return tuple(out)


def record_parts(record: Record) -> Parts:
    return seq(
        _comment(record.comment, 6),
        f"\n      - record: {record.name}",
        "\n        expr: >-",
        NL,
        record.expr,
    )


def alert_parts(alert: Alert) -> Parts:
    base = ("alerts", alert.name)
    return seq(
        f"\n      - alert: {alert.name}",
        _comment(alert.comment, 8),
        "\n        expr: >-",
        NL,
        alert.expr,
        "\n        for: ",
        Value(base + ("for",)),
        "\n        labels:\n          severity: ",
        Value(base + ("severity",), Fmt.QUOTED),
        "\n        annotations:\n          summary: ",
        _yaml_quoted(alert.summary),
        _block("description", alert.description),
        _block("runbook", alert.runbook),
        "\n          runbook_url: ",
        Url(("runbookUrlPattern",), alert.name.lower()),
        When(
            NotEmpty(("dashboardUrlPattern",)),
            seq("\n          dashboard_url: ", Url(("dashboardUrlPattern",), alert.dashboard)),
            10,
        ),
    )


def _yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar (Prometheus templates inside are kept as they are)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def document() -> Parts:
    """The groups of a rules file. An SLO's group holds its recording rules and then its alerts
    (rules of a group are evaluated in order, so the alerts read this evaluation's ratios); the
    other groups hold alerts only. A rule whose `enabled` is false is left out, and an alert
    group with no rule left."""
    parts: List[Part] = ["groups:"]
    for group, records in RECORDING_GROUPS.items():
        parts.append(f"\n  - name: {group}\n    rules:")
        for record in records:
            parts.extend(record_parts(record))
        parts.extend(_enabled(a) for a in ALERTS if a.group == group)
    for group in ALERT_GROUPS:
        alerts = [a for a in ALERTS if a.group == group]
        enabled = tuple(IsTrue(("alerts", a.name, "enabled")) for a in alerts)
        body = seq(f"\n  - name: {group}\n    rules:", *[_enabled(a) for a in alerts])
        parts.append(When(AnyOf(enabled), body, 2))
    parts.append("\n")
    return tuple(parts)


def _enabled(alert: Alert) -> When:
    return When(IsTrue(("alerts", alert.name, "enabled")), alert_parts(alert), 6)
