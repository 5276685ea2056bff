"""Prometheus exporter for Celery."""

# The one place of the version: pyproject.toml reads it, and the copies that cannot read it
# (the Dockerfile's VERSION, the chart's version, appVersion and Artifact Hub image) are
# written by `python .ci/version.py X.Y.Z` and checked by tests/artifacts/test_release.py.
__version__ = "1.0.0"
