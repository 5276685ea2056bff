"""What a release carries in the package: the source revision it was built from, in
celery_exporter_build_info."""

from __future__ import annotations

import platform

import celery
import pytest

from celery_exporter import __version__
from celery_exporter import revision as revision_module

from .conftest import Rig


@pytest.fixture
def revision_file(tmp_path, monkeypatch):
    """The package's REVISION file, moved into tmp_path: returns its path."""
    monkeypatch.setattr(revision_module, "__file__", str(tmp_path / "revision.py"))
    revision_module.revision.cache_clear()
    yield tmp_path / "REVISION"
    revision_module.revision.cache_clear()


def test_the_revision_is_the_file_the_build_writes(revision_file):
    revision_file.write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert revision_module.revision() == "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["no file", "empty", "blank"])
def test_without_a_revision_file_the_revision_is_unknown(revision_file, content):
    if content is not None:
        revision_file.write_text(content)
    assert revision_module.revision() == "unknown"


def test_build_info_carries_the_version_and_the_revision():
    rig = Rig()
    labels = {
        "version": __version__,
        "revision": revision_module.revision(),
        "celery_version": celery.__version__,
        "kombu_version": __import__("kombu").__version__,
        "python_version": platform.python_version(),
    }
    assert rig.value("celery_exporter_build_info", **labels) == 1
    assert len(rig.family("celery_exporter_build_info")) == 1
