"""The scenarios: what load each one sends, on which broker, and the targets it checks."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple


@dataclasses.dataclass
class Scenario:
    name: str
    summary: str
    broker: str = "redis"  # "redis": a private redis-server; "rabbitmq": a fresh vhost
    # generator
    tasks: Optional[int] = None
    duration: Optional[float] = None
    rate: float = 0.0
    task_names: int = 20
    workers: int = 4
    queues: int = 4
    fail_fraction: float = 0.02
    retry_fraction: float = 0.02
    # most task events in one task.multi message (the workers' EventDispatcher buffer_limit,
    # Celery's default 24); 0: no buffering, one message per event (eventlet/gevent workers)
    batch_limit: int = 24
    # runner
    load_scrape_interval: Optional[float] = 0.1  # None: no scraper during the load
    idle_scrapes: int = 100
    scrape_timeout: float = 10.0
    exporter_args: Tuple[str, ...] = ()
    targets: Tuple[Tuple[str, str, float], ...] = ()  # (figure, op, bound) checked on the exporter
    quick: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def scaled(self, quick: bool) -> "Scenario":
        return dataclasses.replace(self, **self.quick) if quick else self

    def describe(self) -> str:
        size = f"{self.tasks:,} tasks" if self.tasks is not None else f"{self.duration:g} s"
        rate = f"{self.rate:,.0f} events/s" if self.rate else "as fast as possible"
        batching = (
            f"task.multi batches of up to {self.batch_limit}"
            if self.batch_limit > 0
            else "one message per task event (no task.multi)"
        )
        return (
            f"{self.broker}: {size} at {rate}; {self.task_names:,} task names, {self.workers} workers, "
            f"{self.queues} queues, {self.fail_fraction:.0%} failed, {self.retry_fraction:.0%} retried; {batching}"
        )


SCENARIOS: Dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "sanity",
            "harness check: low rate, both consumers must count every event",
            duration=10,
            rate=1000,
            task_names=10,
            workers=3,
            queues=2,
            idle_scrapes=20,
            targets=(("lost", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(duration=3),
        ),
        Scenario(
            "burst",
            "20,000 tasks (~80k task events + heartbeats) published as fast as possible",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "sustained",
            "10,000 events/s for 30 s",
            duration=30,
            rate=10_000,
            task_names=50,
            workers=10,
            queues=4,
            targets=(
                ("lost", "==", 0),
                ("lag_s", "<", 2.0),
                ("peak_rss_mib", "<", 80.0),
                ("subscription_dropped", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(duration=3, idle_scrapes=20),
        ),
        Scenario(
            "cpu",
            "5,000 events/s for 20 s: CPU per 100k events, no scraping during the load",
            duration=20,
            rate=5_000,
            task_names=50,
            workers=10,
            queues=4,
            load_scrape_interval=None,
            idle_scrapes=20,
            targets=(("lost", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(duration=2),
        ),
        Scenario(
            # every name appears 10 times (task i gets name i mod 2000); quick keeps the 2,000
            # names (the point of the scenario) and sends each once.
            "cardinality",
            "2,000 task names x 50 workers, 10 tasks per name, exporter defaults; no scrapes until the load ends",
            tasks=20_000,
            rate=5_000,
            task_names=2_000,
            workers=50,
            queues=10,
            load_scrape_interval=None,
            idle_scrapes=20,
            scrape_timeout=30.0,
            targets=(
                ("peak_rss_mib", "<", 113.0),
                ("idle_scrape_p99_ms", "<", 100.0),
                ("prom_scrape_p99_ms", "<", 100.0),
                ("protobuf_scrape_p99_ms", "<", 100.0),
                ("native_series_share", "<=", 0.2),
                ("lost", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(tasks=2_000, idle_scrapes=5),
        ),
        Scenario(
            # ~5,400 sample lines: a (name, queue) label set with all three histograms renders
            # 10 counters, running and 2-3 last-seen gauges + 23 runtime + 21 queue-wait +
            # 21 prefetch-wait lines = ~78 lines, so 64 names -> ~5,000, plus up to 4
            # exception lines per name (3 failure classes and the retry one), 10 workers x 6
            # lines, and ~70 self/process lines (see benchmarks/README.md).
            "scrape",
            "~5,000 sample lines in /metrics while 5,000 events/s flow; scraped every 100 ms",
            duration=20,
            rate=5_000,
            task_names=64,
            workers=10,
            queues=4,
            load_scrape_interval=0.1,
            idle_scrapes=100,
            targets=(("load_scrape_p99_ms", "<", 20.0), ("checks_failed", "==", 0)),
            quick=dict(duration=2, idle_scrapes=20),
        ),
        # RabbitMQ: the same loads through a fresh vhost of the local broker. The generator's
        # top rate on AMQP (one basic.publish per message, no pipelining; measured on this
        # 2-vCPU VM with the reference consuming): ~24k events/s batched (mean batch ~17),
        # ~8.8k events/s with one message per event, and it holds 15k events/s paced for 4 s
        # at 65 % of its core. Sustained runs at 10k/s (~50 % of the generator's core), as on
        # Redis, leaving the rest of that core to rabbitmqctl's queue sampling and the runner.
        Scenario(
            "rmq-burst",
            "RabbitMQ: 20,000 tasks (~80k task events + heartbeats) as fast as possible, task.multi batches <= 24",
            broker="rabbitmq",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            batch_limit=24,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "rmq-burst-single",
            "RabbitMQ: 20,000 tasks as fast as possible, one message per event (no task.multi)",
            broker="rabbitmq",
            tasks=20_000,
            rate=0,
            task_names=20,
            workers=4,
            queues=4,
            batch_limit=0,
            targets=(("lost", "==", 0), ("subscription_dropped", "==", 0), ("checks_failed", "==", 0)),
            quick=dict(tasks=2_000, idle_scrapes=20),
        ),
        Scenario(
            "rmq-sustained",
            "RabbitMQ: 10,000 events/s for 30 s, task.multi batches <= 24",
            broker="rabbitmq",
            duration=30,
            rate=10_000,
            task_names=50,
            workers=10,
            queues=4,
            batch_limit=24,
            targets=(
                ("lost", "==", 0),
                ("lag_s", "<", 2.0),
                ("peak_rss_mib", "<", 80.0),
                ("subscription_dropped", "==", 0),
                ("checks_failed", "==", 0),
            ),
            quick=dict(duration=3, idle_scrapes=20),
        ),
    ]
}
ORDER = [
    "sanity",
    "burst",
    "sustained",
    "cpu",
    "cardinality",
    "scrape",
    "rmq-burst",
    "rmq-burst-single",
    "rmq-sustained",
]
GROUPS = {
    "all": ORDER,
    "redis": [n for n in ORDER if SCENARIOS[n].broker == "redis"],
    "rabbitmq": [n for n in ORDER if SCENARIOS[n].broker == "rabbitmq"],
}
