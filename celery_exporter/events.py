"""Raw event dicts in, typed and validated events out: the one place where bad input is
refused (counted as dropped, logged once per reason).

Every event with a string `type` is counted in celery_exporter_events_total (unknown types
as "other", so hostile input cannot grow that label set). Task events of a counted state and
worker-online/-heartbeat/-offline come out as TaskEvent / WorkerEvent with every field the
rest of the handling reads already checked: label values are bounded strings without
control characters, numbers are finite, counts are non-negative integers.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Dict, Final, Mapping, Optional, Union

from celery_exporter import catalogue
from celery_exporter.drops import Drops
from celery_exporter.store.own import ExporterState
from celery_exporter.store.workers import Software

MAX_LABEL_LENGTH = 256
UNKNOWN_EXCEPTION = "unknown"
# Native delayed delivery (Celery >= 5.5 with quorum queues) publishes countdown tasks to
# celery_delayed_N exchanges with 28 delay bits in front of the real routing key.
DELAYED_EXCHANGE = re.compile(r"(?:.+_)?celery_delayed_\d+$")
DELAY_BITS = 28
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
# control characters, and lone surrogates (JSON can carry "\ud800"; no UTF-8 encoding has them)
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)\(")
WORKER_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})
_SOFTWARE_FIELDS = ("sw_ident", "sw_ver", "sw_sys")
# An event as it arrives: decoded JSON, nothing checked yet.
RawEvent = Mapping[str, Any]


def number(value: Any) -> Optional[float]:
    if type(value) is float:  # the usual case, first (NaN fails both comparisons)
        return value if -math.inf < value < math.inf else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# The largest count a Prometheus sample (a float64) holds exactly. Beyond it the text format
# would print the integer while protobuf and the status page round it: no worker counts that
# far, so a larger value is refused as malformed.
MAX_COUNT = 2**53


def count(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def label(value: Any) -> Optional[str]:
    """A string usable as a label value: non-empty, bounded, no control characters or lone
    surrogates."""
    if isinstance(value, str) and 0 < len(value) <= MAX_LABEL_LENGTH:
        # (ASCII and printable is the common case, and a third of the regex's cost)
        if (value.isascii() and value.isprintable()) or not _CONTROL.search(value):
            return value
    return None


# Label values that passed `label`, for the fields that repeat (task names, queues,
# hostnames): a lookup is a third of the check, and every event's value is replaced by the
# one string kept here, so the task records of thousands of tasks in flight share it instead
# of each holding the copy its own event was decoded into. Bounded: emptied when full.
_GOOD_LABELS: Dict[str, str] = {}
_GOOD_LABELS_MAX = 4096


def repeated_label(value: Any) -> Optional[str]:
    """`label`, remembered for values that come again and again: the remembered string."""
    if type(value) is str:
        known = _GOOD_LABELS.get(value)
        if known is not None:
            return known
    checked = label(value)
    if checked is not None and type(checked) is str:
        if len(_GOOD_LABELS) >= _GOOD_LABELS_MAX:
            _GOOD_LABELS.clear()
        _GOOD_LABELS[checked] = checked
    return checked


def parse_eta(value: Any) -> Optional[float]:
    """ETA/expires as sent in events: ISO-8601 strings, usually with an offset. A naive
    value is taken as UTC (Celery's default `enable_utc`)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def queue_from_sent(event: RawEvent) -> Optional[str]:
    """The queue a task-sent event was published to."""
    queue = repeated_label(event.get("queue"))
    if queue is not None:
        return queue
    routing_key = event.get("routing_key")
    exchange = event.get("exchange")
    if not isinstance(routing_key, str) or not isinstance(exchange, str):
        return None
    if DELAYED_EXCHANGE.match(exchange):
        parts = routing_key.split(".", DELAY_BITS)
        return repeated_label(parts[DELAY_BITS]) if len(parts) > DELAY_BITS else None
    if exchange == "":
        return repeated_label(routing_key)  # the default exchange routes by queue name
    return None


def _class_name(token: str) -> Optional[str]:
    """`mymod.errors.Custom` -> `Custom`, if it is a plausible class name."""
    name = token.strip().rsplit(".", 1)[-1]
    if len(name) <= 128 and _CLASS_NAME.match(name):
        return name
    return None


def exception_class(event: RawEvent) -> str:
    """Class name of a task's exception, from the repr in `exception` ("ValueError('boom')").

    When that repr names no class, the traceback's last line does: pool-side failures (hard
    time limit, a killed child) report `ExceptionWithTraceback()` and their real class only as
    `billiard.exceptions.TimeLimitExceeded: ...`, and exceptions with a custom repr (Celery's
    Reject: `reject requeue=False: reason`) put theirs there as `celery.exceptions.Reject: ...`."""
    text = event.get("exception")
    if isinstance(text, str):
        name = _class_name(text.split("(", 1)[0])
        if name == "Retry":  # the solo/threads pools report the Retry itself: Retry(Retry(...), KeyError('x'), 0.5)
            inner = [c for c in _CALL.findall(text[:2048]) if c.rsplit(".", 1)[-1] != "Retry"]
            inner_name = _class_name(inner[0]) if inner else None
            if inner_name is not None:
                return inner_name
        if name is not None and name != "ExceptionWithTraceback":
            return name
    traceback = event.get("traceback")
    if isinstance(traceback, str):
        lines = [line for line in traceback[-4096:].splitlines() if line.strip()]
        if lines and ":" in lines[-1]:
            name = _class_name(lines[-1].split(":", 1)[0])
            if name is not None:
                return name
    if isinstance(text, str) and text.startswith("reject requeue="):
        return "Reject"  # Reject's repr, when the traceback is missing
    return UNKNOWN_EXCEPTION


class TaskEvent:
    """A task event whose fields are checked. `name`, `retries` and `eta` are read from
    task-sent and task-received only (the others carry none), `queue` from task-sent only,
    `runtime` from task-succeeded, `exception` (a class name) from task-failed and
    task-retried, `hostname` where it is used (see Validator).

    Immutable: every field is Final, so mypy refuses an assignment after __init__ (what the
    handling finds out about an event is returned, never written into it). At run time it
    is a plain __slots__ class: a frozen dataclass or a NamedTuple costs more per event."""

    __slots__ = (
        "type",
        "state",
        "uuid",
        "timestamp",
        "hostname",
        "name",
        "retries",
        "eta",
        "queue",
        "runtime",
        "exception",
    )

    def __init__(
        self,
        type_: str,
        state: int,
        uuid: str,
        timestamp: float,
        hostname: Optional[str],
        name: Optional[str] = None,
        retries: int = 0,
        eta: Optional[float] = None,
        queue: Optional[str] = None,
        runtime: Optional[float] = None,
        exception: Optional[str] = None,
    ):
        self.type: Final = type_
        self.state: Final = state  # index into catalogue.TASK_STATES
        self.uuid: Final = uuid
        self.timestamp: Final = timestamp  # the sender's clock
        self.hostname: Final = hostname
        self.name: Final = name
        self.retries: Final = retries
        self.eta: Final = eta
        self.queue: Final = queue
        self.runtime: Final = runtime
        self.exception: Final = exception

    def __repr__(self) -> str:
        return f"TaskEvent({self.type} {self.uuid} name={self.name!r} at {self.timestamp})"


class WorkerEvent:
    """worker-online, worker-heartbeat or worker-offline, fields checked. The on-demand
    heartbeat (remote control `heartbeat`, freq=5) has no `active`: it is not `periodic`, and
    neither its freq nor its missing counts are taken from it."""

    __slots__ = ("type", "hostname", "timestamp", "freq", "active", "processed", "software")

    def __init__(
        self,
        type_: str,
        hostname: str,
        timestamp: float,
        freq: Optional[float] = None,
        active: Optional[int] = None,
        processed: Optional[int] = None,
        software: Optional[Software] = None,
    ):
        self.type = type_
        self.hostname = hostname
        self.timestamp = timestamp
        self.freq = freq  # > 0, from periodic heartbeats only
        self.active = active
        self.processed = processed
        self.software = software


class TaskCancelled:
    """task-cancelled (Celery >= 5.1): the worker cancelled a running acks_late task when its
    broker connection was lost; the broker delivers it again. No counter of its own: it only
    ends the task's run."""

    __slots__ = ("uuid",)

    def __init__(self, uuid: str):
        self.uuid = uuid


Event = Union[TaskEvent, WorkerEvent, TaskCancelled]


class Validator:
    def __init__(self, exporter: ExporterState, drop: Drops, hostname_label: bool = False):
        self._exporter = exporter
        self._drop = drop
        # Task events whose `hostname` is read: the worker's task-received and task-started
        # (which worker has the task), and with --task-hostname-label every one but task-sent.
        self._hostname_types = frozenset(
            ["task-received", "task-started"]
            + ([f"task-{s}" for s in catalogue.TASK_STATES if s != "sent"] if hostname_label else [])
        )

    def parse(self, raw: Any, now: float) -> Optional[Event]:
        """The typed event, or None for events that are only counted (worker-elect, custom
        types) and for refused ones (counted as dropped)."""
        if not isinstance(raw, dict):
            self._drop("bad_message", f"event is a {type(raw).__name__}, not a dict")
            return None
        etype = raw.get("type")
        if not isinstance(etype, str):
            self._drop("bad_field", "event without a string 'type'")
            return None
        self._exporter.count_event(etype if etype in catalogue.KNOWN_EVENT_TYPES else "other", now)
        if etype.startswith("task-"):
            state = catalogue.EVENT_STATE.get(etype)
            if state is not None:
                return self._task(raw, etype, state)
            if etype == "task-cancelled":
                uuid = label(raw.get("uuid"))
                if uuid is None:
                    self._drop("bad_field", "task-cancelled without a valid uuid")
                    return None
                return TaskCancelled(uuid)
            return None
        if etype in WORKER_EVENTS:
            return self._worker(raw, etype)
        return None

    def _task(self, raw: RawEvent, etype: str, state: int) -> Optional[TaskEvent]:
        uuid = label(raw.get("uuid"))
        ts = number(raw.get("timestamp"))
        if uuid is None or ts is None:
            self._drop("bad_field", f"{etype} without a valid uuid or timestamp")
            return None
        hostname = repeated_label(raw.get("hostname")) if etype in self._hostname_types else None
        if etype == "task-sent" or etype == "task-received":
            name = repeated_label(raw.get("name"))
            if name is None:
                self._drop("bad_field", f"{etype} without a valid task name")
                return None
            return TaskEvent(
                etype,
                state,
                uuid,
                ts,
                hostname,
                name,
                count(raw.get("retries")) or 0,
                parse_eta(raw.get("eta")),
                queue_from_sent(raw) if etype == "task-sent" else None,
            )
        if etype == "task-succeeded":
            return TaskEvent(etype, state, uuid, ts, hostname, runtime=number(raw.get("runtime")))
        if etype == "task-failed" or etype == "task-retried":
            return TaskEvent(etype, state, uuid, ts, hostname, exception=exception_class(raw))
        return TaskEvent(etype, state, uuid, ts, hostname)

    def _worker(self, raw: RawEvent, etype: str) -> Optional[WorkerEvent]:
        hostname = repeated_label(raw.get("hostname"))
        ts = number(raw.get("timestamp"))
        if hostname is None or ts is None:
            self._drop("bad_field", f"{etype} without a valid hostname or timestamp")
            return None
        if etype == "worker-offline":
            return WorkerEvent(etype, hostname, ts)
        software: Optional[Software] = None
        if any(k in raw for k in _SOFTWARE_FIELDS):
            ident, ver, sys_ = ((label(raw.get(k)) or "")[:64] for k in _SOFTWARE_FIELDS)
            software = (ident, ver, sys_)
        freq = number(raw.get("freq")) if "active" in raw else None
        return WorkerEvent(
            etype,
            hostname,
            ts,
            freq=freq if freq is not None and freq > 0 else None,
            active=count(raw.get("active")),
            processed=count(raw.get("processed")),
            software=software,
        )
