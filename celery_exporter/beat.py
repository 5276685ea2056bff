"""Scheduled-task freshness from the app's beat schedule (`--app`).

Celery events do not say which tasks beat sent, so an entry's "last run" is the last time a
worker received a task of the entry's task name (exporter clock). From the entry's schedule
the exporter derives its interval and when the next run is due: after the last run seen, or,
before any, after the exporter started. `time() - celery_beat_schedule_next_due_timestamp_seconds`
growing past a grace margin means the entry stopped firing (the shipped alert reads it).

Entries come from the app's static `beat_schedule`, or, when the app's beat uses
django-celery-beat's DatabaseScheduler, from its tables (read only, re-read every
--schedule-refresh-interval, so added and disabled entries follow).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from celery_exporter.periodic import Periodic

if TYPE_CHECKING:
    from celery_exporter.store import Store
    from celery_exporter.store.tasks import TaskRow

log = logging.getLogger(__name__)


class ScheduleError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    task: str
    schedule: Any  # a celery.schedules schedule, crontab or solar
    description: str

    def next_due(self, after: float) -> float:
        """Epoch time of the first run due after `after` (epoch seconds)."""
        every = self._every()
        if every is not None:
            return after + every
        last = self.schedule.maybe_make_aware(dt.datetime.fromtimestamp(after, tz=dt.timezone.utc))
        now = self.schedule.now()
        # now + (time from now to the occurrence after `last`), where remaining_estimate reads
        # the clock again itself: to the whole second, so that the two readings (which a busy
        # process can put milliseconds apart) and two scrapes a moment apart agree. Crontab
        # times are whole seconds, and a solar event needs no finer.
        return float(round(now.timestamp() + self.schedule.remaining_estimate(last).total_seconds()))

    def due_and_interval(self, after: float) -> Tuple[float, float]:
        """The first run due after `after`, and the seconds between runs: constant for plain
        intervals; for crontab and solar entries, the gap from that run to the one after."""
        first = self.next_due(after)
        every = self._every()
        if every is not None:
            return first, every
        second = self.next_due(first)
        if second <= first:  # a schedule that counts `first` itself as due
            second = self.next_due(first + 1.0)
        return first, round(second - first)

    def _every(self) -> Optional[float]:
        run_every = getattr(self.schedule, "run_every", None)
        if type(self.schedule).__name__ == "schedule" and isinstance(run_every, dt.timedelta):
            return run_every.total_seconds()
        return None


# A Celery app (celery ships no type information).
CeleryApp = Any


def entries(app: CeleryApp) -> Tuple[Entry, ...]:
    from celery.schedules import maybe_schedule

    out: List[Entry] = []
    for name, spec in sorted((app.conf.beat_schedule or {}).items()):
        if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
            raise ScheduleError(f"beat_schedule entry {name!r} has no task name")
        try:
            schedule = maybe_schedule(spec["schedule"], spec.get("relative", False), app=app)
            schedule.remaining_estimate(schedule.now())
        except Exception as exc:
            raise ScheduleError(
                f"beat_schedule entry {name!r}: unusable schedule: {type(exc).__name__}: {exc}"
            ) from None
        out.append(Entry(name=name, task=spec["task"], schedule=schedule, description=describe(schedule)))
    return tuple(out)


def describe(schedule: Any) -> str:  # a celery.schedules object, or django-celery-beat's
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, dt.timedelta) and type(schedule).__name__ == "schedule":
        return f"every {run_every.total_seconds():g}s"
    text = " ".join(repr(schedule).split())  # django-celery-beat's crontab repr spans lines
    return text if len(text) <= 128 else text[:125] + "..."


def uses_database(app: CeleryApp) -> bool:
    """Whether the app's beat keeps its schedule in django-celery-beat's database."""
    return "django_celery_beat" in str(app.conf.beat_scheduler or "")


def database_entries(app: CeleryApp) -> Tuple[Entry, ...]:
    """The enabled periodic entries of django-celery-beat's tables, read only. One-off and
    clocked entries are left out: they have no period to be late against."""
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    from django.db import close_old_connections
    from django_celery_beat.models import PeriodicTask

    close_old_connections()  # a refresh every minute must not hold a dead connection
    rows = PeriodicTask.objects.filter(enabled=True, one_off=False, clocked__isnull=True).order_by("name")
    out = []
    for row in rows:
        schedule = row.schedule
        out.append(Entry(name=row.name, task=row.task, schedule=schedule, description=describe(schedule)))
    return tuple(out)


class ScheduleRefresher(Periodic):
    """Re-reads a database schedule every `interval` seconds into the store. A failed read
    keeps the last entries, is counted (celery_exporter_beat_schedule_read_errors_total) and
    logged once until it works again."""

    what = "the beat schedule"

    def __init__(
        self, load: Callable[[], Tuple[Entry, ...]], store: "Store", interval: float, stop_event: threading.Event
    ):
        super().__init__("beat-schedule", interval, stop_event)
        self.load, self.store = load, store

    def poll_once(self) -> None:
        try:
            entries_ = self.load()
        except Exception as exc:  # the user's database, Django or their models: anything can fail
            self.failed("read", f"{type(exc).__name__}: {exc}")
            return
        self.succeeded()
        self.store.schedule.set_entries(entries_)

    def count_error(self, reason: str) -> None:
        self.store.schedule.count_error()


def last_runs(rows: Sequence["TaskRow"], entries_: Tuple[Entry, ...], received_index: int) -> Dict[str, float]:
    """task name -> the latest last-received time over its label sets (snapshot rows)."""
    wanted = {e.task for e in entries_}
    out: Dict[str, float] = {}
    for row in rows:
        name = row.key[0]
        seen: Optional[float] = row.last_seen[received_index]
        if name in wanted and seen is not None and seen > out.get(name, 0.0):
            out[name] = seen
    return out
