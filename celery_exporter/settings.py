"""One frozen, typed settings object, built by the CLI and passed to every component."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from celery_exporter import catalogue, nativehist


@dataclasses.dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    transport_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    broker_ssl: Any = None  # None, True, or a dict of SSL options for the transport
    accept_content: Tuple[str, ...] = ("json",)
    events_exchange: str = "celeryev"
    # The event reader (streams.CHOICES): "auto" takes the fastest that works on the broker.
    event_reader: str = "auto"

    listen_address: str = "0.0.0.0"
    port: int = 9808
    # TLS and basic auth of the HTTP endpoints (webconfig.WebConfig, from --web-config-file),
    # and whether /-/healthy and /-/ready stay open without credentials (for probes).
    web_config: Any = None
    health_open: bool = True
    # Most HTTP requests served at once (a thread each); more are answered 503 at once.
    web_max_requests: int = 40
    # Seconds a connection has from accept to a complete request head (then it is closed),
    # and for each read and write of a request being served.
    web_read_timeout: float = 10.0

    runtime_buckets: Tuple[float, ...] = catalogue.DEFAULT_RUNTIME_BUCKETS
    wait_buckets: Tuple[float, ...] = catalogue.DEFAULT_WAIT_BUCKETS
    # Native histograms beside the classic buckets (served in the protobuf format only):
    # their schema (None: off), zero-bucket width, and the most populated buckets per
    # series before the schema is lowered.
    native_schema: Optional[int] = nativehist.schema_for_factor(nativehist.DEFAULT_BUCKET_FACTOR)
    native_zero_threshold: float = nativehist.DEFAULT_ZERO_THRESHOLD
    native_max_buckets: int = nativehist.DEFAULT_MAX_BUCKETS

    # A worker is "up" while its last heartbeat is younger than this (or than
    # liveness.HEARTBEAT_MISSES x its announced interval, whichever is longer).
    worker_timeout: float = 30.0
    # A worker that went silent without worker-offline stays visible (up=0) this long.
    worker_ttl: float = 900.0
    # Task label sets with no update for this long are dropped.
    series_ttl: float = 7 * 24 * 3600.0
    # Total label sets (task + exception + worker) held; new ones beyond are refused.
    max_series: int = 20_000
    # Task ids tracked at once (tasks in flight); the oldest are evicted beyond it.
    max_tasks: int = 100_000
    task_hostname_label: bool = False

    # Queue poller: queues named up front (shown before any worker starts), how often to
    # poll their depth, and the per-call broker timeout. Remote-control `inspect` (which
    # workers consume which queue, with how many processes) runs on its own interval.
    queues: Tuple[str, ...] = ()
    queue_poll_interval: float = 10.0
    poll_timeout: float = 5.0
    inspect: bool = True
    inspect_interval: float = 30.0
    inspect_timeout: float = 1.0

    # Static beat_schedule entries of the --app (beat.Entry), for the celery_beat_schedule_* series.
    beat_entries: Tuple[Any, ...] = ()
    # The --app spec when its beat uses django-celery-beat's database: entries are re-read
    # from there every schedule_refresh_interval instead.
    beat_database_app: Optional[str] = None
    schedule_refresh_interval: float = 60.0

    log_level: str = "INFO"
    log_format: str = "text"

    # Reconnect backoff of the event receiver: starts at the first value, doubles, capped.
    reconnect_backoff: Tuple[float, float] = (1.0, 30.0)
    # How long events of a task wait for its task-sent (which carries the queue) when
    # task-sent events are flowing, before the fallback queue label is used.
    sent_hold_seconds: float = 2.0
    # How long a finished task's id is remembered, to drop duplicate terminal events.
    finished_grace_seconds: float = 10.0
    # How often expired label sets are swept from memory.
    sweep_interval: float = 60.0
