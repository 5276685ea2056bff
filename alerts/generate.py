#!/usr/bin/env python3
"""Writes celery-exporter's Prometheus rules from one configuration.

    python alerts/generate.py                      write alerts/celery-exporter.rules.yml (the defaults)
                                                   and alerts/danihodovic-compat.rules.yml
    python alerts/generate.py --check              change nothing; exit 1 when either file is stale
    python alerts/generate.py --config my.yml      print the rules for your configuration
    python alerts/generate.py --defaults           print the default configuration (every key)

A configuration file holds only what differs from the defaults, shaped like `--defaults`;
it is merged over them as Helm merges values (a key set to null is removed from a mapping).
A key that does not exist or a value of the wrong kind is refused (exit 2), never ignored.
The keys are described in docs/alerts.md. Needs PyYAML (a dependency of the exporter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
RULES = HERE / "celery-exporter.rules.yml"
# recording rules that give danihodovic/celery-exporter's metric names (docs/migration.md)
COMPAT = HERE / "danihodovic-compat.rules.yml"
sys.path[:0] = [str(HERE), str(HERE.parent)]  # rulegen, and this checkout's celery_exporter

import yaml  # noqa: E402
from rulegen import ConfigError, compat, rules_file  # noqa: E402
from rulegen.config import defaults  # noqa: E402
from rulegen.rules import CONFIG  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help=f"exit 1 when {RULES.name} or {COMPAT.name} is stale")
    what.add_argument("--config", metavar="FILE", help="print the rules for this configuration (YAML)")
    what.add_argument("--defaults", action="store_true", help="print the default configuration")
    args = parser.parse_args(argv)
    if args.defaults:
        sys.stdout.write(yaml.safe_dump(defaults(CONFIG), sort_keys=False))
        return 0
    try:
        if args.config:
            with open(args.config) as f:
                user = yaml.safe_load(f)
            sys.stdout.write(rules_file(user, source=f"the configuration {Path(args.config).name}"))
            return 0
        text = rules_file()
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2
    written = {RULES: text, COMPAT: compat.rules_file()}
    if args.check:
        stale = [path for path, content in written.items() if not path.exists() or path.read_text() != content]
        for path in stale:
            print(f"out of date (run python alerts/generate.py): {path.relative_to(HERE.parent)}", file=sys.stderr)
        return 1 if stale else 0
    for path, content in written.items():
        path.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
