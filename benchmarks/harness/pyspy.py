"""The optional profile of an exporter during the load (--py-spy): py-spy's raw stacks of
the process, and the share of the event thread's samples by function."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import Any, Dict, Optional, Tuple

from harness.procs import REPO, on_core


def start_py_spy(args: Any, pid: int, tag: str, workdir: str) -> Tuple[subprocess.Popen, str]:
    """py-spy recording `pid` (on the generator's core) into results/; the raw file's path
    relative to the repository. Gives it a second to attach."""
    out = os.path.join(args.results_dir, f"{tag}-{time.strftime('%Y%m%dT%H%M%S')}-py-spy.txt")
    cmd = [args.py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    cmd += ["--threads", "--gil", "--nonblocking", "--output", out]
    spy = subprocess.Popen(
        on_core(args.generator_core, cmd),
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(workdir, f"{tag}-py-spy.err"), "w"),
    )
    time.sleep(1.0)  # let py-spy attach
    return spy, os.path.relpath(out, REPO)


def stop_py_spy(spy: subprocess.Popen) -> None:
    """py-spy writes its file on SIGINT."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(20)
    except subprocess.TimeoutExpired:
        spy.kill()


def py_spy_top(path: str, thread: str = "event-receiver", n: int = 15) -> Optional[dict]:
    """From py-spy's raw (collapsed) output: the share of the receiver thread's samples in
    which each function is on the stack (inclusive) and on top (self)."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    total = 0
    inclusive: Dict[str, int] = {}
    self_: Dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if thread not in stack.split(";", 1)[0]:
            continue
        c = int(count)
        total += c
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + c
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + c
    if not total:
        return None
    by_package: Dict[str, int] = {}
    for f, c in self_.items():
        m = re.search(r"\(([^/)]+)", f)
        package = m.group(1).split(".")[0] if m else "?"
        by_package[package] = by_package.get(package, 0) + c

    def top(d: dict, k: int = n) -> list:
        return [[f, round(100 * c / total, 1)] for f, c in sorted(d.items(), key=lambda x: -x[1])[:k]]

    return {
        "thread": thread,
        "samples": total,
        "mode": "py-spy --gil (samples holding the GIL)",
        "self_pct": top(self_),
        "inclusive_pct": top(inclusive, 30),
        "self_pct_by_package": top(by_package),
    }
