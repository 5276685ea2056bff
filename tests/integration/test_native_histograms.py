"""Native histograms and exemplars in a real Prometheus (Debian's): one Prometheus with
`--enable-feature=native-histograms,exemplar-storage` (it asks for protobuf and keeps the
native histograms), one without native histograms (it scrapes OpenMetrics and keeps the
classic buckets), both scraping the same exporter, with its default flags, while a real
worker runs tasks of two names with runtimes from 10 ms to 0.6 s. Both evaluate the alert
rules' queue-wait SLO recording rules, which read either kind of histogram."""

from __future__ import annotations

import bisect
import math
import re
import time

import pytest

from celery_exporter import catalogue

from .promstack import Prometheus, dashboard_queries, rules_file
from .rig import wait_for

pytestmark = pytest.mark.integration

BOUNDS = list(catalogue.DEFAULT_RUNTIME_BUCKETS)


def bucket_index(value: float) -> int:
    return bisect.bisect_left(BOUNDS, value)


def values_by_name(result) -> dict:
    return {r["metric"].get("name"): float(r["value"][1]) for r in result}


def values_by_queue(result) -> dict:
    return {r["metric"].get("queue_name"): float(r["value"][1]) for r in result}


def test_native_histograms_and_exemplars_in_prometheus(make_rig, tmp_path, capsys):
    rig = make_rig("redis")
    exporter = rig.start_exporter(short_timings=False)
    rig.start_worker(concurrency=4, exporter=exporter)
    # the queue-wait SLO at 0.5 s: a bound of the classic buckets and of every native schema
    rules = rules_file(tmp_path, {"queueWaitSlo": {"threshold": 0.5}})
    native = Prometheus(
        tmp_path, exporter.port, rules, features=["native-histograms", "exemplar-storage"], name="native"
    )
    rig.procs.append(native.proc)
    classic = Prometheus(tmp_path, exporter.port, rules, features=["exemplar-storage"], name="classic")
    rig.procs.append(classic.proc)
    rig.prime(exporter)

    # one run of each first, so that both Prometheus hold the series before the workload:
    # increase() and rate() count only what happens after a series' first sample
    sent_ids = {rig.send("it.sleep", [0.01]).id, rig.send("it.succeed", [0]).id}

    def series_in_both():
        names = {r["metric"]["name"] for r in native.query("celery_task_runtime_seconds")}
        classic_names = {r["metric"]["name"] for r in classic.query("celery_task_runtime_seconds_count")}
        return {"it.sleep", "it.succeed"} <= names & classic_names

    wait_for(series_in_both, 30, interval=0.5, what="both Prometheus to hold the runtime series")

    durations = [0.01, 0.03, 0.06, 0.12, 0.2, 0.35, 0.6]
    for i in range(42):  # over about 6 s: several scrapes see the counts rise
        sent_ids.add(rig.send("it.sleep", [durations[i % len(durations)]]).id)
        sent_ids.add(rig.send("it.succeed", [i]).id)
        time.sleep(0.15)
    rig.truth.wait({("it.sleep", "celery", "succeeded"): 43, ("it.succeed", "celery", "succeeded"): 43}, 60)
    exporter.wait_for(
        lambda m: sum(m.select("celery_task_runtime_seconds_count", name="it.sleep").values()) == 43,
        15,
        what="the exporter to count every it.sleep run",
    )

    def both_scraped_the_final_counts():
        native_count = native.query("sum(histogram_count(celery_task_runtime_seconds{name='it.sleep'}))")
        classic_count = classic.query("sum(celery_task_runtime_seconds_count{name='it.sleep'})")
        return [float(r["value"][1]) for r in native_count + classic_count] == [43.0, 43.0]

    wait_for(both_scraped_the_final_counts, 15, interval=0.5, what="both Prometheus to scrape the final counts")
    workload_end = time.time()

    # 1. histogram_count over the native histogram: one value per task name
    counts: dict = {}

    def native_counts():
        counts.update(
            values_by_name(native.query("sum by (name) (histogram_count(increase(celery_task_runtime_seconds[1m])))"))
        )
        return counts.get("it.sleep", 0) >= 40 and counts.get("it.succeed", 0) >= 40

    wait_for(
        native_counts,
        30,
        interval=1,
        what="native histogram counts per task name",
        describe=lambda: (
            f"{counts}; targets: {native.api('targets')['activeTargets']}; "
            f"raw: {native.query('celery_task_runtime_seconds')}"
        ),
    )
    rates = values_by_name(native.query("sum by (name) (histogram_count(rate(celery_task_runtime_seconds[1m])))"))
    assert rates.get("it.sleep", 0) > 0 and rates.get("it.succeed", 0) > 0, rates
    # native only: this Prometheus stored no classic bucket series for it
    assert native.query("celery_task_runtime_seconds_bucket") == []
    # 1b. counters scraped as protobuf keep their _total name, as in the text formats: the
    #     rules and dashboards query them by it
    succeeded = "sum(celery_task_succeeded_total{name='it.sleep'})"
    assert [float(r["value"][1]) for r in native.query(succeeded) + classic.query(succeeded)] == [43.0, 43.0]
    assert native.query("celery_task_succeeded") == []

    # 2. p90 of it.sleep: native and classic agree within one classic bucket (both after the
    #    last scrape of the final state: the work is done, the histograms stand still)
    native_q = "histogram_quantile(0.9, sum(increase(celery_task_runtime_seconds{name='it.sleep'}[2m])))"
    classic_q = (
        "histogram_quantile(0.9, sum by (le) (increase(celery_task_runtime_seconds_bucket{name='it.sleep'}[2m])))"
    )
    found: dict = {}

    def quantiles():
        for key, prom, expr in (("native", native, native_q), ("classic", classic, classic_q)):
            result = prom.query(expr)
            if result:
                found[key] = float(result[0]["value"][1])
        return len(found) == 2

    wait_for(quantiles, 30, interval=1, what="both p90s", describe=lambda: str(found))
    # the true p90 of the runtimes sent: 0.6 s (6 of 42 at 0.6 s, 6 at 0.35 s)
    assert abs(bucket_index(found["native"]) - bucket_index(found["classic"])) <= 1, found
    assert 0.3 <= found["native"] <= 0.75, found

    # 3. the dashboards' latency panels (native `or` classic) draw from the native histograms
    #    here: this Prometheus has no _bucket series. Evaluated at the end of the workload,
    #    so their rate windows hold it.
    latency = {
        key: expr
        for key, expr in dashboard_queries().items()
        if re.search(r"celery_task_(runtime|queue_wait|prefetch_wait)_seconds", expr)
    }
    assert len(latency) >= 10, latency
    for key, expr in latency.items():
        result = native.api("query", query=expr, time=workload_end)["result"]
        # (NaN where a label set saw nothing in the window: it.prime)
        values = [v for r in result if math.isfinite(v := float(r["value"][1]))]
        assert values and all(v >= 0 for v in values), (key, expr, result)

    # 3b. the queue-wait SLO's recording rules read the native histogram here, the classic one
    #     there, and agree: the tasks that started, and the part that waited over 0.5 s
    recorded = {}
    for key, prom in (("native", native), ("classic", classic)):
        tasks = prom.api("query", query="celery:queue_wait_tasks:rate5m", time=workload_end)["result"]
        slow = prom.api("query", query="celery:queue_wait_slow:ratio_rate5m", time=workload_end)["result"]
        recorded[key] = (values_by_queue(tasks), values_by_queue(slow))
    (native_tasks, native_slow), (classic_tasks, classic_slow) = recorded["native"], recorded["classic"]
    assert native_tasks["celery"] > 0 and abs(native_tasks["celery"] / classic_tasks["celery"] - 1) < 0.1, recorded
    assert 0 <= native_slow["celery"] <= 1 and abs(native_slow["celery"] - classic_slow["celery"]) < 0.05, recorded
    slo_panels = {k: e for k, e in dashboard_queries().items() if "celery:queue_wait_slow" in e}
    assert len(slo_panels) >= 2, slo_panels
    for key, expr in slo_panels.items():
        assert native.api("query", query=expr, time=workload_end)["result"], (key, expr)

    # 4. exemplars: the task ids they carry are tasks this test sent
    def exemplar_ids(prom: Prometheus, query: str) -> set:
        end = time.time() + 60
        data = prom.api("query_exemplars", query=query, start=end - 600, end=end)
        return {
            e["labels"].get("task_id")
            for series in data
            if series["seriesLabels"].get("name") != "it.prime"  # sent by rig.prime
            for e in series["exemplars"]
        }

    seen = {}

    def have_exemplars():
        seen["native"] = exemplar_ids(native, "celery_task_runtime_seconds")
        seen["classic"] = exemplar_ids(classic, "celery_task_runtime_seconds_bucket")
        return seen["native"] and seen["classic"]

    wait_for(have_exemplars, 30, interval=1, what="exemplars in both", describe=lambda: str(seen))
    for key, ids in seen.items():
        assert ids <= sent_ids, (key, ids - sent_ids)

    # 5. head series of the same workload: protobuf (native) vs text (classic)
    heads = {
        key: prom.api("status/tsdb")["headStats"]["numSeries"]
        for key, prom in (("native", native), ("classic", classic))
    }
    selector = '{__name__=~"celery_task_(runtime|queue_wait|prefetch_wait)_seconds.*"}'
    histogram_series = {
        key: int(float(prom.query(f"count({selector})")[0]["value"][1]))
        for key, prom in (("native", native), ("classic", classic))
    }
    with capsys.disabled():
        print(
            f"\nhead series: protobuf scrape {heads['native']}, text scrape {heads['classic']}; "
            f"task histogram series {histogram_series['native']} vs {histogram_series['classic']}"
        )
    assert heads["native"] < heads["classic"]
    assert histogram_series["native"] * 5 <= histogram_series["classic"], histogram_series
