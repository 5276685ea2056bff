"""The benchmark runner's arithmetic: builds named on the command line, summaries over the
repeats, the before vs after comparison, targets per build, and the Markdown of a results
file written before several builds existed. Pure functions on made-up runs: no broker, no
process."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from harness.builds import parse_builds, run_order  # noqa: E402
from harness.report import headline_lines, markdown_one  # noqa: E402
from harness.scenarios import SCENARIOS  # noqa: E402
from harness.summary import evaluate_targets, summarize  # noqa: E402


def run(consumer: str, repeat: int, cpu: float, rss: float, lost: int = 0, scrape_p99: float = 5.0) -> dict:
    """A run's result with the fields the figures read (the exporter's idle scrapes too)."""
    r = {
        "consumer": consumer,
        "broker": "redis",
        "repeat": repeat,
        "generator": {"total_events": 1000, "events_per_s": 1000.0, "messages": 800, "mean_batch": 1.3},
        "counted": 1000 - lost,
        "lost": lost,
        "consumer_events_per_s": 999.0,
        "lag_s": 0.001,
        "lag_polled_s": 0.05,
        "cpu_s": cpu / 100,
        "cpu_per_100k_s": cpu,
        "rss_idle_mib": 40.0,
        "peak_rss_after_load_mib": rss,
        "peak_rss_mib": rss,
        "subscription": {"max_output_buffer_mib": 0.0},
        "subscription_dropped": 0,
        "checks_failed": 0,
        "settle": {"first_polls_s": []},
    }
    if consumer != "reference":
        r["idle_scrape_ms"] = {"p50": 1.0, "p99": scrape_p99}
    return r


def test_a_plain_exporter_path_is_the_build_named_exporter_and_names_are_checked():
    builds = parse_builds(["/opt/a=b/bin/celery-exporter"])
    assert [(b.name, b.path) for b in builds.values()] == [("exporter", "/opt/a=b/bin/celery-exporter")]
    builds = parse_builds(["before=/tmp/before/bin/celery-exporter", "after=.venv/bin/celery-exporter"])
    assert [(b.name, b.path) for b in builds.values()] == [
        ("before", "/tmp/before/bin/celery-exporter"),
        ("after", ".venv/bin/celery-exporter"),
    ]
    with pytest.raises(ValueError, match="two builds named 'a'"):
        parse_builds(["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="'reference' cannot name a build"):
        parse_builds(["reference=/x"])


def test_one_build_keeps_the_summary_keys_of_the_results_before_several_builds():
    runs = [run("exporter", 1, 3.0, 60.0), run("reference", 1, 4.0, 40.0)]
    runs += [run("exporter", 2, 2.0, 62.0), run("reference", 2, 2.5, 41.0)]
    s = summarize(runs)
    assert s["builds"] == ["exporter"]
    assert s["cpu_ratio_per_repeat"] == [0.75, 0.8]
    assert s["cpu_ratio_exporter_over_reference"] == [0.75, 0.775, 0.8]
    assert s["exporter"]["peak_rss_mib"] == [60.0, 61.0, 62.0]
    assert s["reference"]["idle_scrape_p99_ms"] is None
    assert "comparison" not in s


def test_two_builds_are_compared_repeat_by_repeat_and_by_their_medians():
    runs = []
    for rep, (before, after, ref) in enumerate([(3.0, 2.7, 4.0), (2.0, 2.2, 2.0), (4.0, 3.0, 5.0)], start=1):
        runs += [run("before", rep, before, 60.0), run("after", rep, after, 66.0), run("reference", rep, ref, 40.0)]
    s = summarize(runs, ["before", "after"])
    assert s["builds"] == ["before", "after"]
    assert s["cpu_ratio_over_reference"] == {"before": [0.75, 0.8, 1.0], "after": [0.6, 0.675, 1.1]}
    comp = s["comparison"]
    assert (comp["before"], comp["after"]) == ("before", "after")
    assert comp["ratio_per_repeat"]["cpu_per_100k_s"] == [0.75, 0.9, 1.1]
    assert comp["ratio_of_medians"]["cpu_per_100k_s"] == 0.9  # 2.7 / 3.0
    assert comp["ratio_of_medians"]["peak_rss_mib"] == 1.1
    assert comp["ratio_per_repeat"]["lost"] is None  # 0 before: no ratio
    lines = headline_lines(s)
    assert "CPU s per 100k events: median 3 -> 2.70 (x0.900; per repeat 0.750 / 0.900 / 1.10)" in lines
    assert "peak RSS incl. idle scrapes, MiB: median 60 -> 66 (x1.10; per repeat 1.10) WORSE by more than 5%" in lines
    # the pair asked for, in that order, whatever order the consumers ran in
    assert summarize(runs, ["after", "before"])["comparison"]["ratio_of_medians"]["cpu_per_100k_s"] == 1.111


def test_targets_are_checked_on_each_builds_worst_repeat_and_a_build_without_runs_fails_them():
    scen = SCENARIOS["burst"]
    runs = [run("before", 1, 3.0, 60.0), run("after", 1, 3.0, 60.0, lost=2), run("before", 2, 3.0, 60.0)]
    targets = evaluate_targets(scen, runs, ["before", "after", "broken"])
    lost = {t["consumer"]: (t["worst"], t["pass"]) for t in targets if t["figure"] == "lost"}
    assert lost == {"before": (0, True), "after": (2, False), "broken": (None, False)}


def test_markdown_of_a_results_file_from_before_several_builds():
    runs = [run("exporter", 1, 3.0, 60.0), run("reference", 1, 4.0, 40.0)]
    runs += [run("exporter", 2, 2.0, 62.0), run("reference", 2, 2.5, 41.0)]
    scen = SCENARIOS["sanity"]
    d = {
        "scenario": "sanity",
        "broker": "redis",
        "quick": True,
        "repeats": 2,
        "parameters": {"name": scen.name, "summary": scen.summary, "duration": 3, "rate": 1000, "task_names": 10},
        "summary": {"exporter_code": [{"git_head": "abc1234", "source_sha1": "0123456789ab"}]},
        "targets": [{"figure": "lost", "target": "== 0", "worst": 0, "pass": True}],
        "runs": runs,
    }
    lines = markdown_one("/results/sanity-quick-20261201T000000.json", d)
    assert lines[0] == "### sanity (quick) [redis]\n"
    assert lines[1].endswith(
        "; 2 repeats; exporter at abc1234; `sanity-quick-20261201T000000.json`. Cells: median [min – max].\n"
    )
    assert lines[2:4] == ["| figure | exporter | reference |", "|---|---|---|"]
    assert "| CPU s per 100k events | 2.50 [2 – 3] | 3.25 [2.50 – 4] |" in lines
    assert "| **CPU per event, exporter / reference** | 0.775 [0.750 – 0.800] | |" in lines
    assert lines[-2:] == ["\nTarget `lost == 0`: worst 0 → **PASS**", ""]


def test_each_repeat_starts_one_consumer_further_along():
    consumers = ["before", "after", "reference"]
    orders = [run_order(consumers, rep) for rep in range(1, 5)]
    assert orders == [
        ["before", "after", "reference"],
        ["after", "reference", "before"],
        ["reference", "before", "after"],
        ["before", "after", "reference"],
    ]
    # over as many repeats as consumers, each runs in every position once
    for position in range(3):
        assert sorted(order[position] for order in orders[:3]) == sorted(consumers)
