"""A scenario's runs summed up: each consumer's figures over the repeats (min, median,
max), each build's CPU per event over the reference's of the same repeat, two builds side by
side (before vs after: the ratio per repeat), and the targets on each build's worst repeat."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.builds import DEFAULT_NAME, REFERENCE
from harness.figures import FIGURES, GETTERS, mmm
from harness.scenarios import Scenario

# the figures the before/after verdict reads: no worse than noise, and nothing lost
HEADLINE = ("lost", "cpu_per_100k_s", "load_scrape_p99_ms", "idle_scrape_p99_ms", "peak_rss_mib")


def consumers_of(runs: List[dict]) -> List[str]:
    """The consumers in the order they first ran, the reference last."""
    names: List[str] = []
    for r in runs:
        if r["consumer"] not in names:
            names.append(r["consumer"])
    return [n for n in names if n != REFERENCE] + [n for n in names if n == REFERENCE]


def builds_of(runs: List[dict]) -> List[str]:
    return [n for n in consumers_of(runs) if n != REFERENCE]


def by_repeat(runs: List[dict], name: str, key: str) -> Dict[int, Any]:
    """One consumer's figure per repeat."""
    get = GETTERS[key]
    return {r["repeat"]: get(r) for r in runs if r["consumer"] == name and "error" not in r}


def ratios_per_repeat(runs: List[dict], over: str, under: str, key: str, nonzero: bool = False) -> List[float]:
    """over / under of one figure, repeat by repeat, where both have it and under is not 0
    (with `nonzero`, over neither)."""
    top, bottom = by_repeat(runs, over, key), by_repeat(runs, under, key)
    return [
        round(top[rep] / bottom[rep], 3)
        for rep in sorted(bottom)
        if rep in top and top[rep] is not None and bottom[rep] and (top[rep] or not nonzero)
    ]


def comparison(runs: List[dict], before: str, after: str) -> dict:
    """after / before per figure: the ratio of each repeat (min, median, max), and of the medians."""
    per_repeat: Dict[str, Optional[List[float]]] = {}
    of_medians: Dict[str, Optional[float]] = {}
    for key, _, _ in FIGURES:
        per_repeat[key] = mmm(list(ratios_per_repeat(runs, after, before, key)))
        b, a = mmm(list(by_repeat(runs, before, key).values())), mmm(list(by_repeat(runs, after, key).values()))
        of_medians[key] = round(a[1] / b[1], 3) if a and b and b[1] else None
    return {"before": before, "after": after, "ratio_per_repeat": per_repeat, "ratio_of_medians": of_medians}


def compared_pair(builds: Sequence[str], wanted: Optional[Sequence[str]]) -> Optional[Tuple[str, str]]:
    """(before, after): the pair asked for if both ran, else the first two builds, else None."""
    if wanted and len(wanted) == 2 and all(b in builds for b in wanted):
        return wanted[0], wanted[1]
    return (builds[0], builds[1]) if len(builds) >= 2 else None


def summarize(runs: List[dict], compare: Optional[Sequence[str]] = None) -> dict:
    out: Dict[str, Any] = {}
    for name in consumers_of(runs):
        rs = [r for r in runs if r["consumer"] == name and "error" not in r]
        out[name] = {key: mmm([get(r) for r in rs]) for key, _, get in FIGURES}
    builds = builds_of(runs)
    ratios = {b: ratios_per_repeat(runs, b, REFERENCE, "cpu_per_100k_s", nonzero=True) for b in builds}
    out["builds"] = builds
    out["cpu_ratio_over_reference"] = {b: mmm(list(ratios[b])) for b in builds}
    out["cpu_ratio_per_repeat_by_build"] = ratios
    if DEFAULT_NAME in builds:  # the keys of the results before several builds
        out["cpu_ratio_exporter_over_reference"] = mmm(list(ratios[DEFAULT_NAME]))
        out["cpu_ratio_per_repeat"] = ratios[DEFAULT_NAME]
    pair = compared_pair(builds, compare)
    if pair:
        out["comparison"] = comparison(runs, *pair)
    return out


def code_versions(runs: List[dict]) -> Dict[str, List[Tuple[Optional[str], Optional[str]]]]:
    """Each build's (git HEAD, source hash) over its runs: more than one means its code
    changed within the scenario."""
    return {
        b: sorted({(r["code"]["git_head"], r["code"]["source_sha1"]) for r in runs if r["consumer"] == b}, key=str)
        for b in builds_of(runs)
    }


def evaluate_targets(scen: Scenario, runs: List[dict], builds: Sequence[str]) -> List[dict]:
    """Each target is checked on each build's worst repeat (a build without a run fails them)."""
    out = []
    for build in builds:
        rs = [r for r in runs if r["consumer"] == build and "error" not in r]
        for key, op, bound in scen.targets:
            out.append(target_verdict(key, op, bound, [GETTERS[key](r) for r in rs], build))
    return out


def target_verdict(key: str, op: str, bound: float, vals: List[Any], build: str) -> dict:
    worst = None if not vals or any(v is None for v in vals) else max(vals)
    ok = worst is not None and {"==": worst == bound, "<": worst < bound, "<=": worst <= bound}[op]
    return {"figure": key, "target": f"{op} {bound:g}", "consumer": build, "worst": worst, "pass": ok}
