"""Each setting of the exporter declared once, and everything derived from the declarations.

- `model`: the frozen, typed `Settings` every component reads. Each of its fields that is
  an option is declared where the field is (`Option(...).field()`): flags and aliases,
  environment variables, value type, default, help text, docs group, Helm value.
  Checks across settings (`CHECKS`) follow the class.
- `params`: the value types (durations, key=value, bucket bounds, comma-separated names,
  broker URLs), as click parameter types.
- `declaration`: `Option`, the docs' `Group`s, and `declarations()`, which reads the
  declarations back from the dataclass.
- `build`: the click parameters of the command (`click_params`), and `build_settings`,
  which turns their parsed values (and an `--app`'s) into Settings.
- `reference`: `reference_markdown()`, the docs' configuration reference.
- `chart`: the Helm chart's `config` values, their schema and the named templates that pass
  them to the exporter (written into the chart by helm/sync.py).

To add a setting: a field of Settings declared with an Option (a choice is
`type=click.Choice([...])`), then `python helm/sync.py` to regenerate the chart's files. The
components read the field; nothing else needs to know.
"""

from celery_exporter.settings.build import build_settings, click_params, given_options
from celery_exporter.settings.declaration import Group, Invalid, Option, declarations
from celery_exporter.settings.model import BrokerSsl, Settings
from celery_exporter.settings.params import JSONValue
from celery_exporter.settings.reference import reference_markdown

__all__ = [
    "BrokerSsl",
    "Group",
    "Invalid",
    "JSONValue",
    "Option",
    "Settings",
    "build_settings",
    "click_params",
    "declarations",
    "given_options",
    "reference_markdown",
]
