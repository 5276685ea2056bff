"""From the command line to Settings: the click options derived from the declarations, and
the Settings built from their parsed values (with `--app`, the Celery app's values for the
options the user did not give), each setting converted, then checked across settings.
A refused value raises click.BadParameter naming its flag."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

import click
from click.core import ParameterSource

from celery_exporter.settings.declaration import Declared, Invalid, Option, declarations, options
from celery_exporter.settings.model import CHECKS, INCUMBENT, INCUMBENT_ONLY, INCUMBENT_SAME_FLAGS, Settings

DECLARED = declarations(Settings)
OPTIONS = {o.name: o for o in (*options(Settings), *INCUMBENT_ONLY)}
# the incumbent's environment variables: its click prefix CE_ and the flag's name
INCUMBENT_ENV_PREFIX = "CE_"


def click_params(names: Optional[Sequence[str]] = None, envvar: bool = True) -> List[click.Parameter]:
    """The options (all, or those named) as parameters of a click command, in order."""
    chosen = [OPTIONS[n] for n in names] if names is not None else list(OPTIONS.values())
    return [option.click_option(envvar) for option in chosen]


def given_options(ctx: click.Context) -> Set[str]:
    """The options a user gave, on the command line or in the environment."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }


def build_settings(values: Dict[str, Any], given: Optional[Set[str]] = None) -> Settings:
    """Settings from the options' parsed values (keyed by option name; a missing one takes its
    default). With --app, the options not in `given` (those the user did not give on the
    command line or in the environment) take the Celery app's values."""
    values = {**{name: o.parse(o.default) for name, o in OPTIONS.items() if name not in values}, **values}
    _refuse_incumbent(values, given or set())
    extra: Dict[str, Any] = {}
    if values.get("app"):
        extra = _from_app(values["app"], values, given or set())
    fields = {d.field: _field_value(d, values) for d in DECLARED}
    settings = Settings(**fields, **extra)
    for check in CHECKS:
        try:
            check(settings)
        except Invalid as exc:
            raise click.BadParameter(str(exc), param_hint=f"'{exc.flag}'" if exc.flag else None) from None
    return settings


def _refuse_incumbent(values: Dict[str, Any], given: Set[str]) -> None:
    """The incumbent's flags that cannot be applied, or given together with their
    replacement: refused naming the flag. Those with no setting here are taken out."""
    for option in INCUMBENT_ONLY:
        value = values.pop(option.name)
        if value not in (None, (), False) and option.refusal(value):
            raise click.BadParameter(option.refusal(value), param_hint=f"'{option.long_flag}'")
    for declared in DECLARED:
        ours = declared.options[0]
        for option in declared.options[1:]:
            if option.deprecated and not option.is_flag and option.name in given and ours.name in given:
                raise click.BadParameter(
                    f"given together with {ours.long_flag}: give {ours.long_flag} only",
                    param_hint=f"'{option.long_flag}'",
                )


def deprecations(given: Set[str]) -> List[str]:
    """A line for each of the incumbent's flags given: its deprecation and what to use."""
    return [
        f"{o.long_flag} is {INCUMBENT}'s flag, deprecated here: {o.deprecated}"
        for o in OPTIONS.values()
        if o.deprecated and o.name in given
    ]


def incumbent_flags() -> List[Option]:
    """The incumbent's flags, accepted or refused, in declaration order (those it shares
    with this exporter, unchanged, are INCUMBENT_SAME_FLAGS)."""
    return [o for o in OPTIONS.values() if o.incumbent]


def replaced_by(option: Option) -> Optional[Option]:
    """This exporter's option that an accepted flag of the incumbent is another name of (None:
    the flag has no option of ours beside it)."""
    for declared in DECLARED:
        if option in declared.options[1:] and not declared.options[0].incumbent:
            return declared.options[0]
    return None


def incumbent_environment(environ: Mapping[str, str]) -> List[str]:
    """Refusals of the incumbent's environment variables (CE_BROKER_URL...) found in
    `environ`: none is read here, so each says which variable to set instead."""
    same = [(flag, next(o for o in OPTIONS.values() if flag in o.flags)) for flag in INCUMBENT_SAME_FLAGS]
    out = []
    for flag, option in [*same, *((o.long_flag, o) for o in incumbent_flags())]:
        name = INCUMBENT_ENV_PREFIX + flag[2:].replace("-", "_").upper()
        if name not in environ:
            continue
        ours = replaced_by(option) if option.incumbent else option
        instead = f"set {ours.env[0]} instead" if ours else f"its flag {flag}: {option.refused or option.deprecated}"
        out.append(f"{name} is {INCUMBENT}'s environment variable, not read here: {instead}")
    return out


def _field_value(declared: Declared, values: Dict[str, Any]) -> Any:
    try:
        return declared.value(values)
    except Invalid as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.flag or declared.options[0].long_flag}'") from None


def _from_app(spec: str, values: Dict[str, Any], given: Set[str]) -> Dict[str, Any]:
    """Puts the app's option values into `values` where the user gave none; returns the
    fields that only the app sets (its beat schedule)."""
    from celery_exporter import app_config

    try:
        config = app_config.load(spec)
    except app_config.AppError as exc:
        raise click.BadParameter(str(exc), param_hint="'--app'") from None
    for name, value in config.options.items():
        if name not in given:
            values[name] = _parse_from_app(OPTIONS[name], value)
    return {"beat_entries": config.beat_entries, "beat_database_app": config.beat_database_app}


def _parse_from_app(option: Option, value: object) -> object:
    try:
        return option.parse(value)
    except click.BadParameter as exc:
        raise click.BadParameter(f"the app's {option.name}: {exc.message}", param_hint="'--app'") from None
