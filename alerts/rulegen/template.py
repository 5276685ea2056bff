"""Text with holes, rendered two ways from one description.

The rules are written once as a sequence of parts: plain text, and nodes for what the
configuration decides (a value, a rule that may be switched off, one `or` branch per
task-name override, the label matchers of a selector). `literal()` fills the holes from a
configuration and gives the rules file; `helm()` turns every hole into a Helm template
expression reading the chart's values, so the chart renders the same text from its values.

Both renderers produce the same characters for the same configuration, except where a value
is quoted (Go's %q and JSON escape the same way for the characters the configuration admits),
so a rules file and a chart rendered from equal settings parse to equal rules. The tests check
that for several configurations.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

Path = Tuple[str, ...]
# The chart's values that hold the configuration, and the variables the template sets.
CFG = "$cfg"  # .Values.prometheusRule
SEL = "$sel"  # the selectors, with the job defaulting to the release's Service name


class Fmt(enum.Enum):
    """How a value is written into the text."""

    TEXT = "text"  # as it is: a duration, a checked word
    NUMBER = "number"  # a number, as Go prints a float64 (what Helm prints)
    QUOTED = "quoted"  # a YAML double-quoted scalar
    LABEL = "label"  # a PromQL string: a label value between double quotes
    LE = "le"  # a histogram bucket bound as the exporter writes it in `le`


class Node:
    """A part of the text that the configuration decides."""


Part = Union[str, Node]
Parts = Tuple[Part, ...]


@dataclass(frozen=True)
class Value(Node):
    """The configuration value at `path`."""

    path: Path
    fmt: Fmt = Fmt.TEXT


@dataclass(frozen=True)
class Key(Node):
    """The key of the entry an `Each` is at (a task or queue name)."""

    fmt: Fmt = Fmt.LABEL


@dataclass(frozen=True)
class Item(Node):
    """The value of the entry an `Each` is at."""

    fmt: Fmt = Fmt.NUMBER


@dataclass(frozen=True)
class Url(Node):
    """The URL pattern at `pattern` (one %s) with `arg` in it."""

    pattern: Path
    arg: str


@dataclass(frozen=True)
class IsTrue:
    path: Path


@dataclass(frozen=True)
class NotEmpty:
    path: Path


@dataclass(frozen=True)
class AnyOf:
    tests: Tuple[Union[IsTrue, NotEmpty], ...]


Test = Union[IsTrue, NotEmpty, AnyOf]


@dataclass(frozen=True)
class When(Node):
    """`body` when `test` holds. The body starts a new line; in the chart the directives sit
    on lines of their own, indented by `indent`."""

    test: Test
    body: Parts
    indent: int = 0


@dataclass(frozen=True)
class Each(Node):
    """`body` once per entry of the mapping at `path`, in the order of the keys (Helm's
    `keys | sortAlpha`: byte order, which is code point order). Starts a new line each time."""

    path: Path
    body: Parts
    indent: int = 0


@dataclass(frozen=True)
class Selectors:
    """The configured selectors, `label="value"` each."""


@dataclass(frozen=True)
class Exclude:
    """`label!="key"` for each key of the mapping at `path`."""

    label: str
    path: Path


@dataclass(frozen=True)
class Equal:
    """`label="value"`, the value a `Key`, `Item` or `Value` formatted as a string."""

    label: str
    value: Union[Key, Item, Value]


Matcher = Union[Selectors, Exclude, Equal]


@dataclass(frozen=True)
class Matchers(Node):
    """`{m1, m2, ...}`: the label matchers of a selector, the empty ones left out; nothing at
    all when every one is empty."""

    parts: Tuple[Matcher, ...]


def seq(*parts: Union[Part, Sequence[Part]]) -> Parts:
    """Parts and sequences of parts as one flat tuple."""
    out: List[Part] = []
    for part in parts:
        if isinstance(part, (str, Node)):
            out.append(part)
        else:
            out.extend(part)
    return tuple(out)


# -- numbers and quotes as Go writes them ----------------------------------------------------


def go_number(value: Union[int, float]) -> str:
    """`value` as Go's fmt prints a float64 with %v, which is how a Helm template prints a
    number from the values: the shortest digits that read back as the same number, in
    exponent form when the power of ten is below -4 or 6 and above (1e-05, 1e+06)."""
    if isinstance(value, bool):
        raise TypeError(f"not a number: {value!r}")
    number = Decimal(repr(float(value))).normalize()
    if number.is_zero():
        return "0"
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    point = len(digits) + exponent - 1  # the power of ten of the first digit
    head = "-" if sign else ""
    if point < -4 or point >= 6:
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return f"{head}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    return head + format(number.copy_abs(), "f")


def le_text(value: Union[int, float]) -> str:
    """A bucket bound as the exporter writes it in `le` (Go's client does the same): Go's
    number with `.0` added to a whole number written without exponent."""
    text = go_number(value)
    return text + ".0" if text.lstrip("-").isdigit() else text


def label_text(value: str) -> str:
    """A PromQL string holding `value`. The configuration admits no quote, backslash or
    unprintable character in a label value, so Go's %q adds nothing but the quotes."""
    if not value.isprintable() or '"' in value or "\\" in value:
        raise ValueError(f"{value!r}: not a label value the configuration admits")
    return f'"{value}"'


def formatted(value: Any, fmt: Fmt) -> str:
    if fmt is Fmt.NUMBER:
        return go_number(value)
    if fmt is Fmt.LE:
        return le_text(value)
    if fmt is Fmt.LABEL:
        return label_text(str(value))
    if fmt is Fmt.QUOTED:
        return json.dumps(str(value), ensure_ascii=False)
    return str(value)


# -- the literal rendering: a rules file ------------------------------------------------------


def lookup(config: Mapping[str, Any], path: Path) -> Any:
    value: Any = config
    for key in path:
        value = value[key]
    return value


class _Entry:
    """The entry an `Each` is at."""

    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value


def _holds(test: Test, config: Mapping[str, Any]) -> bool:
    if isinstance(test, AnyOf):
        return any(_holds(t, config) for t in test.tests)
    return bool(lookup(config, test.path))


def _matcher_texts(matcher: Matcher, config: Mapping[str, Any], entry: Optional[_Entry]) -> List[str]:
    if isinstance(matcher, Selectors):
        selectors = lookup(config, ("selectors",))
        return [f"{label}={label_text(selectors[label])}" for label in sorted(selectors)]
    if isinstance(matcher, Exclude):
        return [f"{matcher.label}!={label_text(key)}" for key in sorted(lookup(config, matcher.path))]
    value = _value_text(matcher.value, config, entry)
    return [f"{matcher.label}={value if matcher.value.fmt is Fmt.LABEL else label_text(value)}"]


def _value_text(node: Union[Key, Item, Value], config: Mapping[str, Any], entry: Optional[_Entry]) -> str:
    if isinstance(node, Value):
        return formatted(lookup(config, node.path), node.fmt)
    if entry is None:
        raise ValueError(f"{node!r} outside of an Each")
    return formatted(entry.key if isinstance(node, Key) else entry.value, node.fmt)


def _literal(parts: Parts, config: Mapping[str, Any], entry: Optional[_Entry]) -> Iterator[str]:
    for part in parts:
        if isinstance(part, str):
            yield part
        elif isinstance(part, (Value, Key, Item)):
            yield _value_text(part, config, entry)
        elif isinstance(part, Url):
            yield str(lookup(config, part.pattern)) % part.arg
        elif isinstance(part, When):
            if _holds(part.test, config):
                yield from _literal(part.body, config, entry)
        elif isinstance(part, Each):
            mapping = lookup(config, part.path)
            for key in sorted(mapping):
                yield from _literal(part.body, config, _Entry(key, mapping[key]))
        elif isinstance(part, Matchers):
            texts = [t for m in part.parts for t in _matcher_texts(m, config, entry)]
            yield "{" + ", ".join(texts) + "}" if texts else ""
        else:
            raise TypeError(f"cannot render {part!r}")


def literal(parts: Parts, config: Mapping[str, Any]) -> str:
    """The text with every hole filled from `config`."""
    return "".join(_literal(parts, config, None))


# -- the Helm rendering: a template reading .Values.prometheusRule ----------------------------

HELPERS = """\
{{- /* The label matchers of a selector, in braces (nothing when there are none): each part
       of the list is the selectors (a map of label: value) or one or more matchers as a
       string; empty parts are left out. */ -}}
{{- define "celery-exporter.rules.matchers" -}}
{{- $out := list -}}
{{- range $part := . -}}
{{- if kindIs "map" $part -}}
{{- range $label := keys $part | sortAlpha -}}
{{- $out = append $out (printf "%s=%q" $label (toString (index $part $label))) -}}
{{- end -}}
{{- else if $part -}}
{{- $out = append $out $part -}}
{{- end -}}
{{- end -}}
{{- if $out }}{ {{- join ", " $out -}} }{{ end -}}
{{- end -}}

{{- /* label!="key" for each key of a map: (list label map) */ -}}
{{- define "celery-exporter.rules.exclude" -}}
{{- $label := index . 0 -}}
{{- $out := list -}}
{{- range $key := keys (index . 1) | sortAlpha -}}
{{- $out = append $out (printf "%s!=%q" $label $key) -}}
{{- end -}}
{{- join ", " $out -}}
{{- end -}}

{{- /* A bucket bound as the exporter writes it in le: 60 is "60.0", 0.5 is "0.5". */ -}}
{{- define "celery-exporter.rules.le" -}}
{{- $text := toString . -}}
{{- if regexMatch "^-?[0-9]+$" $text -}}{{ $text }}.0{{- else -}}{{ $text }}{{- end -}}
{{- end -}}
"""


def _go_path(path: Path) -> str:
    return "(index " + " ".join([CFG] + [json.dumps(key) for key in path]) + ")"


def _go_value(node: Union[Key, Item, Value]) -> str:
    """A Go template expression for the value, formatted as its fmt asks."""
    if isinstance(node, Key):
        raw = "$key"
    elif isinstance(node, Item):
        raw = "$item"
    else:
        raw = _go_path(node.path)
    if node.fmt is Fmt.LE:
        return f'(include "celery-exporter.rules.le" {raw})'
    if node.fmt in (Fmt.LABEL, Fmt.QUOTED):
        return f"({raw} | toString | quote)"
    return raw


def _go_test(test: Test) -> str:
    if isinstance(test, AnyOf):
        return "or " + " ".join(_go_path(t.path) for t in test.tests)
    return _go_path(test.path)


def _go_matcher(matcher: Matcher) -> str:
    if isinstance(matcher, Selectors):
        return SEL
    if isinstance(matcher, Exclude):
        return f'(include "celery-exporter.rules.exclude" (list {json.dumps(matcher.label)} {_go_path(matcher.path)}))'
    value = _go_value(matcher.value)
    if matcher.value.fmt is Fmt.LABEL:
        return f'(printf "%s=%s" {json.dumps(matcher.label)} {value})'
    return f'(printf "%s=%q" {json.dumps(matcher.label)} {value})'


def _escaped(text: str) -> str:
    """Literal text in a Go template: `{{` (Prometheus' own templates) printed, not run."""
    return text.replace("{{", '{{ "{{" }}')


def _helm(parts: Parts) -> Iterator[str]:
    for part in parts:
        if isinstance(part, str):
            yield _escaped(part)
        elif isinstance(part, (Value, Key, Item)):
            yield "{{ " + _go_value(part) + " }}"
        elif isinstance(part, Url):
            yield "{{ printf " + _go_path(part.pattern) + " " + json.dumps(part.arg) + " }}"
        elif isinstance(part, When):
            pad = " " * part.indent
            yield f"\n{pad}{{{{- if {_go_test(part.test)} }}}}"
            yield from _helm(part.body)
            yield f"\n{pad}{{{{- end }}}}"
        elif isinstance(part, Each):
            pad = " " * part.indent
            mapping = _go_path(part.path)
            yield f"\n{pad}{{{{- range $key := keys {mapping} | sortAlpha }}}}{{{{ $item := index {mapping} $key }}}}"
            yield from _helm(part.body)
            yield f"\n{pad}{{{{- end }}}}"
        elif isinstance(part, Matchers):
            args = " ".join(_go_matcher(m) for m in part.parts)
            yield '{{ include "celery-exporter.rules.matchers" (list ' + args + ") }}"
        else:
            raise TypeError(f"cannot render {part!r}")


def helm(parts: Parts) -> str:
    """The text as a Helm template: every hole reads $cfg (the chart's prometheusRule values)
    or the loop variables $key and $item; $sel holds the selectors."""
    text = "".join(_helm(parts))
    if "{{{" in text:
        raise ValueError("a literal `{` right before a template action: write a space between them")
    return text


def value_paths(parts: Parts) -> Iterator[Path]:
    """Every configuration path the parts read (the tests check them against the declarations)."""
    for part in parts:
        if isinstance(part, Value):
            yield part.path
        elif isinstance(part, Url):
            yield part.pattern
        elif isinstance(part, When):
            tests: Sequence[Union[IsTrue, NotEmpty]] = part.test.tests if isinstance(part.test, AnyOf) else (part.test,)
            yield from (t.path for t in tests)
            yield from value_paths(part.body)
        elif isinstance(part, Each):
            yield part.path
            yield from value_paths(part.body)
        elif isinstance(part, Matchers):
            for m in part.parts:
                if isinstance(m, Selectors):
                    yield ("selectors",)
                elif isinstance(m, Exclude):
                    yield m.path
                elif isinstance(m, Equal) and isinstance(m.value, Value):
                    yield m.value.path


def nested(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A deep copy of a configuration mapping (mappings copied, leaves shared)."""
    return {k: nested(v) if isinstance(v, Mapping) else v for k, v in config.items()}
