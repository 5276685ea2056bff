"""Benchmark runner: the exporter against a no-op EventReceiver, side by side, same run.

For each scenario and repeat, and for each consumer in turn (each exporter build and the
reference consumer, one at a time; each repeat starts one further along their order), it
  1. starts a private redis-server on a free port (pinned to the generator's core), or for
     the rmq-* scenarios creates a fresh vhost on the local RabbitMQ (deleted at the end);
  2. starts the consumer pinned to its own core (`taskset -c 0`) and waits until it is
     subscribed (exporter: /-/ready answers 200; reference: its readiness line; and for
     both, a client with psub=1 in Redis' CLIENT LIST, or on RabbitMQ a queue bound to
     the celeryev exchange with a consumer in `rabbitmqctl list_queues`);
  3. starts the load generator(s) pinned to the other core and waits for them;
  4. waits until the consumer's event count reaches what was published (or stops moving),
     then reads the figures: events lost, lag, CPU per 100k events, peak RSS, series,
     subscription kept, scrape latency (idle, and under load from a scraper thread).

Results: a table on stdout (min / median / max over the repeats, each build | reference,
and after / before when two builds ran) and benchmarks/results/<scenario>-<timestamp>.json
with every raw figure and machine info. The parts live in harness/ (see its __init__).

    python benchmarks/run.py --scenario all --quick          # smoke run, ~10x smaller
    python benchmarks/run.py --scenario sustained --repeats 3
    python benchmarks/run.py --scenario rabbitmq --quick     # the RabbitMQ scenarios only
    python benchmarks/run.py --exporter before=/tmp/before/.venv/bin/celery-exporter \\
        --exporter after=.venv/bin/celery-exporter          # two builds beside the reference
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from harness.brokers import pin_rabbitmq, unpin
from harness.builds import REFERENCE, Build, parse_builds, run_order
from harness.machine import machine_info
from harness.procs import HERE
from harness.report import fmt, markdown, print_table
from harness.scenarios import GROUPS, ORDER, SCENARIOS, Scenario
from harness.summary import code_versions, evaluate_targets, summarize
from harness.trial import run_one


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="scenarios (groups: all, redis, rabbitmq):\n"
        + "\n".join(f"  {n:17} {SCENARIOS[n].summary}" for n in ORDER),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        "-s",
        action="append",
        choices=ORDER + list(GROUPS),
        help="scenario to run (repeatable); 'all' runs them all in order, 'redis' / 'rabbitmq' "
        "those on one broker (default: all)",
    )
    p.add_argument("--repeats", "-r", type=int, default=3, help="repeats per scenario (default 3)")
    p.add_argument("--quick", action="store_true", help="~10x shorter durations and counts: a smoke run")
    p.add_argument(
        "--consumers",
        default=None,
        help="comma-separated, in run order: build names (see --exporter) and 'reference' "
        "(default: every build in --exporter order, then reference)",
    )
    p.add_argument(
        "--generators",
        type=int,
        default=1,
        help="generator processes (each gets 1/K of the rate, tasks and workers; default 1)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.005,
        help="generator: workers' task.multi buffer flush interval, s (default 0.005)",
    )
    p.add_argument(
        "--no-load-scrapes",
        action="store_true",
        help="no scraper during the load in any scenario (its targets on those scrapes are left out): "
        "the CPU per event without the cost of scraping every 100 ms",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--consumer-core", type=int, default=0)
    p.add_argument(
        "--generator-core",
        type=int,
        default=1,
        help="core for the generator(s), redis-server and this runner (default 1)",
    )
    p.add_argument(
        "--exporter",
        action="append",
        metavar="[NAME=]PATH",
        help="an exporter build's console script (or a wrapper of it); repeatable, NAME=PATH names "
        "each build (a plain PATH is named 'exporter'; default: the one next to this Python)",
    )
    p.add_argument(
        "--compare",
        metavar="BEFORE,AFTER",
        help="the two builds of the before vs after comparison (default: the first two --exporter builds)",
    )
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument(
        "--rabbitmq-url",
        default="amqp://guest:guest@127.0.0.1:5672",
        help="RabbitMQ to use for the rmq-* scenarios, without vhost: each run gets a fresh one "
        "(default: amqp://guest:guest@127.0.0.1:5672)",
    )
    p.add_argument(
        "--rabbitmqctl",
        default=shutil.which("rabbitmqctl") or "rabbitmqctl",
        help="rabbitmqctl of that (local) broker: vhosts, readiness, queue sampling",
    )
    p.add_argument(
        "--no-pin-rabbitmq",
        dest="pin_rabbitmq",
        action="store_false",
        help="leave RabbitMQ's beam.smp on every core (by default its threads are moved to the "
        "generator's core for the run, as redis-server is, and moved back after)",
    )
    p.add_argument(
        "--rabbitmq-sample-interval",
        type=float,
        default=1.0,
        help="seconds between rabbitmqctl list_queues samples during the load (each costs ~0.4 CPU s "
        "on the generator core; default 1)",
    )
    p.add_argument(
        "--py-spy",
        nargs="?",
        const=shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
        default=None,
        metavar="PATH",
        help="profile the exporter during the load with py-spy (raw stacks saved beside the results)",
    )
    p.add_argument("--poll-interval", type=float, default=0.1, help="count polling while settling, s")
    p.add_argument(
        "--settle-quiet", type=float, default=3.0, help="stop waiting once the count has not moved for this long, s"
    )
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-save", action="store_true", help="do not write the JSON results")
    p.add_argument("--keep-logs", action="store_true", help="keep the per-run logs (printed path)")
    p.add_argument(
        "--markdown", nargs="+", metavar="JSON", help="print Markdown tables from results files instead of running"
    )
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolves the scenarios, builds, consumers and comparison; errors out on bad ones."""
    names = args.scenario or ["all"]
    wanted = {m for n in names for m in GROUPS.get(n, [n])}
    args.scenarios = [n for n in ORDER if n in wanted]
    try:
        args.builds = parse_builds(args.exporter)
    except ValueError as exc:
        p.error(str(exc))
    args.consumers = consumers(p, args.consumers, list(args.builds))
    args.compare = compared(p, args.compare, [b for b in args.builds if b in args.consumers])
    cores = os.cpu_count()
    if cores and max(args.consumer_core, args.generator_core) >= cores:
        p.error("core numbers beyond this machine's cores")


def consumers(p: argparse.ArgumentParser, value: Optional[str], builds: List[str]) -> List[str]:
    """--consumers: build names and the reference, in run order (default: every build, then the reference)."""
    names = [c.strip() for c in (value or ",".join([*builds, REFERENCE])).split(",") if c.strip()]
    for c in names:
        if c != REFERENCE and c not in builds:
            p.error(f"unknown consumer {c!r}")
    return names


def compared(p: argparse.ArgumentParser, value: Optional[str], tested: List[str]) -> Optional[List[str]]:
    """--compare BEFORE,AFTER, two of the builds that run (default: the first two, in --exporter order)."""
    if not value:
        return tested[:2] if len(tested) >= 2 else None
    pair = [c.strip() for c in value.split(",")]
    if len(pair) != 2 or any(c not in tested for c in pair):
        p.error("--compare takes two of the builds that run, BEFORE,AFTER")
    return pair


def tested_builds(args: argparse.Namespace) -> Dict[str, Build]:
    """The builds this session runs, located (their interpreter and package)."""
    builds: Dict[str, Build] = {name: b for name, b in args.builds.items() if name in args.consumers}
    for b in builds.values():
        b.locate()
    return builds


def preflight(args: argparse.Namespace, builds: Dict[str, Build]) -> Optional[str]:
    """Why the session cannot start, or None."""
    for b in builds.values():
        if not os.path.exists(b.path):
            option = "--exporter" if b.name == "exporter" else f"--exporter {b.name}=PATH"
            return f"exporter not found at {b.path} (use {option})"
    if any(SCENARIOS[n].broker == "rabbitmq" for n in args.scenarios) and not shutil.which(args.rabbitmqctl):
        return f"rabbitmqctl not found at {args.rabbitmqctl} (use --rabbitmqctl)"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    # the runner (scrapers, pollers, parsing) stays off the consumer's core
    os.sched_setaffinity(0, {args.generator_core})
    builds = tested_builds(args)
    problem = preflight(args, builds)
    if problem:
        print(f"run.py: {problem}", file=sys.stderr)
        return 2
    # on SIGTERM unwind like on Ctrl-C, so that every run's finally stops its processes and
    # deletes its RabbitMQ vhost
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.makedirs(args.results_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="celery-exporter-bench-")
    brokers = sorted({SCENARIOS[n].broker for n in args.scenarios})
    info = machine_info(args, brokers, builds)
    print_header(args, info, brokers, builds, workdir)
    pinned: Dict[int, Set[int]] = {}
    if "rabbitmq" in brokers:
        pinned = place_rabbitmq(args, info)
    if args.py_spy:
        print(
            "# py-spy samples the exporter during the load: its figures in this run are perturbed "
            "(slower, more lag); use them for the profile only"
        )
    try:
        return run_scenarios(args, info, workdir, builds)
    finally:
        unpin(pinned)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


def print_header(
    args: argparse.Namespace, info: dict, brokers: List[str], builds: Dict[str, Build], workdir: str
) -> None:
    print(
        f"# {info['cpu_model']}, {info['cores']} cores, Python {info['python']}, celery {info['celery']}, "
        f"kombu {info['kombu']}, redis-py {info['redis_py']}, {info['redis_server']}"
        + (f", RabbitMQ {info['rabbitmq_server']}, py-amqp {info['amqp_py']}" if "rabbitmq" in brokers else "")
    )
    print(
        f"# consumer on core {args.consumer_core}; generator, redis-server and runner on core "
        f"{args.generator_core}; load average at start {info['loadavg_at_start']}; logs in {workdir}"
    )
    if list(builds) != ["exporter"]:
        for b in builds.values():
            where = (
                f"celery_exporter from {b.package_dir}" if b.package_dir else "its code unknown (not a console script)"
            )
            print(f"# build {b.name}: {b.path}, {where}")


def place_rabbitmq(args: argparse.Namespace, info: dict) -> Dict[int, Set[int]]:
    """Moves RabbitMQ's beam.smp to the generator's core unless --no-pin-rabbitmq; says where it is."""
    pinned: Dict[int, Set[int]] = {}
    where = "not pinned (it runs on either core, its share of the consumer core shows as other processes')"
    if args.pin_rabbitmq:
        pinned, why = pin_rabbitmq(args.generator_core)
        where = f"pinned to core {args.generator_core} with the generator" if pinned else f"not pinned ({why})"
    info["rabbitmq_pinned_to_core"] = args.generator_core if pinned else None
    print(
        f"# RabbitMQ: the shared broker at {args.rabbitmq_url}, a fresh vhost per run; its beam.smp is "
        f"{where}; queue sampled with rabbitmqctl every {args.rabbitmq_sample_interval:g} s on core "
        f"{args.generator_core}"
    )
    return pinned


def run_repeats(
    args: argparse.Namespace, scen: Scenario, workdir: str, builds: Dict[str, Build]
) -> Tuple[List[dict], List[dict]]:
    """Every repeat, each consumer in turn: the runs, and the errors (recorded, then on to the next run)."""
    runs, errors = [], []
    for rep in range(1, args.repeats + 1):
        for name in run_order(args.consumers, rep):
            t0 = time.monotonic()
            try:
                res = run_one(args, scen, name, rep, workdir, builds)
                runs.append(res)
                print(
                    f"  {scen.name} [{scen.broker}] r{rep} {name:9}: published {res['generator']['total_events']:,} "
                    f"({res['generator']['events_per_s']:,.0f}/s), counted {res['counted']:,}, "
                    f"lost {res['lost']}, lag {fmt(res['lag_s'])} s, CPU {fmt(res['cpu_per_100k_s'])} s/100k, "
                    f"peak RSS {fmt(res['peak_rss_mib'])} MiB, checks failed {res['checks_failed']} "
                    f"[{time.monotonic() - t0:.0f} s]",
                    flush=True,
                )
            except Exception as exc:  # record and go on with the next run
                err = {"consumer": name, "repeat": rep, "error": f"{type(exc).__name__}: {exc}"}
                errors.append(err)
                print(f"  {scen.name} r{rep} {name}: ERROR {err['error']}", flush=True)
    return runs, errors


def scenario_summary(args: argparse.Namespace, runs: List[dict]) -> dict:
    """The summary over the repeats, with each build's code (warning when it changed)."""
    summary = summarize(runs, args.compare)
    versions = code_versions(runs)
    for name, seen in versions.items():
        if len(seen) > 1:
            who = "the exporter's code" if name == "exporter" else f"the code of build {name}"
            print(f"   WARNING: {who} changed during this scenario: {seen}")
    summary["code"] = {name: [{"git_head": g, "source_sha1": h} for g, h in seen] for name, seen in versions.items()}
    if "exporter" in versions:  # the key of the results before several builds
        summary["exporter_code"] = summary["code"]["exporter"]
    return summary


def save(args: argparse.Namespace, scen: Scenario, stamp: str, record: Dict[str, Any]) -> None:
    suffix = ("-quick" if args.quick else "") + ("-pyspy" if args.py_spy else "")
    suffix += "-noscrape" if args.no_load_scrapes else ""
    path = os.path.join(args.results_dir, f"{scen.name}{suffix}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"   results: {os.path.relpath(path, os.getcwd())}")


def run_scenarios(args: argparse.Namespace, info: dict, workdir: str, builds: Dict[str, Build]) -> int:
    failed_targets = 0
    tested = [c for c in args.consumers if c != REFERENCE]
    for name in args.scenarios:
        scen = SCENARIOS[name].scaled(args.quick)
        if args.no_load_scrapes:
            kept = tuple(t for t in scen.targets if not t[0].startswith("load_scrape"))
            scen = dataclasses.replace(scen, load_scrape_interval=None, targets=kept)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        runs, errors = run_repeats(args, scen, workdir, builds)
        summary = scenario_summary(args, runs)
        targets = evaluate_targets(scen, runs, tested)
        failed_targets += sum(1 for t in targets if not t["pass"])
        print_table(scen, summary, targets, args.repeats, errors)
        if not args.no_save:
            record = {
                "scenario": name,
                "broker": scen.broker,
                "quick": args.quick,
                "repeats": args.repeats,
                "profiled_with_py_spy": bool(args.py_spy),
                "parameters": dataclasses.asdict(scen),
                "generator_flush_interval": args.flush_interval,
                "generators": args.generators,
                "consumers": args.consumers,
                "compare": args.compare,
                "machine": info,
                "loadavg_at_end": os.getloadavg(),
                "summary": summary,
                "targets": targets,
                "errors": errors,
                "runs": runs,
            }
            save(args, scen, stamp, record)
        sys.stdout.flush()
    return 1 if failed_targets else 0


if __name__ == "__main__":
    sys.exit(main())
