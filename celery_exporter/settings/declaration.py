"""How a setting is declared: an `Option` (flags, environment variables, value type, default,
help, docs group, Helm value) turned into a field of the `Settings` dataclass by `.field()`.
The field's metadata keeps the declaration; `declarations()` reads them back for everything
derived from them (click options, the docs' table, the Helm chart's mapping)."""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import click

ENV_PREFIX = "CELERY_EXPORTER_"
_METADATA_KEY = "celery_exporter.setting"


class Group(enum.Enum):
    """The docs' sections of the configuration reference, in this order."""

    BROKER = "Broker and events"
    HTTP = "HTTP server"
    HISTOGRAMS = "Histograms"
    LIFETIME = "Workers, series and memory"
    QUEUES = "Queues and remote control"
    BEAT = "Beat schedule"
    LOGGING = "Logging"


class Invalid(ValueError):
    """A value refused after parsing (by a setting's conversion or a check across settings).
    It names `flag`, or else the first flag of the setting it was raised for."""

    def __init__(self, message: str, flag: Optional[str] = None) -> None:
        super().__init__(message)
        self.flag = flag


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


# A chart value left empty: the exporter's own default applies.
UNSET: Any = _Unset()


class Option:
    """One command-line option of a setting.

    flags: short and long flags; the first long one names the option (`--worker-ttl`: worker_ttl),
        the other long ones are aliases; a boolean is one `--x/--no-x` pair.
    name: the option's name where the first long flag does not give it (repeatable options
        are named in the plural); also the key of its value when settings are built.
    env: environment variables read after the flags: CELERY_EXPORTER_<NAME>, then `also_env`.
    type: the click type that parses the text (none for a boolean pair; default: text).
    default: as a user writes it (text), or a value the type accepts; None: no value.
    multiple: repeatable (its environment variable holds values separated by spaces).
    help: what the option means, for --help and the docs (plain text; `code` in backquotes).
    doc: the docs' text instead of help, where it needs Markdown (links) or more words.
    doc_default: the docs' default column instead of the default itself (Markdown).
    chart: whether the Helm chart offers it as config.<camelCaseName> (False: the chart sets
        it itself from other values, or it cannot be set safely from the chart).
    chart_default: the chart's own default in values.yaml (UNSET: empty, the exporter's).
    deprecated: for a flag of danihodovic/celery-exporter (the exporter this one replaces) that
        is accepted: what to use instead, logged as a one-line warning when it is given.
    refused: for such a flag that cannot be applied: what to do instead; giving it stops the
        exporter at start (exit 2) with this text, unless its value is one of `accepts`.
    The incumbent's flags read no environment variable, are hidden from --help and the chart,
    and are listed in docs/migration.md instead of the configuration reference.
    """

    def __init__(
        self,
        *flags: str,
        group: Group,
        help: str,
        type: Optional[click.ParamType[Any, Any]] = None,
        default: object = None,
        multiple: bool = False,
        name: Optional[str] = None,
        also_env: Sequence[str] = (),
        doc: str = "",
        doc_default: str = "",
        chart: bool = True,
        chart_default: object = UNSET,
        deprecated: str = "",
        refused: str = "",
        accepts: Sequence[object] = (),
    ) -> None:
        longs = [f for f in flags if f.startswith("--")]
        if not longs:
            raise ValueError(f"{flags}: an option needs a long flag")
        self.flags = flags
        self.is_flag = "/" in longs[0]  # a boolean --x/--no-x pair
        if self.is_flag and type is not None:
            raise ValueError(f"{flags}: a --x/--no-x pair is a boolean, it takes no type")
        self.name = name or longs[0].split("/")[0][2:].replace("-", "_")
        self.deprecated = deprecated
        self.refused = refused
        self.accepts = tuple(accepts)
        self.env: Tuple[str, ...] = () if self.incumbent else (ENV_PREFIX + self.name.upper(), *also_env)
        self.group = group
        self.help = help
        self.type = type if type is not None or self.is_flag else click.STRING
        self.default = default
        self.multiple = multiple
        self.doc = doc or help
        self.doc_default = doc_default
        self.chart = chart and not self.incumbent
        self.chart_default = chart_default

    def __repr__(self) -> str:
        return f"Option({self.long_flag!r})"

    @property
    def incumbent(self) -> bool:
        """A flag of danihodovic/celery-exporter, accepted under its old name or refused."""
        return bool(self.deprecated or self.refused)

    def refusal(self, value: object) -> str:
        """Why a given value cannot be applied ("" when it can)."""
        return self.refused if self.refused and value not in self.accepts else ""

    @property
    def long_flag(self) -> str:
        """The flag error messages name: the first long one (`--broker-ssl` of a pair)."""
        return next(f for f in self.flags if f.startswith("--")).split("/")[0]

    def click_option(self, envvar: bool = True) -> click.Option:
        """This option as a parameter of a click command (without environment variables for
        commands that read none)."""
        return click.Option(
            [*self.flags, self.name],
            type=self.type,
            default=self.default,
            multiple=self.multiple,
            show_default=self.default is not None,
            envvar=list(self.env) if envvar and self.env else None,
            show_envvar=envvar,
            help=self.help,
            hidden=self.incumbent,
        )

    def parse(self, value: object) -> object:
        """`value` (as a user writes it, or already parsed) parsed as click parses a flag;
        raises click.BadParameter."""
        if value is None:
            return () if self.multiple else None
        kind = self.type or click.BOOL
        if self.multiple:
            if not isinstance(value, (list, tuple)):
                raise click.BadParameter(f"{value!r} is not a list")
            return tuple(kind.convert(v, None, None) for v in value)
        return kind.convert(value, None, None)

    def field(self, *more: Option, convert: Optional[Callable[..., Any]] = None) -> Any:
        """A dataclass field declared by this option (and `more` options): its value is the
        option's parsed value, or `convert(value, *more_values)`, which may raise Invalid.
        Its default is the options' defaults, parsed and converted the same way when first
        needed (not at import: a type may import a lot, and --help needs none of it)."""
        declared = Declared(options=(self, *more), convert=convert)
        return dataclasses.field(default_factory=declared.default, metadata={_METADATA_KEY: declared})


@dataclasses.dataclass(frozen=True)
class Declared:
    """A field of Settings and the options that set it."""

    options: Tuple[Option, ...]
    convert: Optional[Callable[..., Any]] = None
    field: str = ""

    @property
    def group(self) -> Group:
        return self.options[0].group

    def value(self, values: Dict[str, object]) -> object:
        """The field's value from the options' parsed values (keyed by option name)."""
        raw = [values[o.name] for o in self.options]
        return self.convert(*raw) if self.convert is not None else raw[0]

    def default(self) -> object:
        """The field's default (a mutable one copied: instances do not share it)."""
        value = _default(self)
        return copy.copy(value) if isinstance(value, (dict, list)) else value


@functools.lru_cache(maxsize=None)
def _default(declared: Declared) -> object:
    return declared.value({o.name: o.parse(o.default) for o in declared.options})


def declarations(settings_class: type) -> Tuple[Declared, ...]:
    """The declared fields of a Settings dataclass, in their order."""
    out = []
    for f in dataclasses.fields(settings_class):
        declared = f.metadata.get(_METADATA_KEY)
        if declared is not None:
            out.append(dataclasses.replace(declared, field=f.name))
    return tuple(out)


def options(settings_class: type) -> Tuple[Option, ...]:
    """Every option of a Settings dataclass, in the order of its fields."""
    return tuple(o for d in declarations(settings_class) for o in d.options)
