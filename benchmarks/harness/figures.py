"""The figures a run yields: key, label in the tables, and how to read it from a run's
result. Summaries, targets and the before/after comparison all go through this table."""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Optional, Tuple

from harness.measure import ms

Getter = Callable[[dict], Any]

FIGURES: List[Tuple[str, str, Getter]] = [
    # (key, label, getter)
    ("published", "events published", lambda r: r["generator"]["total_events"]),
    ("counted", "events counted", lambda r: r["counted"]),
    ("lost", "events lost", lambda r: r["lost"]),
    ("gen_rate", "generator events/s achieved", lambda r: r["generator"]["events_per_s"]),
    ("messages", "broker messages published", lambda r: r["generator"]["messages"]),
    ("mean_batch", "mean task.multi batch, events", lambda r: r["generator"]["mean_batch"]),
    ("max_batch", "largest task.multi batch, events", lambda r: r["generator"].get("max_batch")),
    ("consumer_rate", "consumer events/s (first publish..last event)", lambda r: r["consumer_events_per_s"]),
    ("lag_s", "lag after generator end, s (last-event ts)", lambda r: r["lag_s"]),
    ("lag_polled_s", "lag, s (count polled every 100 ms)", lambda r: r["lag_polled_s"]),
    ("core_check_ms", "core speed check, ms (lower = faster core)", lambda r: r.get("core_check_ms")),
    ("other_load", "other processes' share of the consumer core", lambda r: r.get("other_load_on_consumer_core")),
    ("cpu_s", "consumer CPU s over the load", lambda r: r["cpu_s"]),
    ("cpu_per_100k_s", "CPU s per 100k events", lambda r: r["cpu_per_100k_s"]),
    ("rss_idle_mib", "RSS when ready, MiB", lambda r: r["rss_idle_mib"]),
    (
        "peak_rss_at_generator_end_mib",
        "peak RSS at generator end (VmHWM), MiB",
        lambda r: r.get("peak_rss_at_generator_end_mib"),
    ),
    ("peak_rss_after_load_mib", "peak RSS after settling, MiB", lambda r: r["peak_rss_after_load_mib"]),
    ("peak_rss_mib", "peak RSS incl. idle scrapes, MiB", lambda r: r["peak_rss_mib"]),
    ("redis_omem", "Redis output buffer peak, MiB", lambda r: r["subscription"].get("max_output_buffer_mib")),
    (
        "rmq_queue_messages",
        "RabbitMQ queue backlog peak, messages",
        lambda r: r["subscription"].get("max_queue_messages"),
    ),
    ("rmq_queue_mib", "RabbitMQ queue backlog peak, MiB", lambda r: r["subscription"].get("max_queue_mib")),
    (
        "rmq_samples",
        "RabbitMQ queue samples (n)",
        lambda r: r["subscription"].get("samples") if r.get("broker") == "rabbitmq" else None,
    ),
    (
        "rmq_ctl_cpu_s",
        "rabbitmqctl CPU s on the generator core",
        lambda r: r.get("rabbitmqctl_cpu_during_load_s"),
    ),
    ("subscription_dropped", "subscription dropped (0/1)", lambda r: r["subscription_dropped"]),
    ("series_task", "series: task label sets", lambda r: r.get("series", {}).get("task")),
    ("series_exception", "series: exception", lambda r: r.get("series", {}).get("exception")),
    ("series_worker", "series: worker", lambda r: r.get("series", {}).get("worker")),
    ("sample_lines", "sample lines served in /metrics", lambda r: r.get("sample_lines")),
    (
        "first_scrape_ms",
        "first scrape after the load, ms",
        lambda r: (
            ms(r["settle"]["first_polls_s"][0])
            if r["consumer"] == "exporter" and r["settle"]["first_polls_s"]
            else None
        ),
    ),
    ("cold_scrape_ms", "first (cold) idle scrape, text, ms", lambda r: (r.get("cold_scrape_ms") or {}).get("plain")),
    (
        "cold_prom_scrape_ms",
        "first (cold) idle scrape, OpenMetrics+gzip, ms",
        lambda r: (r.get("cold_scrape_ms") or {}).get("prom"),
    ),
    (
        "cold_protobuf_scrape_ms",
        "first (cold) idle scrape, protobuf+gzip, ms",
        lambda r: (r.get("cold_scrape_ms") or {}).get("protobuf"),
    ),
    ("idle_scrape_p50_ms", "idle scrape p50, ms", lambda r: (r.get("idle_scrape_ms") or {}).get("p50")),
    ("idle_scrape_p99_ms", "idle scrape p99, ms", lambda r: (r.get("idle_scrape_ms") or {}).get("p99")),
    (
        "prom_scrape_p50_ms",
        "idle scrape p50, OpenMetrics+gzip, ms",
        lambda r: (r.get("idle_scrape_prometheus_ms") or {}).get("p50"),
    ),
    (
        "prom_scrape_p99_ms",
        "idle scrape p99, OpenMetrics+gzip, ms",
        lambda r: (r.get("idle_scrape_prometheus_ms") or {}).get("p99"),
    ),
    (
        "protobuf_scrape_p50_ms",
        "idle scrape p50, protobuf+gzip, ms",
        lambda r: (r.get("idle_scrape_protobuf_ms") or {}).get("p50"),
    ),
    (
        "protobuf_scrape_p99_ms",
        "idle scrape p99, protobuf+gzip, ms",
        lambda r: (r.get("idle_scrape_protobuf_ms") or {}).get("p99"),
    ),
    ("series_text", "series stored from a text scrape", lambda r: r.get("series_text")),
    ("series_native", "series stored from a protobuf scrape (native histograms)", lambda r: r.get("series_native")),
    (
        "native_series_share",
        "native / text series",
        lambda r: round(r["series_native"] / r["series_text"], 3) if r.get("series_text") else None,
    ),
    ("load_scrape_p50_ms", "scrape under load p50, ms", lambda r: (r.get("load_scrape_ms") or {}).get("p50")),
    ("load_scrape_p99_ms", "scrape under load p99, ms", lambda r: (r.get("load_scrape_ms") or {}).get("p99")),
    ("load_scrapes", "scrapes under load (n)", lambda r: (r.get("load_scrape_ms") or {}).get("n")),
    ("checks_failed", "ground-truth checks failed", lambda r: r.get("checks_failed")),
]


def mmm(values: List[Optional[float]]) -> Optional[List[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return [min(vals), statistics.median(vals), max(vals)]


GETTERS: Dict[str, Getter] = {key: get for key, _, get in FIGURES}
