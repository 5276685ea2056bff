"""The value types of the settings: how a flag's or an environment variable's text becomes a
value (click parameter types, so that a bad value is refused by click naming the flag).

Each type also accepts a value that is already converted (a number for a duration, a tuple
of bounds for buckets...): click passes defaults through the type, and the settings read
from a Celery app (`--app`) go through it too.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import click

# A value parsed from JSON: what `--transport-option` and `--broker-ssl-option` values hold.
JSONValue = Union[None, bool, int, float, str, List["JSONValue"], Dict[str, "JSONValue"]]

if TYPE_CHECKING:
    # click 8.4+ types ParamType by what convert() returns; older clicks (which we still
    # allow) cannot subscript it at run time, so the parameters exist for mypy only.
    _FloatParam = click.ParamType[float, Any]
    _TextParam = click.ParamType[str, Any]
    _ItemsParam = click.ParamType[Tuple[str, ...], Any]
    _KeyValueParam = click.ParamType[Tuple[str, JSONValue], Any]
    _BucketsParam = click.ParamType[Tuple[float, ...], Any]
else:
    _FloatParam = _TextParam = _ItemsParam = _KeyValueParam = _BucketsParam = click.ParamType

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The text a duration may be written as (for the Helm chart's schema, which checks it early).
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$|^\d+(\.\d+)?$"


class Duration(_FloatParam):
    """Seconds, as a number (`30`, `2.5`) or with units (`90s`, `15m`, `7d`, `1h30m`); more than 0."""

    name = "duration"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            try:
                seconds = float(text)
            except ValueError:
                parts = _DURATION.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    self.fail(f"{value!r} is not a duration (use seconds, or units like 90s, 15m, 7d)", param, ctx)
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds <= 0:
            self.fail(f"{value!r} must be greater than 0", param, ctx)
        return seconds


class KeyValue(_KeyValueParam):
    """`key=value`; the value is parsed as JSON when it is valid JSON (numbers, booleans,
    lists, objects), else taken as a string."""

    name = "key=value"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> Tuple[str, JSONValue]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"{value!r} is not key=value", param, ctx)
        parsed: JSONValue
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return key.strip(), parsed


class Buckets(_BucketsParam):
    """Comma-separated histogram bucket bounds in seconds, increasing."""

    name = "bounds"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            bounds = tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not bounds or any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            self.fail(f"{value!r} must be positive, strictly increasing numbers", param, ctx)
        return bounds


def buckets_text(bounds: Sequence[float]) -> str:
    """Bucket bounds as `--runtime-buckets` takes them."""
    return ",".join(map(str, bounds))


def buckets_summary(bounds: Sequence[float]) -> str:
    """A short description of default bounds, for the docs (the full list is in --help)."""

    def readable(seconds: float) -> str:
        return (
            f"{seconds * 1000:g} ms"
            if seconds < 1
            else f"{seconds / 3600:g} h"
            if seconds >= 3600
            else f"{seconds:g} s"
        )

    return f"{readable(bounds[0])} … {readable(bounds[-1])} ({len(bounds)} buckets)"


class Items(_ItemsParam):
    """Comma-separated names (`json,pickle`), blanks dropped. With `what`, at least one is
    needed, and the message says one of what."""

    name = "text"

    def __init__(self, what: Optional[str] = None) -> None:
        self.what = what

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[str, ...]:
        items = value if isinstance(value, tuple) else str(value).split(",")
        out = tuple(i.strip() for i in items if i.strip())
        if self.what and not out:
            self.fail(f"needs at least one {self.what}", param, ctx)
        return out


class BrokerUrl(_TextParam):
    """A broker URL whose scheme kombu knows (several separated by ';' for failover). Resolving
    the scheme needs no network."""

    name = "text"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from kombu.connection import Connection  # imported late: --help stays fast

        text = str(value)
        for part in text.split(";"):
            try:
                _ = Connection(part.strip()).transport_cls  # raises if the scheme is unknown
            except (KeyError, ValueError) as exc:
                self.fail(f"unsupported broker URL scheme: {exc}", param, ctx)
        return text
