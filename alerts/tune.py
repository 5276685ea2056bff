#!/usr/bin/env python3
"""Render celery-exporter.rules.yml with your job name, thresholds and `for:` durations.

The rules file stays valid as shipped; this prints a copy with the changes you ask for, as
text (comments and layout kept), and fails with exit code 2 when an alert name or value
does not fit, so a typo never yields a silently untouched rule. Standard library only.

  python alerts/tune.py --job my-exporter --for CeleryWorkerLost=5m \\
      --threshold CeleryTaskFailureRatioHigh=0.2 --min-volume CeleryTaskFailureRatioHigh=50 \\
      --task-threshold CeleryTaskRunningTooLong:app.tasks.nightly_report=14400 \\
      > /etc/prometheus/rules/celery-exporter.rules.yml

--threshold replaces the first number after ` > ` in the alert's expression, --min-volume
the first number after ` >= ` (the least number of tasks before the alert may fire).

--task-threshold ALERT:TASK=NUMBER gives one task name its own threshold in an alert whose
result has a `name` label (CeleryTaskRunningTooLong, CeleryTasksInterrupted,
CeleryTaskFailureRatioHigh); other names keep the alert's threshold. `<LHS> > N` becomes

  <LHS with name!="a", name!="b" in each selector> > N
  or
  <LHS with name="a"> > Na
  or
  <LHS with name="b"> > Nb
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

DEFAULT_RULES = Path(__file__).resolve().parent / "celery-exporter.rules.yml"
DEFAULT_JOB = 'job="celery-exporter"'
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_RULE_START = re.compile(r"^\s*- (alert|record):\s*(\S+)\s*$")
_EXPR_LINE = re.compile(r"^(\s*)expr:[ \t]*(.*?)\s*$")
_BLOCK_HEADER = re.compile(r"^[>|][-+0-9]*\s*(#.*)?$")
# Metrics that carry a task's `name` label: the exporter's celery_task_* series and the
# celery:task_* recording rules (summed by job, name).
_TASK_METRIC = re.compile(r"^celery[_:]task_")
# A label value that fits between double quotes in PromQL and on one line of YAML.
_LABEL_VALUE = re.compile(r"[^\"\\\x00-\x1f\x7f\x85\u2028\u2029]+")
_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
    r"|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9_]*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],@])"
    r"|(?P<space>\s+)",
    re.DOTALL,
)
_SET_OPERATORS = ("and", "or", "unless")
_LABEL_LISTS = ("by", "without", "on", "ignoring", "group_left", "group_right")
_KEYWORDS = frozenset(_SET_OPERATORS + _LABEL_LISTS + ("bool", "offset", "atan2", "inf", "nan"))
_AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()
)


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


def _task_pairs(values: List[str]) -> Dict[str, Dict[str, str]]:
    """ALERT:TASK=NUMBER options -> {alert: {task: number}}; the task name may hold ':' or '='."""
    out: Dict[str, Dict[str, str]] = {}
    for value in values:
        alert, sep, rest = value.partition(":")
        task, sep2, number = rest.rpartition("=")
        if not (sep and sep2 and alert and task and number):
            raise TuneError(f"--task-threshold {value!r}: expected ALERT:TASK=NUMBER")
        out.setdefault(alert, {})[task] = number
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
    task_thresholds: Dict[str, Dict[str, str]] = None,
) -> str:
    lines = text.splitlines(keepends=True)
    spans = _rules(lines)
    options = (
        ("--for", durations),
        ("--threshold", thresholds),
        ("--min-volume", volumes),
        ("--task-threshold", task_thresholds),
    )
    for option, table in options:
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

    for name, tasks in (task_thresholds or {}).items():
        for task, value in tasks.items():
            where = f"--task-threshold {name}:{task}={value}"
            if not _LABEL_VALUE.fullmatch(task):
                raise TuneError(f"--task-threshold {name}:{task!r}: not a valid label value for name")
            if not re.fullmatch(_NUMBER, value):
                raise TuneError(f"{where}: not a number")
        start, end = _rules(lines)[name]  # again: an earlier rewrite may have moved the rule
        lines[start:end] = _split_by_task(lines[start:end], name, tasks)

    out = "".join(lines)
    if job:
        if not re.fullmatch(r"[^\"\\\n]+", job):
            raise TuneError(f"--job {job!r}: not a valid label value")
        out = out.replace(DEFAULT_JOB, f'job="{job}"')
    return out


class _Token:
    __slots__ = ("kind", "text", "start", "end")

    def __init__(self, kind: str, text: str, start: int, end: int) -> None:
        self.kind, self.text, self.start, self.end = kind, text, start, end

    def is_(self, kind: str, *texts: str) -> bool:
        return self.kind == kind and (not texts or self.text.lower() in texts)


def _tokens(expr: str) -> List[_Token]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise TuneError(f"cannot read the expression at {expr[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append(_Token(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return out


def _closing(tokens: List[_Token], i: int) -> int:
    """Index of the bracket that closes tokens[i]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].kind == "op" and tokens[j].text in pairs:
            depth += 1
        elif tokens[j].kind == "op" and tokens[j].text in pairs.values():
            depth -= 1
            if depth == 0:
                return j
    raise TuneError("unbalanced brackets in the expression")


def _selectors(tokens: List[_Token], lo: int, hi: int) -> List[Tuple[str, int, Optional[int]]]:
    """The metric selectors in tokens[lo:hi] as (metric, index of its name, index of its '}' or
    None); TuneError when the part would not keep the `name` label or selects other metrics."""
    found: List[Tuple[str, int, Optional[int]]] = []
    i = lo
    while i < hi:
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.is_("op", "[", "{"):
            if tok.text == "{":
                raise TuneError("the alert's expression has a selector without a metric name")
            i = _closing(tokens, i) + 1
            continue
        if tok.kind == "ident" and tok.text.lower() in _LABEL_LISTS:
            if nxt is not None and nxt.is_("op", "("):
                close = _closing(tokens, i + 1)
                labels = {t.text for t in tokens[i + 2 : close] if t.kind == "ident"}
                keyword = tok.text.lower()
                if (keyword in ("by", "on") and "name" not in labels) or (
                    keyword in ("without", "ignoring") and "name" in labels
                ):
                    listed = ", ".join(t.text for t in tokens[i + 2 : close] if t.kind == "ident")
                    raise TuneError(f"the alert's result has no name label ({keyword} ({listed}) drops it)")
                i = close + 1
                continue
        elif tok.kind == "ident" and tok.text.lower() in _AGGREGATIONS and nxt is not None:
            if nxt.is_("op", "("):
                after = _closing(tokens, i + 1) + 1
                if after >= len(tokens) or not tokens[after].is_("ident", "by", "without"):
                    raise TuneError(f"the alert's result has no name label ({tok.text}() without by drops it)")
        elif tok.kind == "ident" and tok.text.lower() not in _KEYWORDS and not (nxt and nxt.is_("op", "(")):
            if not _TASK_METRIC.match(tok.text):
                raise TuneError(f"the alert's expression selects {tok.text}, not a task metric with a name label")
            brace = _closing(tokens, i + 1) if nxt is not None and nxt.is_("op", "{") else None
            found.append((tok.text, i, brace))
            i = (brace if brace is not None else i) + 1
            continue
        i += 1
    if not found:
        raise TuneError("the alert's expression selects no task metric before ' > N'")
    return found


def _with_matchers(
    expr: str, tokens: List[_Token], selectors: List[Tuple[str, int, Optional[int]]], lo: int, hi: int, matchers: str
) -> str:
    """expr[lo:hi] with `matchers` added to each selector."""
    inserts = []
    for _, name_index, brace in selectors:
        if brace is None:
            inserts.append((tokens[name_index].end, "{" + matchers + "}"))
        else:
            content = expr[tokens[name_index + 1].end : tokens[brace].start].strip()
            sep = ", " if content and not content.endswith(",") else ""
            inserts.append((tokens[brace].start, sep + matchers))
    out, pos = [], lo
    for at, text in sorted(inserts):
        out += [expr[pos:at], text]
        pos = at
    out.append(expr[pos:hi])
    return "".join(out)


def _split_expr(expr: str, tasks: Dict[str, str]) -> str:
    """`<LHS> > N` -> `<LHS, other names> > N or <LHS, name="a"> > Na ...` (see the docstring)."""
    tokens = _tokens(expr)
    depth, start, cut = 0, 0, None
    for i, tok in enumerate(tokens):
        if tok.is_("op", "(", "[", "{"):
            depth += 1
        elif tok.is_("op", ")", "]", "}"):
            depth -= 1
        elif depth == 0 and tok.is_("ident", *_SET_OPERATORS):
            start = i + 1
            if start < len(tokens) and tokens[start].is_("ident", "on", "ignoring"):
                start = _closing(tokens, start + 1) + 1
        elif depth == 0 and tok.is_("op", ">") and i + 1 < len(tokens):
            number_end = i + 2 if tokens[i + 1].is_("op", "-") else i + 1
            if number_end < len(tokens) and re.fullmatch(_NUMBER, expr[tokens[i + 1].start : tokens[number_end].end]):
                cut = (i, number_end)
                break
    if cut is None or start >= cut[0]:
        raise TuneError("the alert's expression has no ' > N' to change")
    gt, number_end = cut
    rest = tokens[number_end + 1 :]
    if rest and not rest[0].is_("ident", *_SET_OPERATORS):
        raise TuneError(f"cannot split the expression after ' > N' (it goes on with {rest[0].text!r})")
    selectors = _selectors(tokens, start, gt)
    lo, op_end = tokens[start].start, tokens[gt].end
    between = expr[op_end : tokens[gt + 1].start]  # the space between ' > ' and N, kept
    others = ", ".join(f'name!="{task}"' for task in tasks)
    branches = [
        _with_matchers(expr, tokens, selectors, lo, op_end, others)
        + between
        + expr[tokens[gt + 1].start : tokens[number_end].end]
    ]
    for task, value in tasks.items():
        branches.append(_with_matchers(expr, tokens, selectors, lo, op_end, f'name="{task}"') + between + value)
    split = "\nor\n".join(branches)
    head, tail = expr[:lo], expr[tokens[number_end].end :]
    if head.strip() or tail.strip():
        split = f"({split})"
    return head + split + tail


def _split_by_task(rule: List[str], name: str, tasks: Dict[str, str]) -> List[str]:
    """The rule's lines with its expr rewritten by _split_expr, as a `>-` block."""
    found = next(((i, m) for i, line in enumerate(rule) if (m := _EXPR_LINE.match(line))), None)
    if found is None:
        raise TuneError(f"--task-threshold {name}: the alert has no expr")
    i, m = found
    expr_line = rule[i]
    indent, value = m.group(1), m.group(2)
    end = i + 1
    while end < len(rule) and (not rule[end].strip() or len(rule[end]) - len(rule[end].lstrip()) > len(indent)):
        end += 1
    while end > i + 1 and not rule[end - 1].strip():
        end -= 1
    body = [line.strip() for line in rule[i + 1 : end]]
    if _BLOCK_HEADER.match(value):
        parts = body
    elif value[:1] in ("'", '"'):
        raise TuneError(f"--task-threshold {name}: cannot rewrite a quoted expr; write it as a >- block")
    else:  # a plain scalar: a ' #' starts a comment
        parts = [re.sub(r"\s+#.*$", "", part) for part in [value] + body]
    try:
        split = _split_expr("\n".join(p for p in parts if p), tasks)
    except TuneError as exc:
        raise TuneError(f"--task-threshold {name}: {exc}") from None
    inner = next((line[: len(line) - len(line.lstrip())] for line in rule[i + 1 : end] if line.strip()), "")
    if len(inner) <= len(indent):
        inner = indent + "  "
    newline = "\r\n" if expr_line.endswith("\r\n") else "\n"
    out = [f"{indent}expr: >-{newline}"]
    out += [f"{inner}{part.strip()}{newline}" for part in split.split("\n") if part.strip()]
    return rule[:i] + out + rule[end:]


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
    parser.add_argument(
        "--task-threshold",
        dest="task_thresholds",
        action="append",
        default=[],
        metavar="ALERT:TASK=NUMBER",
        help="give task name TASK its own threshold in ALERT, the number after ' > '; other names keep the "
        "alert's (repeatable; alerts on task names only, e.g. CeleryTaskRunningTooLong:app.tasks.report=14400)",
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
                _task_pairs(args.task_thresholds),
            )
        )
    except (TuneError, OSError) as exc:
        print(f"tune.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
