"""The tables: a scenario's summary as text on stdout after its runs, and as Markdown from
results files (`run.py --markdown`). Columns: each build, the reference, and when two builds
ran, after / before (the ratio per repeat)."""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any, Callable, Dict, List, Optional

from harness.builds import DEFAULT_NAME, REFERENCE
from harness.figures import FIGURES
from harness.scenarios import Scenario
from harness.summary import HEADLINE, summarize

WIDTH = 46  # the text table's label column
NOISE = 0.05  # medians of two builds this far apart are taken as a difference, not noise
LABELS = {key: label for key, label, _ in FIGURES}


def fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return f"{int(v):,}"


def fmt_mmm(t: Optional[List[float]]) -> str:
    if t is None:
        return "-"
    lo, med, hi = t
    if lo == hi:
        return fmt(med)
    return f"{fmt(lo)} / {fmt(med)} / {fmt(hi)}"


def fmt_md(t: Optional[List[float]]) -> str:
    """A Markdown cell: median [min – max]."""
    if t is None:
        return "–"
    lo, med, hi = t
    return fmt(med) if lo == hi else f"{fmt(med)} [{fmt(lo)} – {fmt(hi)}]"


def consumer_columns(summary: dict) -> List[str]:
    """The builds, then the reference if it ran."""
    return list(summary["builds"]) + [n for n in (REFERENCE,) if n in summary]


def columns(summary: dict) -> List[str]:
    """The consumers' columns, then the comparison's when there is one."""
    comp = summary.get("comparison")
    return consumer_columns(summary) + ([f"{comp['after']} / {comp['before']}"] if comp else [])


def rows(summary: dict, cell: Callable[[Optional[List[float]]], str]) -> List[List[str]]:
    """[label, cell per column] for every figure that some consumer has."""
    names = consumer_columns(summary)
    comp = summary.get("comparison")
    out = []
    for key, label, _ in FIGURES:
        cells = [summary[n].get(key) for n in names]
        if all(c is None for c in cells):
            continue
        extra = [cell(comp["ratio_per_repeat"].get(key))] if comp else []
        out.append([label] + [cell(c) for c in cells] + extra)
    return out


def ratio_label(builds: List[str]) -> str:
    return f"CPU per event, {builds[0] if len(builds) == 1 else 'build'} / reference"


def headline_lines(
    summary: dict, cell: Callable[[Optional[List[float]]], str] = fmt_mmm, arrow: str = "->"
) -> List[str]:
    """Before vs after on the figures that decide: the medians, their ratio and the range of
    the per-repeat ratios, and a warning where after is worse than noise (medians more than
    NOISE apart, every one of these figures being lower-is-better) or lost events."""
    comp = summary.get("comparison")
    if not comp:
        return []
    before, after = summary[comp["before"]], summary[comp["after"]]
    out = []
    for key in HEADLINE:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        line = f"{LABELS[key]}: median {fmt(b[1] if b else None)} {arrow} {fmt(a[1] if a else None)}"
        ratio = comp["ratio_of_medians"].get(key)
        if ratio is not None:
            line += f" (x{fmt(ratio)}; per repeat {cell(comp['ratio_per_repeat'].get(key))})"
        if key == "lost" and a and a[2]:
            line += " LOST EVENTS"
        elif key != "lost" and ratio is not None and ratio > 1 + NOISE:
            line += f" WORSE by more than {NOISE:.0%}"
        out.append(line)
    return out


def whose(t: dict, several: bool) -> str:
    """(build) after a target when several builds were checked."""
    return f" ({t['consumer']})" if several and t.get("consumer") else ""


def print_table(
    scen: Scenario, summary: dict, targets: List[dict], repeats: int, errors: List[dict], out: IO[str] = sys.stdout
) -> None:
    def p(*a: object) -> None:
        print(*a, file=out)

    p("")
    p(f"== {scen.name} [broker: {scen.broker}]: {scen.summary}")
    p(f"   {scen.describe()}; {repeats} repeat(s); cells: min / median / max (one value when all equal)")
    for build, codes in summary.get("code", {}).items():
        if codes:
            p(f"   {build} code: " + ", ".join(f"{c['git_head']} (sources {c['source_sha1']})" for c in codes))
    p(f"   {'figure':{WIDTH}} " + " ".join(f"{k:>30}" for k in columns(summary)))
    for label, *cells in rows(summary, fmt_mmm):
        p(f"   {label:{WIDTH}} " + " ".join(f"{c:>30}" for c in cells))
    ratios = summary["cpu_ratio_over_reference"]
    if any(ratios.values()):
        p(f"   {ratio_label(summary['builds']):{WIDTH}} " + " ".join(f"{fmt_mmm(r):>30}" for r in ratios.values()))
    comp = summary.get("comparison")
    if comp:
        p(f"   before vs after: {comp['before']} -> {comp['after']}")
        for line in headline_lines(summary):
            p(f"     {line}")
    several = len({t.get("consumer") for t in targets}) > 1
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        p(f"   target {t['figure']} {t['target']}{whose(t, several)}: worst {fmt(t['worst'])} -> {verdict}")
    for e in errors:
        p(f"   ERROR in repeat {e['repeat']} ({e['consumer']}): {e['error']}")


def file_code(d: dict) -> Dict[str, List[dict]]:
    """Each build's code from a results file (before several builds: the exporter's)."""
    if "code" in d["summary"]:
        code: Dict[str, List[dict]] = d["summary"]["code"]
        return code
    return {DEFAULT_NAME: d["summary"].get("exporter_code", [])}


def markdown_one(path: str, d: dict) -> List[str]:
    s = summarize(d["runs"], d.get("compare"))  # recomputed, so figures added since the run show too
    scen = Scenario(**{k: v for k, v in d["parameters"].items() if k in Scenario.__dataclass_fields__})
    code = file_code(d)
    where = ", ".join(f"{b} at " + ", ".join(str(c["git_head"]) for c in code.get(b, [])) for b in code)
    out = [f"### {d['scenario']}{' (quick)' if d['quick'] else ''} [{d.get('broker', 'redis')}]\n"]
    out.append(
        f"{scen.describe()}; {d['repeats']} repeats; {where}; `{os.path.basename(path)}`. Cells: median [min – max].\n"
    )
    cols = columns(s)
    out.append("| figure | " + " | ".join(cols) + " |")
    out.append("|---|" + "---|" * len(cols))
    out.extend(f"| {label} | " + " | ".join(cells) + " |" for label, *cells in rows(s, fmt_md))
    ratios = s["cpu_ratio_over_reference"]
    if any(ratios.values()):
        cells = [fmt_md(r) for r in ratios.values()]
        out.append(f"| **{ratio_label(s['builds'])}** | " + " | ".join(cells) + " |" + " |" * (len(cols) - len(cells)))
    out.extend(markdown_comparison(s))
    several = len({t.get("consumer") for t in d["targets"]}) > 1
    for t in d["targets"]:
        verdict = "PASS" if t["pass"] else "FAIL"
        out.append(
            f"\nTarget `{t['figure']} {t['target']}`{whose(t, several)}: worst {fmt(t['worst'])} → **{verdict}**"
        )
    out.append("")
    return out


def markdown_comparison(s: dict) -> List[str]:
    lines = headline_lines(s, fmt_md, "→")
    if not lines:
        return []
    comp = s["comparison"]
    return [f"\nBefore vs after ({comp['before']} → {comp['after']}):\n"] + [f"- {line}" for line in lines]


def markdown(paths: List[str]) -> str:
    """Markdown tables (each build | reference; median, [min–max]) from results JSON files."""
    out: List[str] = []
    for path in paths:
        with open(path) as f:
            d: Dict[str, Any] = json.load(f)
        out.extend(markdown_one(path, d))
    return "\n".join(out)
