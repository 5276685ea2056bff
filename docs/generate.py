#!/usr/bin/env python3
"""Rewrites the generated blocks of the documentation pages from the code's own declarations.

A generated block is the text between two marker lines in a Markdown page under docs/:

    <!-- BEGIN GENERATED: metrics -->
    ...
    <!-- END GENERATED: metrics -->

`BLOCKS` maps each block name to the function that returns its Markdown. To add a block,
write a function returning Markdown, add it to `BLOCKS` and put the two markers where the
page should show it.

    python docs/generate.py            rewrite every block in place
    python docs/generate.py --check    change nothing; exit 1 naming every stale block

A marker naming a block that `BLOCKS` does not know, a block that is not closed (or closed
under another name, or opened inside another), and a registered block that no page holds
are errors (exit 2), never skipped. tests/artifacts/test_docs.py runs `--check`.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Document the package of this working tree, whatever else is installed (and its alert rules).
sys.path[:0] = [str(ROOT), str(ROOT / "alerts")]

from celery.schedules import schedule  # noqa: E402
from rulegen import compat  # noqa: E402
from rulegen import docs as alert_docs  # noqa: E402

from celery_exporter.beat import Entry  # noqa: E402
from celery_exporter.clock import FakeClock  # noqa: E402
from celery_exporter.collector import CeleryCollector  # noqa: E402
from celery_exporter.exposition.model import HISTOGRAM, Family  # noqa: E402
from celery_exporter.settings import Settings  # noqa: E402
from celery_exporter.store import Store  # noqa: E402
from celery_exporter.webconfig import WebConfig  # noqa: E402

MARKER = re.compile(r"^<!-- (BEGIN|END) GENERATED: ([^ ]*) -->$")


# -- blocks ------------------------------------------------------------------------------


def exported_families() -> List[Family]:
    """Every family the collector builds, with its type, help text and label names as the
    collector declares them (names and help come from catalogue.py). Some families appear
    only once there is something to show: a beat schedule read from a database, a queue
    poll, an event reader, an event, --enable-events, a web config file. The store is given one of each, so
    that all appear."""
    clock = FakeClock()
    now = clock.now()
    entry = Entry("nightly", "reports.nightly", schedule(datetime.timedelta(days=1)), "every 1 day")
    web = WebConfig(path="web.yml", ssl_context=None, users={})
    settings = dataclasses.replace(
        Settings(), beat_entries=(entry,), beat_database_app="proj", web_config=web, enable_events=True
    )
    store = Store(settings)
    store.exporter.set_connected(True, now, reader="redis-hiredis")
    store.exporter.count_event("worker-heartbeat", now)
    store.queues.poll_succeeded({}, 0.01, now, method="redis-lists")
    return CeleryCollector(store, settings, clock).families()


def cell(text: str) -> str:
    """Text for a Markdown table cell: line breaks joined, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def metrics_table() -> str:
    rows = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for family in exported_families():
        kind = family.kind + (f" ({family.unit})" if family.kind == HISTOGRAM and family.unit else "")
        labels = ", ".join(family.label_names)
        rows.append(f"| `{family.exposed_name()}` | {kind} | {labels} | {cell(family.help)} |")
    return "\n".join(rows) + "\n"


def module_summary(path: Path) -> str:
    """The first paragraph of a module's docstring, on one line ("–" for none)."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        return "–"
    summary = " ".join(doc.split("\n\n")[0].split())
    return summary[:-1] + "." if summary.endswith(":") else summary  # a list followed


def modules_table() -> str:
    """Every module of the package with the first paragraph of its docstring; a package is
    listed as its folder, with its __init__.py's docstring."""
    package = ROOT / "celery_exporter"
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if path.name == "__init__.py":
            name = name[: -len("__init__.py")] or "__init__.py"
        rows.append(f"| `{name}` | {cell(module_summary(path))} |")
    return "\n".join(rows) + "\n"


def settings_table() -> str:
    """Every option, grouped as `--help` groups them, from the settings' declarations."""
    from celery_exporter.settings import reference_markdown

    return reference_markdown(level=2)


def incumbent_flags_table() -> str:
    """danihodovic/celery-exporter's flags and what each does here, from the declarations."""
    from celery_exporter.settings.reference import incumbent_markdown

    return incumbent_markdown()


def incumbent_metrics_table() -> str:
    """danihodovic/celery-exporter's metrics, their equivalents and compatibility rules."""
    return compat.metrics_table() + "\n"


BLOCKS: Dict[str, Callable[[], str]] = {
    "metrics": metrics_table,
    "incumbent-flags": incumbent_flags_table,
    "incumbent-metrics": incumbent_metrics_table,
    "settings": settings_table,
    "modules": modules_table,
    "alerts": alert_docs.alerts_table,
    "alert-config": alert_docs.config_table,
}


# -- the pages ---------------------------------------------------------------------------


class Block(NamedTuple):
    name: str
    start: int  # index of the first line after the BEGIN marker
    end: int  # index of the END marker


class GenerateError(Exception):
    pass


def find_blocks(lines: Sequence[str], where: str, known: Sequence[str]) -> List[Block]:
    """The generated blocks of a page's lines, checked: known names, each closed under its
    own name, none inside another."""
    found: List[Block] = []
    open_name, open_at = "", -1
    for index, line in enumerate(lines):
        match = MARKER.match(line.rstrip("\n"))
        if match is None:
            continue
        kind, name = match.groups()
        at = f"{where}:{index + 1}"
        if name not in known:
            raise GenerateError(f"{at}: unknown generated block {name!r} (known: {', '.join(sorted(known))})")
        if kind == "BEGIN":
            if open_name:
                raise GenerateError(f"{at}: block {name!r} opened inside block {open_name!r}")
            open_name, open_at = name, index
        else:
            if name != open_name:
                raise GenerateError(f"{at}: END of block {name!r} without its BEGIN")
            found.append(Block(name, open_at + 1, index))
            open_name = ""
    if open_name:
        raise GenerateError(f"{where}:{open_at + 1}: block {open_name!r} is never closed")
    return found


def render(text: str, where: str, blocks: Dict[str, Callable[[], str]], made: Dict[str, str]) -> Tuple[str, List[str]]:
    """The page with every generated block replaced by its function's Markdown, and the
    names of the blocks whose text that changed. `made` keeps each block's Markdown (one
    call per block however many pages hold it) and so records which blocks were seen."""
    lines = text.splitlines(keepends=True)
    out: List[str] = []
    stale: List[str] = []
    at = 0
    for block in find_blocks(lines, where, list(blocks)):
        if block.name not in made:
            made[block.name] = blocks[block.name]()
        if "".join(lines[block.start : block.end]) != made[block.name]:
            stale.append(block.name)
        out += lines[at : block.start]
        out.append(made[block.name])
        at = block.end
    out += lines[at:]
    return "".join(out), stale


def main(argv: Sequence[str], docs: Path = DOCS, blocks: Dict[str, Callable[[], str]] = BLOCKS) -> int:
    check = "--check" in argv
    unknown = [a for a in argv if a != "--check"]
    if unknown:
        print(f"usage: {Path(__file__).name} [--check] (unknown argument: {' '.join(unknown)})", file=sys.stderr)
        return 2
    made: Dict[str, str] = {}
    stale: List[str] = []
    rewrites: List[Tuple[Path, str]] = []
    try:
        for path in sorted(docs.rglob("*.md")):
            where = str(path.relative_to(docs.parent))
            new, names = render(path.read_text(), where, blocks, made)
            stale += [f"{where}: block {name!r}" for name in names]
            if names:
                rewrites.append((path, new))
        missing = sorted(set(blocks) - set(made))
        if missing:
            raise GenerateError(f"no page under {docs.name}/ holds the block(s) {', '.join(missing)}")
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if check:
        if stale:
            print("stale generated blocks (run python docs/generate.py): " + "; ".join(stale), file=sys.stderr)
            return 1
        return 0
    for path, new in rewrites:  # only once every page was read without an error
        path.write_text(new)
    for line in stale:
        print(f"rewrote {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
