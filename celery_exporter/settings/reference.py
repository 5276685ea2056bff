"""The configuration reference of the docs, in Markdown, from the declarations: per docs
group a heading and a table of flag(s), environment variable(s), default and meaning; and
the table of danihodovic/celery-exporter's flags for docs/migration.md."""

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
        if not option.incumbent:  # the incumbent's flags: incumbent_markdown(), docs/migration.md
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


def incumbent_markdown() -> str:
    """docs/migration.md's table of danihodovic/celery-exporter's flags: each with what it
    does here (the same flag, accepted under its old name with a warning, or refused)."""
    from celery_exporter.settings.build import INCUMBENT_ENV_PREFIX, OPTIONS, incumbent_flags, replaced_by
    from celery_exporter.settings.model import INCUMBENT_SAME_FLAGS

    rows = ["| its flag | here | what happens |", "|---|---|---|"]
    for flag, differs in INCUMBENT_SAME_FLAGS.items():
        (same,) = [o for o in OPTIONS.values() if flag in o.flags and not o.incumbent]
        rows.append(f"| `{flag}` | `{same.long_flag}` | the same flag" + (f": {differs}" if differs else "") + " |")
    for option in incumbent_flags():
        ours = replaced_by(option)
        replacement = f"`{ours.long_flag}`" if ours else "none"
        if option.refused and option.accepts:
            accepted = ", ".join(f"`{v}`" for v in option.accepts)
            what = (
                f"{accepted} accepted with a warning ({option.deprecated}); any other value refused: {option.refused}"
            )
        elif option.refused:
            what = f"refused (exit 2): {option.refused}"
        else:
            what = f"accepted with a warning: {option.deprecated}"
        rows.append(f"| `{option.long_flag}` | {replacement} | {what} |")
    prefix = INCUMBENT_ENV_PREFIX
    rows.append(
        f"| its environment variables `{prefix}*` (`{prefix}BROKER_URL`...) | `CELERY_EXPORTER_*` | "
        "refused (exit 2), each naming the variable to set instead: none is read here |"
    )
    return "\n".join(r.replace("\n", " ") for r in rows) + "\n"
