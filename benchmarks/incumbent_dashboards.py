#!/usr/bin/env python3
"""How many panel queries of danihodovic/celery-exporter's mixin dashboards return data on
this exporter, without and with alerts/danihodovic-compat.rules.yml: the measurement of
docs/migration.md, for a maintainer to repeat (e.g. when the incumbent changes its dashboards).

    git clone https://github.com/danihodovic/celery-exporter /tmp/incumbent
    python benchmarks/incumbent_dashboards.py /tmp/incumbent

It runs tests/integration/test_incumbent_compat.py with INCUMBENT_CHECKOUT set: real workers
on the local Redis (127.0.0.1:6379), the exporter, and two of Debian's Prometheus scraping it
(one with the compatibility rules, one without); every query of the checkout's
celery-mixin/dashboards_out/*.json is sent as Grafana sends it (tests/integration/grafana.py:
template variables resolved from that Prometheus, $__range from the dashboard's time range,
$__rate_interval for a 1 s scrape interval). Prints N of M per dashboard and in all; exit 0
when every query returns data with the rules. Nothing of the checkout is copied here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/integration/test_incumbent_compat.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of danihodovic/celery-exporter")
    args = parser.parse_args()
    boards = sorted((args.checkout / "celery-mixin" / "dashboards_out").glob("*.json"))
    if not boards:
        print(
            f"incumbent_dashboards.py: error: no celery-mixin/dashboards_out/*.json under {args.checkout}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.txt"
        env = {**os.environ, "INCUMBENT_CHECKOUT": str(args.checkout.resolve()), "INCUMBENT_REPORT": str(report)}
        run = subprocess.run([sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
        if report.exists():
            print(report.read_text(), end="")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
