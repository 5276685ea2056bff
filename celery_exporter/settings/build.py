"""From the command line to Settings: the click options derived from the declarations, and
the Settings built from their parsed values (with `--app`, the Celery app's values for the
options the user did not give), each setting converted, then checked across settings.
A refused value raises click.BadParameter naming its flag."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set

import click
from click.core import ParameterSource

from celery_exporter.settings.declaration import Declared, Invalid, Option, declarations, options
from celery_exporter.settings.model import CHECKS, Settings

DECLARED = declarations(Settings)
OPTIONS = {o.name: o for o in options(Settings)}


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
