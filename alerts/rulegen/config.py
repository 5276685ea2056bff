"""The alert configuration's declarations: every key once, with its kind, default and help.

From them come the defaults, the merging and checking of a user's configuration (in
alerts/generate.py), the JSON schema of the chart's prometheusRule values, the chart's default
values and the documentation's table of keys. A configuration is a mapping shaped like the
declarations; a user's file holds only what differs from the defaults, and is merged over them
the way Helm merges values (mappings key by key; a key set to null is removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .template import go_number, nested

Path = Tuple[str, ...]
DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# A label value the rules can quote as they are: printable, no quote, no backslash.
LABEL_VALUE_SCHEMA = '^[^"\\\\\\x00-\\x1f\\x7f]+$'


class ConfigError(ValueError):
    pass


def _where(path: Path) -> str:
    """A key's path as the messages name it; a key with odd characters quoted."""
    return ".".join(key if re.fullmatch(r"[\w.-]+", key) else repr(key) for key in path) or "the configuration"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_label_value(value: Any, path: Path) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{_where(path)}: expected a non-empty string, got {value!r}")
    if not value.isprintable() or '"' in value or "\\" in value:
        raise ConfigError(f"{_where(path)}: {value!r} holds a quote, a backslash or an unprintable character")


class Kind:
    """What a key holds: how it is checked, its JSON schema, how the docs show it."""

    title = ""

    def check(self, value: Any, path: Path) -> None:
        raise NotImplementedError

    def schema(self) -> Dict[str, Any]:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """A default in the documentation."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if _is_number(value):
            return go_number(value)
        if value in ({}, []):
            return "{}" if value == {} else "[]"
        return str(value) if not isinstance(value, str) or value else '""'


class Duration(Kind):
    title = "duration"

    def check(self, value: Any, path: Path) -> None:
        if not isinstance(value, str) or not DURATION.match(value):
            raise ConfigError(f"{_where(path)}: {value!r} is not a Prometheus duration (30s, 5m, 1h)")

    def schema(self) -> Dict[str, Any]:
        return {"type": "string", "pattern": DURATION.pattern}


class Boolean(Kind):
    title = "boolean"

    def check(self, value: Any, path: Path) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path)}: expected true or false, got {value!r}")

    def schema(self) -> Dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Number(Kind):
    """A number; above `above` (exclusive) when given, at least `minimum` when given, below
    `below` (exclusive) when given."""

    minimum: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    title: str = "number"

    def check(self, value: Any, path: Path) -> None:
        if not _is_number(value):
            raise ConfigError(f"{_where(path)}: expected a number, got {value!r}")
        bounds = [
            (self.minimum is not None and value < self.minimum, f"at least {self.minimum}"),
            (self.above is not None and value <= self.above, f"above {self.above}"),
            (self.below is not None and value >= self.below, f"below {self.below}"),
        ]
        for failed, need in bounds:
            if failed:
                raise ConfigError(f"{_where(path)}: {value!r} must be {need}")

    def schema(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": "number"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.above is not None:
            out["exclusiveMinimum"] = self.above
        if self.below is not None:
            out["exclusiveMaximum"] = self.below
        return out


RATIO = Number(above=0, below=1, title="ratio (0 to 1)")
SECONDS = Number(above=0, title="seconds")


class LabelValue(Kind):
    title = "label value"

    def check(self, value: Any, path: Path) -> None:
        check_label_value(value, path)

    def schema(self) -> Dict[str, Any]:
        return {"type": "string", "pattern": LABEL_VALUE_SCHEMA}


@dataclass(frozen=True)
class UrlPattern(Kind):
    """A URL with one %s (what goes in it is the kind's business); %% for a percent sign.
    May be empty unless `required`."""

    required: bool = True
    title: str = "URL pattern"

    def check(self, value: Any, path: Path) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path)}: expected a string, got {value!r}")
        if not value and not self.required:
            return
        if value.replace("%%", "").count("%") != 1 or "%s" not in value.replace("%%", ""):
            raise ConfigError(f"{_where(path)}: {value!r} needs exactly one %s (and %% for a percent sign)")
        if not value.isprintable() or any(c in value for c in '"\\ '):
            raise ConfigError(f"{_where(path)}: {value!r} holds a space, a quote, a backslash or a control character")

    def schema(self) -> Dict[str, Any]:
        pattern = '^[^%"\\\\ ]*(%%[^%"\\\\ ]*)*%s[^%"\\\\ ]*(%%[^%"\\\\ ]*)*$'
        return {"type": "string", "pattern": pattern if self.required else f"^$|{pattern}"}


@dataclass(frozen=True)
class Keyed(Kind):
    """A mapping from a key (a label name, or a label value such as a task name) to values of
    one kind."""

    value: Kind
    key_title: str
    keys_are_label_names: bool = False
    title: str = "mapping"

    def check(self, value: Any, path: Path) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)}: expected a mapping of {self.key_title} to {self.value.title}")
        for key, item in value.items():
            if self.keys_are_label_names:
                if not isinstance(key, str) or not LABEL_NAME.match(key):
                    raise ConfigError(f"{_where(path)}: {key!r} is not a label name")
            else:
                check_label_value(key, path + (str(key),))
            self.value.check(item, path + (str(key),))

    def schema(self) -> Dict[str, Any]:
        pattern = LABEL_NAME.pattern if self.keys_are_label_names else LABEL_VALUE_SCHEMA
        return {"type": "object", "propertyNames": {"pattern": pattern}, "additionalProperties": self.value.schema()}

    def show(self, value: Any) -> str:
        if not value:
            return "{}"
        return "{" + ", ".join(f"{k}: {self.value.show(v)}" for k, v in value.items()) + "}"


@dataclass(frozen=True)
class Numbers(Kind):
    title: str = "list of numbers"

    def check(self, value: Any, path: Path) -> None:
        if not isinstance(value, list) or not all(_is_number(v) and v > 0 for v in value):
            raise ConfigError(f"{_where(path)}: expected a list of numbers above 0, got {value!r}")

    def schema(self) -> Dict[str, Any]:
        return {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}}


@dataclass(frozen=True)
class Param:
    """One key: its kind, default and help. `chart_default` replaces the default in the chart's
    values (`chart_help` then says what the chart does with it); `chart` is False for a key the
    chart does not offer (it knows the answer from its other values)."""

    key: str
    kind: Kind
    default: Any
    help: str
    chart: bool = True
    chart_default: Any = None
    chart_help: str = ""


@dataclass(frozen=True)
class Section:
    key: str
    help: str
    children: Tuple[Union["Section", Param], ...] = field(default_factory=tuple)


Node = Union[Section, Param]


def walk(section: Section, prefix: Path = ()) -> Iterator[Tuple[Path, Node]]:
    """Every section and key under `section`, depth first, with its path."""
    for child in section.children:
        path = prefix + (child.key,)
        yield path, child
        if isinstance(child, Section):
            yield from walk(child, path)


def defaults(section: Section, chart: bool = False) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for child in section.children:
        if isinstance(child, Section):
            out[child.key] = defaults(child, chart)
        elif not chart:
            out[child.key] = nested(child.default) if isinstance(child.default, dict) else child.default
        elif child.chart:
            default = child.default if child.chart_default is None else child.chart_default
            out[child.key] = nested(default) if isinstance(default, dict) else default
    return out


def _merge(base: Dict[str, Any], user: Mapping[str, Any], section: Section, path: Path) -> None:
    children = {c.key: c for c in section.children}
    for key, value in user.items():
        where = path + (str(key),)
        child = children.get(key)
        if child is None:
            known = ", ".join(children)
            raise ConfigError(f"{_where(where)}: no such key (the keys here: {known})")
        if isinstance(child, Section):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{_where(where)}: expected a mapping")
            _merge(base[key], value, child, where)
        elif isinstance(child.kind, Keyed) and isinstance(value, Mapping):
            for item_key, item in value.items():  # as Helm merges: key by key, null removes
                if item is None:
                    base[key].pop(item_key, None)
                else:
                    base[key][item_key] = item
        else:
            base[key] = value


def merged(section: Section, user: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The defaults with `user` merged over them, checked."""
    config = defaults(section)
    if user:
        if not isinstance(user, Mapping):
            raise ConfigError("the configuration must be a mapping")
        _merge(config, user, section, ())
    check(section, config)
    return config


def check(section: Section, config: Mapping[str, Any], prefix: Path = ()) -> None:
    """Refuses a value of the wrong kind, a missing or unknown key."""
    children = {c.key: c for c in section.children}
    unknown = sorted(set(config) - set(children))
    missing = [k for k in children if k not in config]
    if unknown or missing:
        raise ConfigError(f"{_where(prefix)}: unknown keys {unknown}, missing keys {missing}")
    for key, child in children.items():
        value = config[key]
        if isinstance(child, Section):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{_where(prefix + (key,))}: expected a mapping")
            check(child, value, prefix + (key,))
        else:
            child.kind.check(value, prefix + (key,))


def schema(section: Section) -> Dict[str, Any]:
    """The JSON schema of the chart's values for `section` (keys the chart does not offer left
    out); every key is required, as the chart's values.yaml holds them all."""
    properties: Dict[str, Any] = {}
    for child in section.children:
        if isinstance(child, Section):
            properties[child.key] = schema(child)
        elif child.chart:
            properties[child.key] = child.kind.schema()
    return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}


def values_yaml(section: Section, indent: int) -> List[str]:
    """The chart's values for `section` as commented YAML lines, `indent` spaces in."""
    lines: List[str] = []
    pad = " " * indent
    for child in section.children:
        if isinstance(child, Section):
            lines += [f"{pad}# {line}" for line in _wrapped(child.help, 100 - indent)]
            lines.append(f"{pad}{child.key}:")
            lines += values_yaml(child, indent + 2)
        elif child.chart:
            default = child.default if child.chart_default is None else child.chart_default
            lines += [f"{pad}# {line}" for line in _wrapped(child.chart_help or child.help, 100 - indent)]
            lines.append(f"{pad}{child.key}: {_yaml_scalar(default)}")
    return lines


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return go_number(value) if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return '""' if value == "" else f'"{value}"' if re.search(r"[:#{}\[\],&*!|>'\"%@`]", value) else value


def _wrapped(text: str, width: int) -> List[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width - 2:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line] if line else lines


def rows(section: Section) -> Iterator[Tuple[Path, Param]]:
    """Every key (not the sections), with its path."""
    for path, node in walk(section):
        if isinstance(node, Param):
            yield path, node


def find(section: Section, path: Sequence[str]) -> Node:
    node: Node = section
    for key in path:
        if not isinstance(node, Section):
            raise KeyError(path)
        node = next(c for c in node.children if c.key == key)
    return node
