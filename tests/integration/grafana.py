"""A Grafana dashboard's panel queries as Grafana would send them to Prometheus: its template
variables resolved the way Grafana resolves them (each `label_values(selector, label)` asked
of the Prometheus in the dashboard's order, with the variables before it filled in), and
its built-in variables set for the dashboard's default time range. Used to measure how many
panels of a dashboard written for another exporter return data (tests/integration/
test_incumbent_compat.py, benchmarks/incumbent_dashboards.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)$", re.S)
_RANGE = re.compile(r"^now-(\d+[smhdwy])$")
# label values of the Prometheus a dashboard is read from: (selector, label) -> values
Series = Callable[[str, str], List[str]]


def panels(board: dict) -> Iterator[dict]:
    """Every panel, those in rows and collapsed rows included."""
    for panel in board.get("panels", []) + [p for row in board.get("rows", []) for p in row.get("panels", [])]:
        yield panel
        yield from panels(panel)


def targets(board: dict) -> List[Tuple[str, str]]:
    """(panel title / refId, expression) of every query of every panel."""
    out = []
    for panel in panels(board):
        for i, target in enumerate(panel.get("targets") or []):
            if target.get("expr"):
                out.append((f"{panel.get('title', '')} / {target.get('refId') or i}", target["expr"]))
    return out


def _regex_escape(value: str) -> str:
    # as Grafana's Prometheus data source escapes a value put into a regex matcher: a
    # backslash before each regex metacharacter, doubled inside the PromQL string
    return re.sub(r"([\\^$*+?.()|{}\[\]])", lambda m: "\\\\" + m.group(1), value)


def builtins(board: dict, rate_interval: str) -> Dict[str, str]:
    """Grafana's built-in variables for the dashboard's default time range: $__range is that
    range (`now-1d`: 1d); $__rate_interval and $__interval as Grafana sets them for the
    data source's scrape interval (given: it depends on the Prometheus)."""
    match = _RANGE.match(str(board.get("time", {}).get("from", "now-6h")))
    span = match.group(1) if match else "6h"
    return {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": span,
        "__range_s": str(_seconds(span)),
    }


def _seconds(span: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(span[:-1]) * units[span[-1]]


def expand(expr: str, variables: Dict[str, str]) -> str:
    """`$name`, `${name}` and `[[name]]` replaced (longest names first, so $job is not
    taken for a prefix of $jobs). Raises ValueError naming a variable left over."""
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        expr = expr.replace("${" + name + "}", value).replace("[[" + name + "]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![a-zA-Z0-9_])", lambda _m, v=value: v, expr)
    left = re.search(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*", expr)
    if left:
        raise ValueError(f"variable {left.group(0)} not set in {expr!r}")
    return expr


def variables(board: dict, series: Series, rate_interval: str) -> Dict[str, str]:
    """The dashboard's variables as Grafana sets them when it is opened with no saved choice:
    a variable that offers All (includeAll) is All, which Grafana sends as every value in a
    regex alternation (or its allValue); a multi-value variable without All has every value
    selected (a user looking at all their tasks); a single-value one takes the first value;
    no value at all is the empty string (a matcher `label=""` then matches series without
    the label, as in Grafana). Query variables are resolved in order, each with the ones
    before it filled in."""
    out = builtins(board, rate_interval)
    for var in board.get("templating", {}).get("list", []):
        name, kind = var["name"], var.get("type")
        if kind == "datasource":
            out[name] = "prometheus"
            continue
        if kind == "constant":
            out[name] = str(var.get("query", ""))
            continue
        if kind == "custom":
            values = [v.strip() for v in str(var.get("query", "")).split(",") if v.strip()]
        elif kind == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else str(query or var.get("definition", ""))
            match = _LABEL_VALUES.match(query.strip())
            if match is None:
                raise ValueError(f"variable ${name}: only label_values(selector, label) is understood: {query!r}")
            values = sorted(set(series(expand(match.group("selector").strip(), out), match.group("label"))))
        else:
            raise ValueError(f"variable ${name}: type {kind!r} not understood")
        if var.get("includeAll"):
            out[name] = var.get("allValue") or _alternation(values)
        elif var.get("multi"):
            out[name] = _alternation(values)
        else:
            out[name] = values[0] if values else ""
    return out


def _alternation(values: Sequence[str]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return _regex_escape(values[0])
    return "(" + "|".join(_regex_escape(v) for v in values) + ")"


def queries(board: dict, series: Series, rate_interval: str) -> Dict[str, str]:
    """{"<dashboard title> / <panel title> / <refId>": expression as Grafana sends it}."""
    values = variables(board, series, rate_interval)
    title = board.get("title", "")
    return {f"{title} / {key}": expand(expr, values) for key, expr in targets(board)}


def has_data(result: Sequence[dict]) -> bool:
    """A query's result draws something: one sample at least, and not every one NaN (a
    histogram_quantile over buckets that saw nothing, which Grafana shows as no data)."""
    for item in result:
        raw = item.get("value") or (item.get("values") or [[0, "NaN"]])[-1]
        if not math.isnan(float(raw[1])):
            return True
    return False


def load(path: Path) -> dict:
    board: dict = json.loads(path.read_text())
    return board
