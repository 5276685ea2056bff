#!/usr/bin/env python3
"""Copies the alert rules and dashboards into the chart (Helm can only read files inside it).
`--check` exits 1 when the chart's copies differ from alerts/ and dashboards/."""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "helm" / "celery-exporter" / "files"
PAIRS = [(ROOT / "alerts" / "celery-exporter.rules.yml", FILES / "celery-exporter.rules.yml")] + [
    (p, FILES / "dashboards" / p.name) for p in sorted((ROOT / "dashboards").glob("*.json"))
]


def main(argv) -> int:
    if "--check" in argv:
        stale = [
            str(dst.relative_to(ROOT)) for src, dst in PAIRS if not dst.exists() or dst.read_bytes() != src.read_bytes()
        ]
        extra = {p.name for p in (FILES / "dashboards").glob("*.json")} - {src.name for src, _ in PAIRS}
        stale += sorted(f"extra file helm/celery-exporter/files/dashboards/{n}" for n in extra)
        if stale:
            print("out of date (run python helm/sync.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    (FILES / "dashboards").mkdir(parents=True, exist_ok=True)
    for src, dst in PAIRS:
        shutil.copyfile(src, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
