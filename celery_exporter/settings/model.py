"""The frozen, typed `Settings` every component reads, and where each setting is declared.

A field declared with `Option(...).field()` is a setting: its flags, environment variables,
value type, default, help text, docs group and Helm value are written there, once; the
click options, the docs' configuration table and the chart's mapping are derived from it
(see the package's docstring). The fields at the end are not options: they come from the
Celery app (`--app`) or are fixed."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Tuple, Union

import click

from celery_exporter import catalogue, nativehist, streams
from celery_exporter.settings.declaration import Group, Invalid, Option
from celery_exporter.settings.params import (
    BrokerUrl,
    Buckets,
    Duration,
    Items,
    JSONValue,
    KeyValue,
    buckets_summary,
    buckets_text,
)

if TYPE_CHECKING:
    from celery_exporter.beat import Entry
    from celery_exporter.webconfig import WebConfig

# TLS to the broker, as kombu's Connection(ssl=...) and Celery's broker_use_ssl take it:
# None (what the URL scheme says), on or off, or the SSL options (which turn it on).
BrokerSsl = Union[None, bool, Mapping[str, JSONValue]]

DURATION = Duration()
KEY_VALUE = KeyValue()


def _broker_ssl(use: Optional[bool], options: Tuple[Tuple[str, JSONValue], ...]) -> BrokerSsl:
    if not options:
        return use
    if use is False:
        raise Invalid("given together with --no-broker-ssl", "--broker-ssl-option")
    return dict(options)


def _web_config(path: Optional[str]) -> Optional[WebConfig]:
    if not path:
        return None
    from celery_exporter import webconfig  # imported late: --help stays fast

    try:
        return webconfig.load(path)
    except webconfig.WebConfigError as exc:
        raise Invalid(str(exc)) from None


def _queue_names(entries: Tuple[Tuple[str, ...], ...], old: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
    return tuple(sorted({name for entry in (*entries, old or ()) for name in entry}))


def _old_or_new(new: object, old: object) -> object:
    """The value of a setting that also takes a flag of the incumbent (given: it wins; build
    refuses the two given together)."""
    return new if old is None else old


def _transport_options(new: Tuple[Tuple[str, JSONValue], ...], old: Tuple[Tuple[str, JSONValue], ...]) -> object:
    return dict(new + old)


def _worker_ttl(new: float, old: Optional[float]) -> float:
    if old is None:
        return new
    if old == 0:
        raise Invalid(
            "0 (never purge) is not offered: give --worker-ttl a long duration instead (e.g. 7d)",
            "--purge-offline-worker-metrics",
        )
    return old


def _reconnect_backoff(old: Optional[float]) -> Tuple[float, float]:
    if old is None:
        return RECONNECT_BACKOFF
    if old == 0:
        raise Invalid(
            "0 (exit at the first broker error) is not offered: the exporter always reconnects, after 1 s "
            "doubling to 30 s; drop the flag, or give the seconds to wait between attempts",
            "--retry-interval",
        )
    return (old, old)


def _task_hostname_label(new: bool, generic: bool) -> bool:
    if new and generic:
        raise Invalid(
            "asks for task metrics without the worker's hostname, and --task-hostname-label adds it: give one",
            "--generic-hostname-worker-task-metric",
        )
    return new


# The incumbent: danihodovic/celery-exporter, whose flags are accepted where they have an
# equivalent here (with a deprecation warning) and refused with what to do where not
# (docs/migration.md lists each). Its flags that are also ours, under the same name, with
# what differs in the values they take:
INCUMBENT_SAME_FLAGS: Mapping[str, str] = {
    "--broker-url": "",
    "--broker-ssl-option": "values that are JSON are parsed as JSON (`cert_reqs=2` is a number, as before)",
    "--accept-content": "",
    "--port": "",
    "--log-level": "`DEBUG`, `INFO`, `WARNING` or `ERROR` (any case)",
    "--worker-timeout": "default 30 s (was 300 s); 0 (never time out) is refused: give a long duration instead",
}
INCUMBENT = "danihodovic/celery-exporter"
# Reconnect backoff of the event receiver: starts at the first value, doubles, capped.
RECONNECT_BACKOFF = (1.0, 30.0)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the components read, built once at start by build_settings (or made
    directly, by the demo and the tests)."""

    # -- broker and events -----------------------------------------------------------------
    app: Optional[str] = Option(
        "-A",
        "--app",
        group=Group.BROKER,
        chart=False,  # the chart's app.module
        help="Your Celery app, as `celery -A` takes it (`proj`, `proj.celery:app`). The broker URL, "
        "transport and SSL options, event serializer and exchange, the declared queues and the beat "
        "schedule are read from it; any flag or environment variable you give still wins over the app's value.",
        doc="Your Celery app, as `celery -A` takes it (`proj`, `proj.celery:app`): see "
        "[Using your Celery app's configuration](#using-your-celery-apps-configuration).",
    ).field()
    broker_url: str = Option(
        "-b",
        "--broker-url",
        also_env=("CELERY_BROKER_URL",),
        type=BrokerUrl(),
        default="redis://localhost:6379/0",
        group=Group.BROKER,
        chart=False,  # the chart's broker.url or broker.existingSecret
        help="Broker URL as the workers use it: redis://, rediss://, sentinel://, amqp://, amqps://; several "
        "separated by ';' for failover. Also read from CELERY_BROKER_URL. The password is masked wherever "
        "the exporter shows the URL.",
        doc="Broker URL as the workers use it: `redis://`, `rediss://`, `sentinel://`, `amqp://`, `amqps://`; "
        "several separated by `;` for failover. The password is masked wherever the exporter shows the URL.",
    ).field()
    transport_options: Mapping[str, JSONValue] = Option(
        "--transport-option",
        name="transport_options",
        type=KEY_VALUE,
        multiple=True,
        group=Group.BROKER,
        chart=False,  # the chart's broker.transportOptions
        help="One entry of the workers' broker_transport_options, as KEY=VALUE; repeatable, and must match "
        "the workers'. Values are parsed as JSON when they are JSON (priority_steps=[0,3,6,9], "
        "fanout_prefix=true), else taken as strings (global_keyprefix=prod:, master_name=mymaster).",
        doc="One entry of `broker_transport_options`, repeatable; must match the workers'. Values are parsed "
        "as JSON when they are JSON (`priority_steps=[0,3,6,9]`, `fanout_prefix=true`), else taken as "
        "strings (`global_keyprefix=prod:`, `master_name=mymaster`).",
    ).field(
        Option(
            "--broker-transport-option",
            name="old_broker_transport_option",
            type=KEY_VALUE,
            multiple=True,
            group=Group.BROKER,
            help="The incumbent's name of --transport-option.",
            deprecated="use --transport-option (values that are JSON are now parsed as JSON: numbers become numbers)",
        ),
        convert=_transport_options,
    )
    broker_ssl: BrokerSsl = Option(
        "--broker-ssl/--no-broker-ssl",
        group=Group.BROKER,
        doc_default="from the URL scheme",
        help="TLS to the broker. By default what the URL scheme says: amqps:// and rediss:// turn it on.",
        doc="TLS to the broker. By default what the URL scheme says: `amqps://` and `rediss://` turn it on.",
    ).field(
        Option(
            "--broker-ssl-option",
            name="broker_ssl_options",
            type=KEY_VALUE,
            multiple=True,
            group=Group.BROKER,
            help="One entry of the workers' broker_use_ssl, as KEY=VALUE; repeatable (ca_certs=/etc/ssl/ca.pem, "
            "cert_reqs=2, ssl_cert_reqs=required). Implies --broker-ssl.",
            doc="One entry of `broker_use_ssl`, repeatable (`ca_certs=/etc/ssl/ca.pem`, `cert_reqs=2`, "
            "`ssl_cert_reqs=required`). Implies `--broker-ssl`.",
        ),
        convert=_broker_ssl,
    )
    accept_content: Tuple[str, ...] = Option(
        "--accept-content",
        type=Items("content type"),
        default="json",
        group=Group.BROKER,
        help="Comma-separated content types accepted for events (Celery's event_serializer).",
        doc="Comma-separated content types accepted for events (Celery's `event_serializer`).",
    ).field()
    events_exchange: str = Option(
        "--events-exchange",
        type=click.STRING,
        default="celeryev",
        group=Group.BROKER,
        help="Celery's event_exchange setting.",
        doc="Celery's `event_exchange` setting.",
    ).field()
    event_reader: str = Option(
        "--event-reader",
        type=click.Choice(streams.CHOICES),
        default=streams.AUTO,
        group=Group.BROKER,
        help="How events are read: auto (the fastest reader that works on the broker), kombu (kombu's consumer, "
        "any broker), redis-hiredis or redis-py (Redis), amqp-frames or py-amqp (RabbitMQ). A reader named here "
        "never falls back to another; one that cannot serve --broker-url is refused at start.",
        doc="How events are read: `auto` (the fastest reader that works on the broker), `kombu` (kombu's public "
        "consumer, any broker), `redis-hiredis` or `redis-py` (Redis), `amqp-frames` or `py-amqp` (RabbitMQ). "
        "A reader named here never falls back to another; one that cannot serve `--broker-url` is refused at "
        "start. If a fast reader misbehaves after a library upgrade, `--event-reader kombu` reads with kombu's "
        "public consumer.",
    ).field()

    # -- HTTP ------------------------------------------------------------------------------
    listen_address: str = Option(
        "--listen-address",
        type=click.STRING,
        default="0.0.0.0",
        group=Group.HTTP,
        chart=False,  # the chart listens on every address of the pod
        help="Address to serve HTTP on (:: for IPv6).",
        doc="Address to serve HTTP on (`::` for IPv6).",
    ).field(
        Option(
            "--host",
            name="old_host",
            type=click.STRING,
            group=Group.HTTP,
            help="The incumbent's name of --listen-address.",
            deprecated="use --listen-address",
        ),
        convert=_old_or_new,
    )
    port: int = Option(
        "-p",
        "--port",
        type=click.IntRange(1, 65535),
        default=9808,
        group=Group.HTTP,
        chart=False,  # the chart's service.port
        help="HTTP port.",
    ).field()
    # TLS and basic auth of the HTTP endpoints, from --web-config-file.
    web_config: Optional[WebConfig] = Option(
        "--web-config-file",
        type=click.Path(dir_okay=False),
        group=Group.HTTP,
        chart=False,  # the chart's webConfig
        help="TLS, basic auth, response headers and a rate limit for the HTTP endpoints, in the Prometheus "
        "exporter-toolkit format (tls_server_config, http_server_config, basic_auth_users with bcrypt hashes, "
        "rate_limit); re-read when it or a file it names changes.",
        doc="TLS, basic auth, response headers and a rate limit for the HTTP endpoints, in the Prometheus "
        "exporter-toolkit format, re-read when it changes; see [Protecting /metrics](http.md#protecting-metrics).",
    ).field(convert=_web_config)
    health_open: bool = Option(
        "--web-health-open/--no-web-health-open",
        default=True,
        group=Group.HTTP,
        chart=False,  # the chart keeps it on: its probes send no credentials
        help="With basic auth on, keep /-/healthy and /-/ready open without credentials, for probes.",
        doc="With basic auth on, keep `/-/healthy` and `/-/ready` open without credentials, for probes.",
    ).field()
    web_max_requests: int = Option(
        "--web-max-requests",
        type=click.IntRange(1),
        default=40,
        group=Group.HTTP,
        help="Most HTTP requests served at once (a thread each); more are answered 503 with Retry-After: 1 at once.",
        doc="Most HTTP requests served at once (a thread each); more are answered `503` with `Retry-After: 1` at once.",
    ).field()
    web_read_timeout: float = Option(
        "--web-read-timeout",
        type=DURATION,
        default="10s",
        group=Group.HTTP,
        help="An HTTP connection that has not sent a complete request head this long after connecting is "
        "closed; also the timeout of each read and write while a request is served.",
    ).field()

    # -- histograms ------------------------------------------------------------------------
    runtime_buckets: Tuple[float, ...] = Option(
        "--runtime-buckets",
        type=Buckets(),
        default=buckets_text(catalogue.DEFAULT_RUNTIME_BUCKETS),
        doc_default=buckets_summary(catalogue.DEFAULT_RUNTIME_BUCKETS),
        group=Group.HISTOGRAMS,
        help="Comma-separated bucket bounds in seconds of celery_task_runtime_seconds and of the failed and "
        "retried run times.",
        doc="Comma-separated bucket bounds in seconds of `celery_task_runtime_seconds`, "
        "`celery_task_failed_runtime_seconds` and `celery_task_retried_runtime_seconds`.",
    ).field(
        Option(
            "--buckets",
            name="old_buckets",
            type=Buckets(),
            group=Group.HISTOGRAMS,
            help="The incumbent's name of --runtime-buckets.",
            deprecated="use --runtime-buckets",
        ),
        convert=_old_or_new,
    )
    wait_buckets: Tuple[float, ...] = Option(
        "--wait-buckets",
        type=Buckets(),
        default=buckets_text(catalogue.DEFAULT_WAIT_BUCKETS),
        doc_default=buckets_summary(catalogue.DEFAULT_WAIT_BUCKETS),
        group=Group.HISTOGRAMS,
        help="Comma-separated bucket bounds in seconds of the queue-wait and prefetch-wait histograms.",
    ).field(
        Option(
            "--queue-wait-buckets",
            name="old_queue_wait_buckets",
            type=Buckets(),
            group=Group.HISTOGRAMS,
            help="The incumbent's name of --wait-buckets.",
            deprecated="use --wait-buckets (the bounds of celery_task_queue_wait_seconds and of "
            "celery_task_prefetch_wait_seconds)",
        ),
        convert=_old_or_new,
    )
    # Native histograms beside the classic buckets (served in the protobuf format only):
    # their schema (None: off), zero-bucket width, and the most populated buckets per
    # series before the schema is lowered.
    native_schema: Optional[int] = Option(
        "--native-bucket-factor",
        type=click.FloatRange(min=1.0),
        default=nativehist.DEFAULT_BUCKET_FACTOR,
        group=Group.HISTOGRAMS,
        help="Resolution of the native histograms served to a Prometheus that asks for protobuf: the most a "
        "bucket may be wider than the one below it (1.1 is schema 3, each bucket 9 % wider). 1 turns native "
        "histograms off (protobuf then carries the classic buckets only).",
        doc="Resolution of the [native histograms](metrics.md#native-histograms) served to a Prometheus that asks for "
        "protobuf: the most a bucket may be wider than the one below it (`1.1` is schema 3, each bucket 9 % "
        "wider). `1` turns native histograms off (protobuf then carries the classic buckets only).",
    ).field(convert=nativehist.schema_for_factor)
    native_max_buckets: int = Option(
        "--native-max-buckets",
        type=click.IntRange(min=1),
        default=nativehist.DEFAULT_MAX_BUCKETS,
        group=Group.HISTOGRAMS,
        help="Most populated native buckets per series; past it the series' resolution is halved "
        "(neighbouring buckets merge), as often as needed.",
    ).field()

    # -- workers, series and memory --------------------------------------------------------
    worker_timeout: float = Option(
        "--worker-timeout",
        type=DURATION,
        default="30s",
        group=Group.LIFETIME,
        help="A worker whose last heartbeat is older than this shows celery_worker_up 0. It is stretched to "
        "3 of the worker's own heartbeat intervals when those are longer (workers started with "
        "--heartbeat-interval 60).",
        doc="A worker whose last heartbeat is older than this shows `celery_worker_up 0`. It is stretched to "
        "3 of the worker's own heartbeat intervals when those are longer (workers started with "
        "`--heartbeat-interval 60`).",
    ).field()
    worker_ttl: float = Option(
        "--worker-ttl",
        type=DURATION,
        default="15m",
        group=Group.LIFETIME,
        help="A worker silent this long (killed without worker-offline) is removed, so its alert resolves by "
        "itself. Must be longer than --worker-timeout plus the for: of any alert on celery_worker_up.",
        doc="A worker silent this long (killed without `worker-offline`) is removed, so its alert resolves by "
        "itself. Must be longer than `--worker-timeout` plus the `for:` of any alert on `celery_worker_up`.",
    ).field(
        Option(
            "--purge-offline-worker-metrics",
            name="old_purge_offline_worker_metrics",
            type=click.FloatRange(min=0),
            group=Group.LIFETIME,
            help="The incumbent's name of --worker-ttl, in seconds.",
            deprecated="use --worker-ttl (0, never purge, is refused: give --worker-ttl a long duration)",
        ),
        convert=_worker_ttl,
    )
    series_ttl: float = Option(
        "--series-ttl",
        type=DURATION,
        default="7d",
        group=Group.LIFETIME,
        help="Task label sets (a task name and queue) with no event for this long are removed. Long enough "
        "that daily and weekly tasks keep their series.",
    ).field()
    sweep_interval: float = Option(
        "--sweep-interval",
        type=DURATION,
        default="60s",
        group=Group.LIFETIME,
        help="How often label sets past their TTL are removed from memory; they vanish from scrapes at once "
        "either way.",
    ).field()
    max_series: int = Option(
        "--max-series",
        type=click.IntRange(1),
        default=20_000,
        group=Group.LIFETIME,
        help="Most label sets held: task name/queue pairs, exception classes per task, and workers. New ones "
        "beyond are refused and counted in celery_exporter_series_refused_total.",
        doc="Most label sets held: task name/queue pairs, exception classes per task, and workers. New ones "
        "beyond are refused and counted in `celery_exporter_series_refused_total`.",
    ).field()
    max_tasks: int = Option(
        "--max-tasks",
        type=click.IntRange(100),
        default=100_000,
        group=Group.LIFETIME,
        help="Most task ids tracked at once (tasks between task-received and their end). The least recently "
        "seen are evicted and counted.",
        doc="Most task ids tracked at once (tasks between `task-received` and their end). The least recently "
        "seen are evicted and counted.",
    ).field()
    task_hostname_label: bool = Option(
        "--task-hostname-label/--no-task-hostname-label",
        default=False,
        group=Group.LIFETIME,
        chart_default=False,
        help="Add the worker's hostname label to task metrics. Multiplies series by the number of workers, and "
        "pod names churn: use it with care.",
        doc="Add the worker's `hostname` label to task metrics. Multiplies series by the number of workers, "
        "and pod names churn: use it with care.",
    ).field(
        Option(
            "--generic-hostname-worker-task-metric/--no-generic-hostname-worker-task-metric",
            name="old_generic_hostname_worker_task_metric",
            default=False,
            group=Group.LIFETIME,
            help="The incumbent's flag for task metrics without the worker's hostname, what they are here.",
            deprecated="drop it: task metrics carry no hostname label here unless --task-hostname-label is given",
        ),
        convert=_task_hostname_label,
    )

    # -- queues and remote control ---------------------------------------------------------
    queues: Tuple[str, ...] = Option(
        "-Q",
        "--queue",
        name="queues",
        type=Items(),
        multiple=True,
        group=Group.QUEUES,
        help="Queue whose length to report even before any task or worker shows it (scale-to-zero setups); "
        "repeatable, or comma-separated. Queues seen in task events and in workers' active queues are added.",
    ).field(
        Option(
            "--queues",
            name="old_queues",
            type=Items(),
            group=Group.QUEUES,
            help="The incumbent's name of -Q/--queue, comma-separated.",
            deprecated="use -Q/--queue (repeatable, or comma-separated)",
        ),
        convert=_queue_names,
    )
    queue_poll_interval: float = Option(
        "--queue-poll-interval",
        type=DURATION,
        default="10s",
        group=Group.QUEUES,
        help="How often queue lengths are polled.",
    ).field()
    poll_timeout: float = Option(
        "--queue-poll-timeout",
        type=DURATION,
        default="5s",
        group=Group.QUEUES,
        help="Timeout of each broker call of the queue poller (connect, read).",
    ).field()
    inspect: bool = Option(
        "--inspect/--no-inspect",
        default=True,
        group=Group.QUEUES,
        chart_default=True,
        help="Ask workers over remote control which queues they consume and their pool size, and, at start and "
        "after a reconnect, which tasks they run. Turn off where remote control is disabled (workers started "
        "with --without-remote-control).",
        doc="Ask workers over remote control which queues they consume and their pool size, and, at start and "
        "after a reconnect, which tasks they run (see [How it counts](how-it-counts.md)). Turn off where "
        "remote control is disabled (`--without-remote-control`).",
    ).field()
    inspect_interval: float = Option(
        "--inspect-interval",
        type=DURATION,
        default="30s",
        group=Group.QUEUES,
        help="How often workers are inspected; a worker up by heartbeat that the last inspect did not report "
        "is inspected again sooner (after 2 s, doubling up to this interval).",
    ).field()
    inspect_timeout: float = Option(
        "--inspect-timeout",
        type=DURATION,
        default="1s",
        group=Group.QUEUES,
        help="How long to wait for workers' replies; the wait ends sooner once every worker that is up has answered.",
    ).field()

    enable_events: bool = Option(
        "--enable-events/--no-enable-events",
        default=False,
        group=Group.QUEUES,
        help="Every 10 s, send Celery's enable_events remote-control command to the workers diagnosed with task "
        "events off (heartbeats show tasks processed, no task event comes), at most every 30 s per worker. It "
        "changes the workers' behaviour (they send task events until restarted): opt-in.",
        doc="Every 10 s, send Celery's `enable_events` remote-control command to the workers diagnosed with task "
        "events off (their heartbeats show tasks processed while no task event comes), at most every 30 s per "
        "worker. It changes the workers' behaviour (they send task events until restarted): opt-in. See "
        "[Turning task events on](troubleshooting.md#turning-task-events-on).",
    ).field()

    # -- beat schedule ---------------------------------------------------------------------
    schedule_refresh_interval: float = Option(
        "--schedule-refresh-interval",
        type=DURATION,
        default="60s",
        group=Group.BEAT,
        help="With --app whose beat uses django-celery-beat's database: how often its entries are re-read.",
        doc="With `--app` whose beat uses django-celery-beat's database: how often its entries are re-read.",
    ).field()

    # -- logging ---------------------------------------------------------------------------
    log_level: str = Option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        default="INFO",
        group=Group.LOGGING,
        chart_default="INFO",
        help="DEBUG, INFO, WARNING or ERROR.",
        doc="`DEBUG`, `INFO`, `WARNING` or `ERROR`.",
    ).field()
    log_format: str = Option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        group=Group.LOGGING,
        chart_default="json",
        help="text, or json (one JSON object per line).",
        doc="`text` or `json` (one JSON object per line).",
    ).field()

    # -- not options -----------------------------------------------------------------------
    # The zero bucket's width of native histograms.
    native_zero_threshold: float = nativehist.DEFAULT_ZERO_THRESHOLD
    # Static beat_schedule entries of the --app, for the celery_beat_schedule_* series.
    beat_entries: Tuple[Entry, ...] = ()
    # The --app spec when its beat uses django-celery-beat's database: entries are re-read
    # from there every schedule_refresh_interval instead.
    beat_database_app: Optional[str] = None
    # Reconnect backoff of the event receiver: starts at the first value, doubles, capped
    # (fixed by the incumbent's --retry-interval, the only option that sets it).
    reconnect_backoff: Tuple[float, float] = Option(
        "--retry-interval",
        name="old_retry_interval",
        type=click.FloatRange(min=0),
        group=Group.BROKER,
        help="The incumbent's seconds between reconnection attempts to the broker.",
        deprecated="drop it: the exporter reconnects by itself, after 1 s doubling to 30 s; given N > 0, it "
        "waits N s between attempts, as before (0, exit at the first broker error, is refused)",
    ).field(convert=_reconnect_backoff)
    # How long events of a task wait for its task-sent (which carries the queue) when
    # task-sent events are flowing, before the fallback queue label is used.
    sent_hold_seconds: float = 2.0
    # How long a finished task's id is remembered, to drop duplicate terminal events.
    finished_grace_seconds: float = 10.0


def _worker_ttl_outlives_timeout(settings: Settings) -> None:
    if settings.worker_ttl <= settings.worker_timeout:
        raise Invalid(
            f"must be longer than --worker-timeout ({settings.worker_timeout:g} s), or lost workers "
            "vanish before their alert can fire",
            "--worker-ttl",
        )


def _event_reader_serves_broker(settings: Settings) -> None:
    """A reader named by --event-reader must be able to serve the broker URL (checked
    without contacting the broker)."""
    if settings.event_reader == streams.AUTO:
        return
    from celery_exporter import readers  # imported late: --help stays fast

    reason = readers.refusal(settings.event_reader, settings.broker_url, settings.transport_options)
    if reason is not None:
        raise Invalid(reason, "--event-reader")


# Checks across settings, run on every Settings built from options; each raises Invalid
# naming the flag to change.
CHECKS: Tuple[Callable[[Settings], None], ...] = (_worker_ttl_outlives_timeout, _event_reader_serves_broker)

# The incumbent's flags that set no setting here: accepted where what they ask for is what
# the exporter does anyway, refused where it cannot be done here (with what to do instead).
INCUMBENT_ONLY: Tuple[Option, ...] = (
    Option(
        "--generic-hostname-task-sent-metric/--no-generic-hostname-task-sent-metric",
        name="old_generic_hostname_task_sent_metric",
        default=False,
        group=Group.LIFETIME,
        help="The incumbent's flag for celery_task_sent_total without the publisher's hostname, what it is here.",
        deprecated="drop it: celery_task_sent_total carries no hostname label here",
    ),
    Option(
        "--metric-prefix",
        name="old_metric_prefix",
        type=click.STRING,
        group=Group.HTTP,
        help="The incumbent's prefix of every metric name; only celery_ (the names here) is accepted.",
        deprecated="drop it: celery_ is the prefix of every metric here",
        refused="only celery_ is accepted (the names are fixed here): rename in Prometheus with a "
        "metric_relabel_configs rule on __name__ instead (docs/migration.md)",
        accepts=("celery_",),
    ),
    Option(
        "--static-label",
        name="old_static_label",
        type=click.STRING,
        multiple=True,
        group=Group.HTTP,
        help="The incumbent's label=value added to every metric.",
        refused="add the label in Prometheus instead: a target label (a static_configs entry's labels, or a "
        "relabel_configs rule) lands on every series of the exporter, as this flag's did (docs/migration.md)",
    ),
    Option(
        "--default-queue-name",
        name="old_default_queue_name",
        type=click.STRING,
        group=Group.QUEUES,
        help="The incumbent's queue label for tasks whose queue it did not know.",
        refused="the queue label comes from task-sent events (task_send_sent_event=True in the publishers) or "
        "the worker's only queue, else it is unknown; there is no fixed fallback name (docs/migration.md)",
    ),
)
