"""The documentation's tables of the alerts and of the alert configuration (docs/alerts.md,
blocks written by docs/generate.py), from the same declarations as the rules."""

from __future__ import annotations

from typing import List

from . import config
from .rules import ALERTS, CONFIG

COMMON = ("enabled", "severity", "for")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def alerts_table() -> str:
    """Every alert: when it fires, its default severity and `for:`, its own keys and defaults;
    each alert's name links its runbook below the table."""
    rows = ["| alert | fires when | severity, `for:` | its own keys (defaults) |", "|---|---|---|---|"]
    for alert in ALERTS:
        params = {p.key: p for p in alert.params}
        own = [f"`{p.key}` {p.kind.show(p.default)}" for p in alert.params if p.key not in COMMON]
        rows.append(
            f"| [`{alert.name}`](#{alert.name.lower()}) | {_cell(alert.fires)} | "
            f"{params['severity'].default}, `{params['for'].default}` | {', '.join(own) or '–'} |"
        )
    return "\n".join(rows) + "\n"


def config_table() -> str:
    """Every key of the configuration with its kind, default and meaning; the keys every alert
    has once, as alerts.<alert>.<key>."""
    rows: List[str] = ["| key | kind | default | meaning |", "|---|---|---|---|"]
    first = ALERTS[0]
    for path, param in config.rows(CONFIG):
        if path[0] == "alerts":
            if path[2] not in COMMON:
                continue
            if path[1] != first.name:
                continue
            path = ("alerts", "<alert>", path[2])
            defaults = {p.default for a in ALERTS for p in a.params if p.key == path[2]}
            default = f"`{param.kind.show(param.default)}`" if len(defaults) == 1 else "as in the table above"
        else:
            default = f"`{param.kind.show(param.default)}`"
        rows.append(f"| `{'.'.join(path)}` | {param.kind.title} | {default} | {_cell(param.help)} |")
    rows.append(
        "| `alerts.<alert>.<key>` | | as in the table above | an alert's own thresholds: the last column of the "
        "table above |"
    )
    return "\n".join(rows) + "\n"
