"""The exporter builds a run measures (`--exporter NAME=PATH`, repeatable) and what code
each one runs.

A build is a console script (or a wrapper of one). Its code is found through the Python
in the script's `#!` line: where that interpreter imports `celery_exporter` from (hashed
at every run start, so an edit between runs shows), and the directory pip installed it
from (`direct_url.json`; for an editable install, the work tree itself), whose git HEAD is
reported. A build whose script is not a Python console script (a shell wrapper) has no
known code: its runs report None for both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

from harness.procs import REPO

REFERENCE = "reference"  # the consumer that is not a build: benchmarks/reference.py
DEFAULT_NAME = "exporter"  # the build of a plain --exporter PATH, or of none
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
# keys of a results file's summary beside the consumers' names: no build may be called so
RESERVED = {
    REFERENCE,
    "builds",
    "code",
    "comparison",
    "exporter_code",
    "cpu_ratio_exporter_over_reference",
    "cpu_ratio_per_repeat",
    "cpu_ratio_over_reference",
    "cpu_ratio_per_repeat_by_build",
}

# run by the build's own Python: where it imports the package from, and where pip got it
LOCATE = """
import importlib.metadata, importlib.util, json, os, urllib.parse
spec = importlib.util.find_spec("celery_exporter")
package = os.path.dirname(spec.origin) if spec and spec.origin else None
source = None
for dist in ("celery-events-exporter", "celery-exporter"):  # the distribution's name from 1.0, and before
    try:
        direct = json.loads(importlib.metadata.distribution(dist).read_text("direct_url.json") or "null")
    except importlib.metadata.PackageNotFoundError:
        continue
    url = urllib.parse.urlparse((direct or {}).get("url", ""))
    source = urllib.parse.unquote(url.path) if url.scheme == "file" else None
    break
print(json.dumps({"package_dir": package, "source_dir": source}))
"""


@dataclasses.dataclass
class Build:
    name: str
    path: str  # the console script
    python: Optional[str] = None  # the interpreter of its #! line
    package_dir: Optional[str] = None  # where that interpreter imports celery_exporter from
    source_dir: Optional[str] = None  # the directory pip installed it from

    def locate(self) -> None:
        """Fills in python, package_dir and source_dir (left None where unknown)."""
        self.python = script_python(self.path)
        if self.python is None:
            return
        try:
            # isolated (-I) and from /: the directory it runs in must not be importable
            cmd = [self.python, "-I", "-c", LOCATE]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/").stdout
            found = json.loads(out)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return
        self.package_dir, self.source_dir = found["package_dir"], found["source_dir"]

    def code_version(self) -> Dict[str, Optional[str]]:
        """git HEAD of the source directory, and a hash of every .py file of the package as
        it is on disk now (subpackages included)."""
        if self.package_dir is None:
            return {"git_head": None, "source_sha1": None}
        head = git_head(self.source_dir or self.package_dir)
        return {"git_head": head, "source_sha1": source_hash(self.package_dir)}

    def describe(self) -> Dict[str, Optional[str]]:
        return dataclasses.asdict(self)


def script_python(path: str) -> Optional[str]:
    """The Python interpreter named in a console script's #! line, or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and os.path.basename(words[0]).startswith("python"):
        return words[0]
    return None


def source_hash(package_dir: str) -> str:
    h = hashlib.sha1()
    sources = []
    for root, _, files in os.walk(package_dir):  # the subpackages too (store/, exposition/)
        sources.extend(os.path.join(root, name) for name in files if name.endswith(".py"))
    for path in sorted(sources):
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, package_dir).encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def git_head(directory: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
    except OSError:
        return None
    return out.strip() or None


def default_script() -> str:
    """The console script next to the runner's Python."""
    return os.path.join(os.path.dirname(sys.executable), "celery-exporter")


def parse_builds(values: Optional[List[str]]) -> Dict[str, Build]:
    """`--exporter` values, NAME=PATH or PATH (named "exporter"), in order; raises
    ValueError for a bad or repeated name. No value: the console script next to this Python."""
    builds: Dict[str, Build] = {}
    for value in values or [default_script()]:
        name, sep, path = value.partition("=")
        if not sep or not NAME.match(name):  # a plain PATH (which may itself contain "=")
            name, path = DEFAULT_NAME, value
        if name in RESERVED:
            raise ValueError(f"--exporter: {name!r} cannot name a build")
        if name in builds:
            raise ValueError(f"--exporter: two builds named {name!r}")
        builds[name] = Build(name, path)
    return builds


def checkout_code() -> Dict[str, Optional[str]]:
    """The code of this checkout's package (what runs of the reference record)."""
    return {"git_head": git_head(REPO), "source_sha1": source_hash(os.path.join(REPO, "celery_exporter"))}


def run_order(consumers: List[str], repeat: int) -> List[str]:
    """The consumers in the order repeat `repeat` (from 1) runs them: the --consumers order,
    started one further along at each repeat, so that over the repeats each consumer runs
    first, second, ... alike. (With a fixed order, on 7 Dec 2026, the consumer that ran first
    in each repeat tended to come out ahead: the same two builds moved `sustained`'s median
    CPU ratio from 1.12 to 0.99 when their order was swapped.)"""
    shift = (repeat - 1) % len(consumers)
    return consumers[shift:] + consumers[:shift]
