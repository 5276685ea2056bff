"""Scheduled-task freshness from the app's beat schedule (`--app`).

Celery events do not say which tasks beat sent, so an entry's "last run" is the last time a
worker received a task of the entry's task name (exporter clock). From the entry's schedule
the exporter derives its interval and when the next run is due: after the last run seen, or,
before any, after the exporter started. `time() - celery_beat_schedule_next_due_timestamp_seconds`
growing past a grace margin means the entry stopped firing (the shipped alert reads it).

Static `beat_schedule` entries only: a database scheduler (django-celery-beat) keeps its
entries elsewhere; for those, alert on celery_task_last_received_timestamp_seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Dict, List, Optional, Tuple


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
        # now + (time from now to the occurrence after `last`): to the millisecond, so that two
        # scrapes a moment apart agree (crontab and solar times are whole seconds anyway)
        return round(now.timestamp() + self.schedule.remaining_estimate(last).total_seconds(), 3)

    def interval(self, at: float) -> float:
        """Seconds between runs: constant for plain intervals; for crontab and solar entries,
        the gap between the two occurrences that follow `at`."""
        every = self._every()
        if every is not None:
            return every
        first = self.next_due(at)
        second = self.next_due(first)
        if second <= first:  # a schedule that counts `first` itself as due
            second = self.next_due(first + 1.0)
        return round(second - first)

    def _every(self) -> Optional[float]:
        run_every = getattr(self.schedule, "run_every", None)
        if type(self.schedule).__name__ == "schedule" and isinstance(run_every, dt.timedelta):
            return run_every.total_seconds()
        return None


def entries(app) -> Tuple[Entry, ...]:
    from celery.schedules import maybe_schedule

    out: List[Entry] = []
    for name, spec in sorted((app.conf.beat_schedule or {}).items()):
        if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
            raise ScheduleError(f"beat_schedule entry {name!r} has no task name")
        try:
            schedule = maybe_schedule(spec["schedule"], spec.get("relative", False), app=app)
            schedule.remaining_estimate(schedule.now())
        except Exception as exc:
            raise ScheduleError(f"beat_schedule entry {name!r}: unusable schedule: {type(exc).__name__}: {exc}") from None
        out.append(Entry(name=name, task=spec["task"], schedule=schedule, description=describe(schedule)))
    return tuple(out)


def describe(schedule) -> str:
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, dt.timedelta) and type(schedule).__name__ == "schedule":
        return f"every {run_every.total_seconds():g}s"
    text = repr(schedule)
    return text if len(text) <= 128 else text[:125] + "..."


def last_runs(tasks, entries_: Tuple[Entry, ...], received_index: int) -> Dict[str, float]:
    """task name -> the latest last-received time over its label sets (snapshot rows)."""
    wanted = {e.task for e in entries_}
    out: Dict[str, float] = {}
    for key, _, _, _, last_seen in tasks:
        name = key[0]
        seen: Optional[float] = last_seen[received_index]
        if name in wanted and seen is not None and seen > out.get(name, 0.0):
            out[name] = seen
    return out
