"""The single place for metric names, help texts, label names and default buckets.

Metric names and labels are the exporter's public API: dashboards and alerts are built on
them. Names follow danihodovic/celery-exporter where it already had a conventional name;
see docs/migration.md for the few that were changed.
"""

# Task states that have a counter, in a fixed order: the store keeps one integer per state
# per label set, indexed by this order.
TASK_STATES = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "rejected",
    "revoked",
)
STATE_INDEX = {state: i for i, state in enumerate(TASK_STATES)}
EVENT_STATE = {"task-" + state: i for i, state in enumerate(TASK_STATES)}

# Per-label-set counters that no single event gives: a running task whose worker was lost,
# and a task id received again. They follow the event states in the store's counter list,
# and are rendered like them (celery_task_<counter>_total, created at 0 with the label set).
DERIVED_COUNTERS = ("interrupted", "redelivered")
TASK_COUNTERS = TASK_STATES + DERIVED_COUNTERS
INTERRUPTED = len(TASK_STATES)
REDELIVERED = INTERRUPTED + 1

# Event types counted under their own name in celery_exporter_events_total; anything else
# (custom Task.send_event types, garbage) is counted as "other", so hostile input cannot
# grow that metric's label set.
KNOWN_EVENT_TYPES = frozenset(
    ["task-" + s for s in TASK_STATES] + ["task-cancelled", "worker-online", "worker-heartbeat", "worker-offline"]
)

TASK_COUNTER_HELP = {
    "sent": "Tasks published (task-sent events; needs task_send_sent_event=True in the publisher).",
    "received": "Tasks received by a worker (task-received events).",
    "started": "Tasks started by a worker's pool (task-started events).",
    "succeeded": "Tasks that succeeded (task-succeeded events, at most once per task id).",
    "failed": "Tasks that failed (task-failed events, at most once per task id).",
    "retried": "Task attempts that raised Retry (task-retried events).",
    "rejected": "Tasks rejected by a worker (task-rejected events).",
    "revoked": "Tasks revoked, expired or terminated (task-revoked events, at most once per task id).",
    "interrupted": "Tasks that were running on a worker when it was lost (no heartbeat for the worker timeout, "
    "no worker-offline, or restarted under the same name); once per task id.",
    "redelivered": "Tasks received again under a task id already received for the same attempt "
    "(a broker redelivery: acks_late after a lost worker, Redis' visibility timeout, a requeue).",
}

# Tasks in flight, from the uuid map: started and not ended, on workers not known to be down.
TASK_RUNNING = (
    "celery_task_running",
    "Tasks started and not ended (succeeded, failed, retried, rejected, revoked), on workers that are not down.",
)
TASK_RUNNING_OLDEST = (
    "celery_task_running_oldest_start_timestamp_seconds",
    "When the longest-running task of this label set started (exporter clock at task-started; for a task that started "
    "before the exporter listened, its worker's start from inspect active); absent while none runs.",
)

TASK_LABELS = ("name", "queue_name")
HOSTNAME_LABEL = "hostname"
EXCEPTION_LABEL = "exception"

TASK_EXCEPTIONS = "celery_task_exceptions"
TASK_EXCEPTIONS_HELP = "Failed and retried task attempts by exception class name."

# Histograms, in the order the store keeps them per label set.
HISTOGRAMS = (
    (
        "celery_task_runtime_seconds",
        "Run time of succeeded tasks as measured by the worker (the event's runtime field).",
    ),
    (
        "celery_task_queue_wait_seconds",
        "Time from publishing (task-sent) to start, less any ETA/countdown. Crosses hosts: clock skew is clamped at 0.",
    ),
    (
        "celery_task_prefetch_wait_seconds",
        "Time from a worker receiving a task to starting it, less any ETA/countdown. "
        "Both timestamps come from the same worker, so it is free of clock skew.",
    ),
    (
        "celery_task_failed_runtime_seconds",
        "Run time of failed task attempts: from task-started to task-failed, as the exporter received them "
        "(exporter clock; Celery sends no runtime with task-failed).",
    ),
    (
        "celery_task_retried_runtime_seconds",
        "Run time of retried task attempts: from task-started to the attempt's task-retried, as the exporter "
        "received them (exporter clock).",
    ),
)
RUNTIME, QUEUE_WAIT, PREFETCH_WAIT, FAILED_RUNTIME, RETRIED_RUNTIME = range(5)
# the histogram of the run time observed at the end of a run, by event state (a failure, a retry)
RUN_END_HISTOGRAM = {STATE_INDEX["failed"]: FAILED_RUNTIME, STATE_INDEX["retried"]: RETRIED_RUNTIME}

# When a task of a label set was last received, succeeded and failed (exporter clock at
# receipt), for freshness alerts on any task: time() - celery_task_last_succeeded_... > N.
LAST_SEEN = (
    (
        "received",
        "celery_task_last_received_timestamp_seconds",
        "When a task of this name and queue was last received by a worker (exporter clock).",
    ),
    (
        "succeeded",
        "celery_task_last_succeeded_timestamp_seconds",
        "When a task of this name and queue last succeeded (exporter clock).",
    ),
    (
        "failed",
        "celery_task_last_failed_timestamp_seconds",
        "When a task of this name and queue last failed (exporter clock).",
    ),
)

# From a millisecond to an hour: Celery tasks range from sub-millisecond to batch jobs.
DEFAULT_RUNTIME_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
DEFAULT_WAIT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

WORKER_UP = ("celery_worker_up", "1 while the worker's last heartbeat is younger than the worker timeout, else 0.")
WORKER_LAST_HEARTBEAT = (
    "celery_worker_last_heartbeat_timestamp_seconds",
    "When the exporter received the worker's last heartbeat (exporter clock, epoch seconds).",
)
WORKER_ACTIVE = ("celery_worker_tasks_active", "Tasks the worker's pool is executing, from its last heartbeat.")
WORKER_PROCESSED = (
    "celery_worker_tasks_processed",
    "Tasks the worker has accepted since it started, from its last heartbeat (resets when the worker restarts).",
)
WORKER_POOL_SIZE = (
    "celery_worker_pool_size",
    "Tasks the worker can run at once: prefork's max concurrency, the thread or greenlet pool size, 1 for solo "
    "(from inspect stats, refreshed every --inspect-interval).",
)
WORKER_RESERVED = (
    "celery_worker_tasks_reserved",
    "Tasks the worker received and has not started (prefetched, waiting for a pool slot), from task events "
    "(and inspect reserved at a connect); "
    "tasks waiting for their ETA or countdown are not counted.",
)
WORKER_QUEUE_INFO = (
    "celery_worker_queue_info",
    "A queue the worker consumes, from inspect active_queues (as of the last inspect it answered). Always 1.",
)
WORKER_INFO = ("celery_worker_info", "Worker software, from its heartbeats. Always 1.")
WORKER_HEARTBEAT_INTERVAL = (
    "celery_worker_heartbeat_interval_seconds",
    "The heartbeat interval the worker announces (freq field).",
)
# Diagnosis (celery_exporter/diagnosis.py): what the event stream tells is misconfigured.
WORKER_TASK_EVENTS = (
    "celery_worker_task_events_enabled",
    "0 when the worker's heartbeats show tasks processed while no task event came from it (task events off: "
    "start it with -E, or see --enable-events), 1 once a task event came; absent until it has processed a task.",
)
WORKER_CLOCK_SKEW = (
    "celery_worker_clock_skew_seconds",
    "The worker's clock minus the exporter's: the largest of its last 8 heartbeats' timestamp less their arrival "
    "time (the least delayed one), so delivery delay does not count as skew.",
)
WORKER_HEARTBEAT_FITS = (
    "celery_worker_heartbeat_interval_fits",
    "1 when 3 of the worker's heartbeat intervals fit in --worker-timeout, else 0 (the timeout is stretched "
    "for that worker, which is declared down later than configured).",
)
TASK_SENT_MISSING = (
    "celery_task_sent_events_missing",
    "1 for a task name received lately (within --series-ttl) with no task-sent event: its publisher runs "
    "without task_send_sent_event=True, so its queue_name label falls back.",
)
EVENTS_UNDECODABLE = (
    "celery_exporter_events_undecodable",
    "Messages on the event exchange that could not be decoded, by content type (json, pickle, yaml, msgpack, "
    "other); pickle, yaml and msgpack need --accept-content. Also counted in "
    'celery_exporter_events_dropped_total{reason="undecodable"}.',
)
ENABLE_EVENTS_SENT = (
    "celery_exporter_enable_events_sent",
    "enable_events remote-control commands sent (--enable-events), one per worker addressed.",
)
WORKER_LABELS = ("hostname",)
WORKER_INFO_LABELS = ("hostname", "sw_ident", "sw_ver", "sw_sys")

# Exporter self-metrics.
BUILD_INFO = ("celery_exporter_build_info", "Exporter build information. Always 1.")
EVENTS = ("celery_exporter_events", "Celery events received, by event type.")
EVENTS_DROPPED = ("celery_exporter_events_dropped", "Events (or messages) not turned into metrics, by reason.")
BROKER_CONNECTED = ("celery_exporter_broker_connected", "1 while the event receiver is connected to the broker.")
BROKER_RECONNECTS = (
    "celery_exporter_broker_reconnects",
    "Broker outages seen by the event receiver (a lost connection, or a failed first connect).",
)
EVENT_READER = (
    "celery_exporter_event_reader_info",
    "How events are read: redis-hiredis (Redis: the subscription's socket, parsed with hiredis), redis-py "
    "(Redis through redis-py's PubSub: hiredis missing, or redis-py changed), amqp-frames (RabbitMQ: the event "
    "queue's frames read from py-amqp's socket), py-amqp (RabbitMQ through py-amqp's dispatch: py-amqp changed), "
    "kombu (kombu's consumer: other transports, Redis with sentinel_fanout_compat, kombu changed). "
    "--event-reader can force one. Always 1.",
)
LAST_EVENT = ("celery_exporter_last_event_timestamp_seconds", "When the last event was received (exporter clock).")
SERIES = ("celery_exporter_series", "Label sets held in memory, by kind (task, exception, worker).")
SERIES_EXPIRED = ("celery_exporter_series_expired", "Label sets removed after their TTL, by kind.")
SERIES_REFUSED = ("celery_exporter_series_refused", "New label sets refused because --max-series was reached, by kind.")
TASKS_TRACKED = ("celery_exporter_tasks_tracked", "Task ids held in the uuid map (tasks in flight or just finished).")
TASKS_EVICTED = (
    "celery_exporter_tasks_evicted",
    "Unfinished task ids dropped from the uuid map because it was full (--max-tasks).",
)

HTTP_REFUSED = (
    "celery_exporter_http_requests_refused",
    "HTTP requests refused, by reason (max_requests: --web-max-requests were being served, answered 503; "
    "rate_limit: over the web config's rate_limit, answered 429; head_too_large: a request head over 64 KiB, "
    "answered 431; client_certificate: a TLS client certificate outside client_allowed_sans, connection closed).",
)
# Reasons for celery_exporter_http_requests_refused_total (httpserver.REFUSED_* and "rate_limit").
HTTP_REFUSED_REASONS = ("max_requests", "rate_limit", "head_too_large", "client_certificate")
WEB_CONFIG_RELOAD_ERRORS = (
    "celery_exporter_web_config_reload_errors",
    "Changed versions of the --web-config-file (or of a file it names) that could not be used; the last good "
    "one stays in use.",
)

# Reasons for celery_exporter_events_dropped_total. A fixed set, so the label stays bounded.
DROP_REASONS = (
    "undecodable",  # message body could not be decoded
    "bad_message",  # body decoded but is neither an event dict nor a list of them
    "bad_field",  # an event misses a required field or has one of the wrong type/size
    "unknown_task",  # a task event for a uuid whose name never arrived (exporter started mid-task)
    "duplicate",  # a second terminal event for the same task id
    "series_limit",  # the label set was refused by --max-series
    "handler_error",  # a bug: the handler raised; logged with a traceback once
)

# Queue poller.
QUEUE_LENGTH = (
    "celery_queue_length",
    "Messages waiting in the queue (Redis: all priority lists; RabbitMQ: ready messages, "
    "not the prefetched/unacknowledged ones).",
)
QUEUE_CONSUMERS = ("celery_queue_active_consumers", "Consumers attached to the queue (RabbitMQ only).")
QUEUE_WORKERS = ("celery_queue_active_workers", "Workers up (by heartbeat) that consume the queue, per inspect.")
QUEUE_PROCESSES = ("celery_queue_active_processes", "Pool processes of the workers up that consume the queue.")
POLL_SUCCESS = ("celery_exporter_queue_poll_success", "1 if the last queue-length poll succeeded, else 0.")
POLL_DURATION = ("celery_exporter_queue_poll_duration_seconds", "How long the last queue-length poll took.")
POLL_LAST_SUCCESS = (
    "celery_exporter_queue_poll_last_success_timestamp_seconds",
    "When a queue-length poll last succeeded (exporter clock).",
)
POLL_METHOD = (
    "celery_exporter_queue_poll_method_info",
    "How queue lengths are read: redis-lists (LLEN of every priority list, in one pipeline), declare "
    "(a passive queue declare: RabbitMQ, or Redis when kombu's channel lacks what redis-lists reads). Always 1.",
)
POLL_ERRORS = (
    "celery_exporter_queue_poll_errors",
    "Failed polls, by reason (broker: queue lengths, inspect: remote control, enable_events: the "
    "--enable-events broadcast, error: a bug).",
)

# Beat schedule (--app with a static beat_schedule).
BEAT_LABELS = ("entry", "task")
BEAT_INFO = ("celery_beat_schedule_info", "An entry of the app's beat schedule, with its schedule. Always 1.")
BEAT_INTERVAL = (
    "celery_beat_schedule_interval_seconds",
    "Seconds between the entry's runs (for crontab entries: the gap to the run after the next).",
)
BEAT_NEXT_DUE = (
    "celery_beat_schedule_next_due_timestamp_seconds",
    "When the entry's next run is due: after the last run seen, or after the exporter started.",
)
BEAT_READ_ERRORS = (
    "celery_exporter_beat_schedule_read_errors",
    "Failed re-reads of the beat schedule from django-celery-beat's database (the last entries read stay in use).",
)
BEAT_LAST_RUN = (
    "celery_beat_schedule_last_run_timestamp_seconds",
    "When a task of the entry's task name was last received by a worker (exporter clock).",
)
