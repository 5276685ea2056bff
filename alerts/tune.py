#!/usr/bin/env python3
"""Render celery-exporter.rules.yml with your job name, thresholds and `for:` durations.

The rules file stays valid as shipped; this prints a copy with the changes you ask for, as
text (comments and layout kept), and fails with exit code 2 when an alert name or value
does not fit, so a typo never yields a silently untouched rule. Standard library only.

  python alerts/tune.py --job my-exporter --for CeleryWorkerLost=5m \\
      --threshold CeleryTaskFailureRatioHigh=0.2 --min-volume CeleryTaskFailureRatioHigh=50 \\
      > /etc/prometheus/rules/celery-exporter.rules.yml

--threshold replaces the first number after ` > ` in the alert's expression, --min-volume
the first number after ` >= ` (the least number of tasks before the alert may fire).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

DEFAULT_RULES = Path(__file__).resolve().parent / "celery-exporter.rules.yml"
DEFAULT_JOB = 'job="celery-exporter"'
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_RULE_START = re.compile(r"^\s*- (alert|record):\s*(\S+)\s*$")


class TuneError(Exception):
    pass


def _pairs(values: List[str], option: str) -> Dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise TuneError(f"{option} {value!r}: expected ALERT=VALUE")
        out[name] = setting
    return out


def _rules(lines: List[str]) -> Dict[str, Tuple[int, int]]:
    """alert name -> (first line, end line) of its rule."""
    starts = [(i, m.group(1), m.group(2)) for i, line in enumerate(lines) if (m := _RULE_START.match(line))]
    spans = {}
    for k, (i, kind, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        # a rule ends where a less indented line (the next group) begins
        indent = len(lines[i]) - len(lines[i].lstrip())
        for j in range(i + 1, end):
            stripped = lines[j].strip()
            if stripped and not stripped.startswith("#") and len(lines[j]) - len(lines[j].lstrip()) < indent:
                end = j
                break
        if kind == "alert":
            spans[name] = (i, end)
    return spans


def tune(
    text: str,
    job: str = "",
    durations: Dict[str, str] = None,
    thresholds: Dict[str, str] = None,
    volumes: Dict[str, str] = None,
) -> str:
    lines = text.splitlines(keepends=True)
    spans = _rules(lines)
    for option, table in (("--for", durations), ("--threshold", thresholds), ("--min-volume", volumes)):
        for name in table or {}:
            if name not in spans:
                raise TuneError(f"{option}: no alert named {name!r} (alerts: {', '.join(sorted(spans))})")

    for name, value in (durations or {}).items():
        if not _DURATION.match(value):
            raise TuneError(f"--for {name}={value}: not a Prometheus duration (e.g. 30s, 5m, 1h)")
        start, end = spans[name]
        for i in range(start, end):
            if re.match(r"^\s*for:\s*\S+\s*$", lines[i]):
                lines[i] = re.sub(r"for:\s*\S+", f"for: {value}", lines[i])
                break
        else:
            raise TuneError(f"--for {name}: the alert has no for: line")

    for option, table, operator in (("--threshold", thresholds, ">"), ("--min-volume", volumes, ">=")):
        for name, value in (table or {}).items():
            if not re.fullmatch(_NUMBER, value):
                raise TuneError(f"{option} {name}={value}: not a number")
            start, end = spans[name]
            pattern = re.compile(rf"(\s{re.escape(operator)}\s+)({_NUMBER})(?![\w.])")
            for i in range(start, end):
                if pattern.search(lines[i]):
                    lines[i] = pattern.sub(lambda m, value=value: m.group(1) + value, lines[i], count=1)
                    break
            else:
                raise TuneError(f"{option} {name}: the alert's expression has no ' {operator} N' to change")

    out = "".join(lines)
    if job:
        if not re.fullmatch(r"[^\"\\\n]+", job):
            raise TuneError(f"--job {job!r}: not a valid label value")
        out = out.replace(DEFAULT_JOB, f'job="{job}"')
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rules", nargs="?", default=str(DEFAULT_RULES), help="rules file (default: the shipped one)")
    parser.add_argument("--job", default="", help='the exporter\'s Prometheus job name (default "celery-exporter")')
    parser.add_argument(
        "--for",
        dest="durations",
        action="append",
        default=[],
        metavar="ALERT=DURATION",
        help="set an alert's for: (repeatable)",
    )
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="ALERT=NUMBER",
        help="set an alert's threshold, the number after ' > ' (repeatable)",
    )
    parser.add_argument(
        "--min-volume",
        action="append",
        default=[],
        metavar="ALERT=NUMBER",
        help="set an alert's minimum volume, the number after ' >= ' (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        text = Path(args.rules).read_text()
        sys.stdout.write(
            tune(
                text,
                args.job,
                _pairs(args.durations, "--for"),
                _pairs(args.threshold, "--threshold"),
                _pairs(args.min_volume, "--min-volume"),
            )
        )
    except (TuneError, OSError) as exc:
        print(f"tune.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
