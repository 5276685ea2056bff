"""The load: K generator processes (benchmarks/generate.py), pinned to the generator's
core, each publishing 1/K of the scenario; what they published, merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, Any, Dict, List, Tuple

from harness.procs import HERE, clean_env, on_core, stop_process
from harness.scenarios import Scenario


def generator_command(args: Any, scen: Scenario, broker_url: str, shard: int) -> List[str]:
    cmd = [sys.executable, os.path.join(HERE, "generate.py"), "--broker-url", broker_url]
    cmd += ["--shard", f"{shard}/{args.generators}"]
    cmd += ["--task-names", str(scen.task_names), "--workers", str(scen.workers), "--queues", str(scen.queues)]
    cmd += ["--fail-fraction", str(scen.fail_fraction), "--retry-fraction", str(scen.retry_fraction)]
    cmd += ["--rate", str(scen.rate), "--flush-interval", str(args.flush_interval)]
    cmd += ["--buffer-limit", str(scen.batch_limit), "--seed", str(args.seed)]
    if scen.tasks is not None:
        cmd += ["--tasks", str(scen.tasks)]
    else:
        cmd += ["--duration", str(scen.duration)]
    return on_core(args.generator_core, cmd)


def run_generators(args: Any, scen: Scenario, broker_url: str, workdir: str, tag: str) -> dict:
    """Runs the generators to their end; what they published, over all shards."""
    procs: List[Tuple[subprocess.Popen, IO[str]]] = []
    for i in range(args.generators):
        err = open(os.path.join(workdir, f"{tag}-generator{i}.err"), "w")
        cmd = generator_command(args, scen, broker_url, i)
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=clean_env(), cwd=workdir), err))
    shards = []
    try:
        for proc, err in procs:
            out, _ = proc.communicate()
            err.close()
            if proc.returncode != 0:
                raise RuntimeError(f"generator failed ({proc.returncode}); see {err.name}")
            shards.append(json.loads(out))
    finally:  # on an error or SIGTERM, stop the other shards before the broker goes away
        for proc, err in procs:
            stop_process(proc)
            err.close()
    return merge_shards(shards)


def merge_shards(shards: List[dict]) -> dict:
    """The shards' results as one: counts summed, label sets united, the earliest start and latest end."""
    published: Dict[str, int] = {}
    for s in shards:
        for t, n in s["published"].items():
            published[t] = published.get(t, 0) + n
    t_start = min(s["t_start"] for s in shards)
    t_end = max(s["t_end"] for s in shards)
    total = sum(published.values())
    return {
        "published": published,
        "total_events": total,
        "messages": sum(s["messages"] for s in shards),
        **batch_sizes(shards),
        "tasks": sum(s["tasks"] for s in shards),
        "workers": sorted(w for s in shards for w in s["workers"]),
        "task_series": len({tuple(x) for s in shards for x in s["task_series"]}),
        "exception_series": len({tuple(x) for s in shards for x in s["exception_series"]}),
        "t_start": t_start,
        "t_end": t_end,
        "elapsed_s": round(t_end - t_start, 3),
        "events_per_s": round(total / (t_end - t_start), 1),
        "cpu_s": sum(s["cpu_s"] for s in shards),
        "shards": len(shards),
    }


def batch_sizes(shards: List[dict]) -> Dict[str, Any]:
    """The mean and the largest task.multi batch over all shards."""
    multi = sum(s["task_multi_messages"] for s in shards)
    multi_events = sum(s["mean_batch"] * s["task_multi_messages"] for s in shards if s["mean_batch"])
    return {
        "mean_batch": round(multi_events / multi, 2) if multi else None,
        "max_batch": max((s.get("max_batch") or 0 for s in shards), default=0) or None,
    }
