"""The Celery app the integration tests run in real `celery worker -E` subprocesses.

Configuration comes from the environment, set by the test that starts the worker:
  IT_BROKER_URL    broker of this test (its own Redis DB or RabbitMQ vhost)
  IT_TRUTH_URL     Redis URL where tasks record what really happened (ground truth)
  IT_TRUTH_PREFIX  key prefix unique to the test
  IT_TRANSPORT_OPTIONS  optional JSON object: broker_transport_options (key prefix, priority steps)
  IT_BROKER_USE_SSL     optional JSON object: broker_use_ssl (TLS to the broker)
  IT_EVENT_SERIALIZER   optional: event_serializer (e.g. pickle, which the exporter refuses by default)

Every task records its outcome as INCR <prefix>:<task name>:<queue>:<outcome>, with the
queue taken from the message's delivery info, so a test can compare the exporter's
counters with what the workers actually did.
"""

import json
import os
import time

import redis
from celery import Celery
from celery.exceptions import Reject, Retry
from celery.utils.time import utcoffset

BROKER_URL = os.environ["IT_BROKER_URL"]
TRUTH_URL = os.environ.get("IT_TRUTH_URL", "redis://127.0.0.1:6379/0")
TRUTH_PREFIX = os.environ.get("IT_TRUTH_PREFIX", "it")

app = Celery("it_worker_app", broker=BROKER_URL)
app.conf.update(
    task_send_sent_event=True,  # the worker publishes retries: they need task-sent too
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
    broker_transport_options=json.loads(os.environ.get("IT_TRANSPORT_OPTIONS") or "{}"),
)
if os.environ.get("IT_EVENT_SERIALIZER"):
    app.conf.event_serializer = os.environ["IT_EVENT_SERIALIZER"]
if os.environ.get("IT_BROKER_USE_SSL"):
    app.conf.broker_use_ssl = json.loads(os.environ["IT_BROKER_USE_SSL"])

# For the exporter's --app and the beat test: one entry, every 2 s.
app.conf.beat_schedule = {"it-tick": {"task": "it.succeed", "schedule": 2.0, "args": (0,)}}

_truth = None


def truth():
    global _truth
    if _truth is None:
        _truth = redis.Redis.from_url(TRUTH_URL)
    return _truth


def record(task, outcome):
    queue = (task.request.delivery_info or {}).get("routing_key") or "?"
    truth().incr(f"{TRUTH_PREFIX}:{task.name}:{queue}:{outcome}")


@app.task(bind=True, name="it.prime")
def prime(self):
    """Run first by tests, so the exporter has seen a task-sent before their workload."""
    record(self, "started")
    record(self, "succeeded")


@app.task(bind=True, name="it.succeed")
def succeed(self, value=None):
    record(self, "started")
    record(self, "succeeded")
    return value


@app.task(bind=True, name="it.fail")
def fail(self):
    record(self, "started")
    record(self, "failed")
    raise ValueError("it.fail always fails")


@app.task(bind=True, name="it.retry", max_retries=5)
def retry_twice(self):
    record(self, "started")
    if self.request.retries < 2:
        record(self, "retried")
        raise self.retry(exc=KeyError("not yet"), countdown=0.2)
    record(self, "succeeded")
    return self.request.retries


@app.task(bind=True, name="it.sleep")
def sleep(self, seconds):
    record(self, "started")
    time.sleep(seconds)
    truth().set(f"{TRUTH_PREFIX}:worker_utcoffset", str(utcoffset()))
    record(self, "succeeded")
    return seconds


@app.task(bind=True, name="it.later")
def later(self):
    record(self, "started")
    record(self, "succeeded")


@app.task(bind=True, name="it.never")
def never(self):
    """Published with a countdown and revoked before it is due: must never run."""
    record(self, "started")
    record(self, "succeeded")


@app.task(bind=True, name="it.reject", acks_late=True)
def reject(self):
    """Rejects its message for good. With acks_late the message is still unacknowledged,
    so Celery 5.7 sends task-failed and then task-rejected."""
    record(self, "started")
    record(self, "rejected")
    raise Reject("it.reject rejects", requeue=False)


def _hold(task, seconds):
    """Record the real start (epoch seconds) and the attempt, then sleep: a task in flight."""
    queue = (task.request.delivery_info or {}).get("routing_key") or "?"
    truth().rpush(f"{TRUTH_PREFIX}:starts:{task.name}:{queue}", repr(time.time()))
    record(task, "started")
    time.sleep(seconds)
    record(task, "succeeded")
    return seconds


@app.task(bind=True, name="it.hold")
def hold(self, seconds):
    return _hold(self, seconds)


@app.task(bind=True, name="it.hold_late", acks_late=True)
def hold_late(self, seconds):
    """Acknowledged after it ran: a worker that dies running it leaves it to the broker."""
    return _hold(self, seconds)


def _timed_sleep(task, seconds):
    """Sleep; returns the monotonic time the task's body began, for _ran."""
    began = time.monotonic()
    record(task, "started")
    time.sleep(seconds)
    return began


def _ran(task, began):
    """Record how long the task's body ran, up to the raise that ends it, under
    <prefix>:ran:<task name>."""
    truth().rpush(f"{TRUTH_PREFIX}:ran:{task.name}", repr(time.monotonic() - began))


@app.task(bind=True, name="it.sleep_fail")
def sleep_fail(self, seconds):
    """Fails after sleeping: a failed run of a known length."""
    began = _timed_sleep(self, seconds)
    record(self, "failed")
    _ran(self, began)
    raise ValueError("it.sleep_fail fails after its sleep")


@app.task(bind=True, name="it.sleep_retry", max_retries=1)
def sleep_retry(self, seconds):
    """Retries once after sleeping (a retried run of a known length, the retry's publishing
    included), then succeeds at once."""
    if self.request.retries:
        record(self, "succeeded")
        return self.request.retries
    began = _timed_sleep(self, seconds)
    record(self, "retried")
    try:
        raise self.retry(exc=KeyError("once more"), countdown=0.5)
    except Retry:
        _ran(self, began)
        raise
