"""The configuration reference of the docs, in Markdown, from the declarations: per docs
group a heading and a table of flag(s), environment variable(s), default and meaning."""

from __future__ import annotations

from typing import Dict, List

from celery_exporter.settings.declaration import Group, Option, options
from celery_exporter.settings.model import Settings
from celery_exporter.settings.params import Items, KeyValue


def reference_markdown(level: int = 3, settings_class: type = Settings) -> str:
    """Markdown: for each docs group that has options, a heading of `level` (3: `###`) and a
    table with a row per option, in declaration order."""
    rows: Dict[Group, List[str]] = {}
    for option in options(settings_class):
        rows.setdefault(option.group, []).append(_row(option))
    parts = []
    for group in Group:  # the enum's order is the docs' order
        if group in rows:
            table = ["| flag | environment variable | default | meaning |", "|---|---|---|---|", *rows[group]]
            parts.append(f"{'#' * level} {group.value}\n\n" + "\n".join(table) + "\n")
    return "\n".join(parts)


def _row(option: Option) -> str:
    cells = [_flags(option), _env(option), default_text(option), option.doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _flags(option: Option) -> str:
    if option.is_flag:
        return " / ".join(f"`{f}`" for f in option.flags[0].split("/"))
    shorts = [f for f in option.flags if not f.startswith("--")]
    longs = [f for f in option.flags if f.startswith("--")]
    metavar = " KEY=VALUE" if isinstance(option.type, KeyValue) else ""
    text = ", ".join(f"`{f}`" for f in shorts + [longs[0] + metavar])
    if len(longs) > 1:
        text += " (alias " + ", ".join(f"`{f}`" for f in longs[1:]) + ")"
    return text


def _env(option: Option) -> str:
    text = ", then ".join(f"`{v}`" for v in option.env)
    if isinstance(option.type, KeyValue) and option.multiple:
        text += " (space-separated `key=value` pairs)"
    elif isinstance(option.type, Items) and option.multiple:
        text += " (space- or comma-separated)"
    elif option.multiple:
        text += " (space-separated)"
    return text


def default_text(option: Option, code: bool = True) -> str:
    """The option's default as the docs show it (a value in backquotes when `code`)."""
    if option.doc_default:
        return option.doc_default
    if option.default is None or option.default == ():
        return "none"
    if isinstance(option.default, bool):
        return "on" if option.default else "off"
    return f"`{option.default}`" if code else str(option.default)
