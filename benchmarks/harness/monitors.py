"""The broker's view of the consumer while the load runs: is it still subscribed (the same
subscription throughout), how much the broker holds for it, and its RSS about once a second.
Also the wait, after the consumer reports ready, until the broker shows its subscription."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from harness.brokers import RMQ_QUEUE_TTL, Broker, RabbitVhost, RedisServer
from harness.measure import proc_status_mib


class Monitor(threading.Thread):
    """Samples the broker's view of the consumer every `interval` s while the load runs,
    and the consumer's VmRSS about once a second."""

    def __init__(self, name: str, interval: float, pid: Optional[int]):
        super().__init__(name=name, daemon=True)
        self.pid = pid
        self.interval = interval
        self.t0 = time.monotonic()
        self.rss_series: List[Tuple[float, float]] = []  # (s since start, VmRSS MiB), about 1 per s
        self.stop_event = threading.Event()
        self.samples = 0
        self.missing_samples = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def sample_rss(self) -> None:
        if self.pid is not None:
            t = round(time.monotonic() - self.t0, 1)
            if not self.rss_series or t - self.rss_series[-1][0] >= 1.0:
                try:
                    self.rss_series.append((t, round(proc_status_mib(self.pid)["VmRSS"], 1)))
                except OSError:
                    pass

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)

    def subscribed_now(self) -> bool:
        """Is the consumer subscribed at this moment (after the last sample)?"""
        raise NotImplementedError

    def figures(self, still: bool) -> Tuple[Dict[str, Any], bool]:
        """The run's subscription figures, and whether the broker dropped the consumer."""
        raise NotImplementedError


class RedisMonitor(Monitor):
    """Polls CLIENT LIST: is a pattern subscriber (psub=1) present, which client ids held
    the subscription, and how large its output buffer (backlog not yet sent) grew."""

    def __init__(self, server: RedisServer, interval: float = 0.1, pid: Optional[int] = None):
        super().__init__("redis-monitor", interval, pid)
        self.server = server
        self.client = server.client()
        self.subscriber_ids: List[str] = []
        self.max_omem = 0
        self.max_oll = 0

    def subscribers(self) -> List[Dict[str, str]]:
        return [c for c in self.client.client_list() if int(c.get("psub", 0)) > 0]

    def sample(self) -> None:
        self.sample_rss()
        try:
            subs = self.subscribers()
        except Exception:
            return
        self.samples += 1
        if not subs:
            self.missing_samples += 1
        for c in subs:
            if c["id"] not in self.subscriber_ids:
                self.subscriber_ids.append(c["id"])
            self.max_omem = max(self.max_omem, int(c.get("omem", 0)))
            self.max_oll = max(self.max_oll, int(c.get("oll", 0)))

    def subscribed_now(self) -> bool:
        return bool(self.subscribers())

    def figures(self, still: bool) -> Tuple[Dict[str, Any], bool]:
        buffer_kill = "output buffer limits" in self.server.log_text()
        subscription = {
            "psub_client_ids": self.subscriber_ids,
            "samples": self.samples,
            "samples_without_subscriber": self.missing_samples,
            "subscribed_at_end": still,
            "redis_log_output_buffer_disconnect": buffer_kill,
            "max_output_buffer_mib": round(self.max_omem / 2**20, 2),
            "max_output_list_len": self.max_oll,
        }
        return {"subscription": subscription}, buffer_kill or len(self.subscriber_ids) > 1


class RabbitMonitor(Monitor):
    """Polls `rabbitmqctl list_queues` in the run's vhost: is the consumer's queue there,
    with a consumer, the same queue throughout (a reconnecting exporter declares a new
    one), and how many messages (and bytes) it held: the backlog the broker keeps for the
    consumer, the analogue of Redis' omem. Each poll costs ~0.4 s of CPU on the generator's
    core (rabbitmqctl boots an Erlang VM; an exclusive queue cannot be inspected over AMQP
    from another connection), so the default interval is 1 s, not 100 ms."""

    def __init__(self, vhost: RabbitVhost, queue: str, interval: float = 1.0, pid: Optional[int] = None):
        super().__init__("rabbitmq-monitor", interval, pid)
        self.vhost = vhost
        self.queue = queue
        self.failed_samples = 0
        self.other_consumer_queues: List[str] = []
        self.max_messages = 0
        self.max_bytes = 0
        self.present_at_last_sample = False
        self.ctl_cpu_before_load = vhost.ctl_cpu_s
        self._rss_stop = threading.Event()
        self._rss = threading.Thread(target=self._rss_loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        super().start()
        self._rss.start()

    def _rss_loop(self) -> None:
        while not self._rss_stop.wait(0.2):
            self.sample_rss()

    def sample(self) -> None:
        try:
            queues = self.vhost.queues()
        except Exception:
            self.failed_samples += 1
            return
        self.samples += 1
        q = queues.get(self.queue)
        self.present_at_last_sample = bool(q and q["consumers"] > 0)
        if not self.present_at_last_sample:
            self.missing_samples += 1
        if q:
            self.max_messages = max(self.max_messages, q["messages"])
            self.max_bytes = max(self.max_bytes, q["message_bytes"])
        for name, info in queues.items():
            if name != self.queue and info["consumers"] > 0 and name not in self.other_consumer_queues:
                self.other_consumer_queues.append(name)

    def stop(self) -> None:
        self._rss_stop.set()
        super().stop()
        if self._rss.is_alive():
            self._rss.join(2)

    def subscribed_now(self) -> bool:
        return self.present_at_last_sample

    def figures(self, still: bool) -> Tuple[Dict[str, Any], bool]:
        # no Redis analogue of the output-buffer kill: RabbitMQ holds the backlog in the
        # queue (until the message TTL, RMQ_QUEUE_TTL) and blocks publishers by flow control
        subscription = {
            "queue": self.queue,
            "other_consumer_queues": self.other_consumer_queues,
            "samples": self.samples,
            "samples_failed": self.failed_samples,
            "samples_without_consumer": self.missing_samples,
            "subscribed_at_end": still,
            "sample_interval_s": self.interval,
            "max_queue_messages": self.max_messages,
            "max_queue_mib": round(self.max_bytes / 2**20, 2),
            "queue_message_ttl_s": RMQ_QUEUE_TTL,
        }
        # CPU that rabbitmqctl took on the generator's core during the load (the monitor's
        # polls); shows how much the sampling competed with the generator
        ctl_cpu = round(self.vhost.ctl_cpu_s - self.ctl_cpu_before_load, 2)
        return {"subscription": subscription, "rabbitmqctl_cpu_during_load_s": ctl_cpu}, bool(
            self.other_consumer_queues
        )


def redis_subscribed(server: RedisServer, pid: int, name: str, ready_at: float) -> Tuple[Monitor, Dict[str, Any]]:
    """Waits for a psub=1 client in CLIENT LIST: readiness (/-/ready 200, or the reference's
    line) comes a few ms before kombu's lazy PSUBSCRIBE."""
    monitor = RedisMonitor(server, pid=pid)
    deadline = ready_at + 10
    while not monitor.subscribers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} reported ready but no psub=1 client in Redis")
        time.sleep(0.005)
    return monitor, {"ready_to_psub_s": round(time.monotonic() - ready_at, 4)}


def rabbit_subscribed(
    vhost: RabbitVhost, pid: int, name: str, ready_at: float, interval: float
) -> Tuple[Monitor, Dict[str, Any]]:
    """Waits for exactly one queue bound to celeryev with a consumer. Both consumers report
    ready after basic.consume-ok, so the consumer should be listed at once; the figure is
    mostly rabbitmqctl's own latency (~0.35 s per call)."""
    deadline = ready_at + 15
    while True:
        queues = vhost.consumer_queues()
        if queues:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{name} reported ready but no queue bound to celeryev has a consumer in vhost {vhost.vhost}"
            )
        time.sleep(0.1)
    if len(queues) > 1:
        raise RuntimeError(f"more than one consumer queue in vhost {vhost.vhost}: {queues}")
    figures = {"ready_to_consumer_listed_s": round(time.monotonic() - ready_at, 4)}
    return RabbitMonitor(vhost, queues[0], interval=interval, pid=pid), figures


def watch_subscription(
    args: Any, broker: Broker, pid: int, name: str, ready_at: float
) -> Tuple[Monitor, Dict[str, Any]]:
    """Once the broker shows the consumer subscribed: a monitor of it (not started) and the
    time from readiness to that moment."""
    if isinstance(broker, RedisServer):
        return redis_subscribed(broker, pid, name, ready_at)
    return rabbit_subscribed(broker, pid, name, ready_at, args.rabbitmq_sample_interval)
