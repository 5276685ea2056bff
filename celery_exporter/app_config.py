"""--app: read the broker settings from the user's own Celery app, so the exporter sees
events exactly as the workers publish them (same broker, transport options, SSL options,
serializer, exchange) and knows the declared queues before any task runs.

The app is found the way `celery -A` finds it (`proj`, `proj.celery`, `proj.celery:app`), with
the current directory on the import path. Django projects work as with `celery -A`: the app
module usually sets DJANGO_SETTINGS_MODULE itself, else set it in the environment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

if TYPE_CHECKING:
    from celery_exporter.beat import Entry


class AppError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class AppConfig:
    # Values of the exporter's options, keyed by option name (settings.OPTIONS), as a user
    # would give them: flags and environment variables the user gives win over these.
    options: Dict[str, object]
    # The static beat_schedule entries, or the app spec when its beat reads them from
    # django-celery-beat's database (re-read at run time).
    beat_entries: Tuple[Entry, ...] = ()
    beat_database_app: Optional[str] = None


def load(spec: str) -> AppConfig:
    """The exporter's configuration taken from the app's."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find(spec)
    except Exception as exc:  # ImportError, AttributeError, errors raised by the module itself
        raise AppError(f"cannot load the Celery app {spec!r}: {type(exc).__name__}: {exc}") from None
    if not hasattr(app, "conf") or not hasattr(app, "connection_for_read"):
        raise AppError(f"{spec!r} is not a Celery app (found {type(app).__name__})")
    try:
        options = _options(app.conf)
        from celery_exporter import beat

        if beat.uses_database(app):
            beat.database_entries(app)  # a database that cannot be read fails at start, clearly
            return AppConfig(options, beat_database_app=spec)
        return AppConfig(options, beat_entries=beat.entries(app))
    except Exception as exc:  # a settings module that fails while being read (Django, env...)
        raise AppError(f"cannot read the configuration of {spec!r}: {type(exc).__name__}: {exc}") from None


def _options(conf: Any) -> Dict[str, object]:  # a Celery app's conf
    out: Dict[str, object] = {}
    url = conf.broker_read_url or conf.broker_url
    if url:
        out["broker_url"] = url if isinstance(url, str) else ";".join(url)
    options = dict(conf.broker_transport_options or {})
    if options:
        out["transport_options"] = tuple(options.items())
    ssl = conf.broker_use_ssl
    if isinstance(ssl, dict) and ssl:
        out["broker_ssl_options"] = tuple(ssl.items())
    elif ssl:
        out["broker_ssl"] = True
    serializer = conf.event_serializer or "json"
    out["accept_content"] = ",".join(dict.fromkeys([serializer, "json"]))
    if conf.event_exchange:
        out["events_exchange"] = conf.event_exchange
    out["queues"] = _queues(conf)
    return out


def find(spec: str) -> Any:  # a Celery app: celery ships no type information
    """The app object for `spec`, found as `celery -A` finds it (imported once, then cached)."""
    from celery.app.utils import find_app

    return find_app(spec)


# An app handed over as an object rather than named: `celery -A proj exporter` on Celery
# releases whose command line turns -A into the app while parsing it (5.3 does), or
# app.start(["exporter"]). It is kept here, where find() reaches it by HANDED_OVER.
HANDED_OVER = f"{__name__}:handed_over"
handed_over: Any = None


def hand_over(app: Any) -> str:  # a Celery app
    """The name find() knows `app` by from now on."""
    global handed_over
    handed_over = app
    return HANDED_OVER


def display(spec: str) -> str:
    """`spec` for a log line: a handed-over app by its main module's name."""
    if spec == HANDED_OVER:
        return f"{getattr(handed_over, 'main', None) or '(unnamed)'} (given to celery -A)"
    return spec


def _queues(conf: Any) -> Tuple[str, ...]:  # a Celery app's conf
    names = [conf.task_default_queue or "celery"]
    declared = conf.task_queues or ()
    if isinstance(declared, dict):
        names += list(declared)
    else:
        names += [getattr(q, "name", q) for q in declared]
    return tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n))
