"""The release's own artefacts: one version everywhere (.ci/version.py), the revision every
build records (setup.py), the license, the image's lock file and build context, and the
chart's metadata. Building, installing and running the artefacts is .ci/package's and
.ci/build-image's job (docs/releasing.md says what CI proves)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from celery_exporter import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "celery-exporter"
IMAGE = "ghcr.io/celery-exporter/celery-exporter"
HOME = "https://github.com/celery-exporter/celery-exporter"
DOCS = "https://celery-exporter.github.io/celery-exporter/"


def pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def chart() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# -- one version ----------------------------------------------------------------------------


def test_every_copy_of_the_version_is_the_packages():
    project = pyproject()
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "celery_exporter.__version__"}
    meta = chart()
    assert meta["version"] == meta["appVersion"] == __version__
    images = yaml.safe_load(meta["annotations"]["artifacthub.io/images"])
    assert images == [{"name": "celery-exporter", "image": f"{IMAGE}:{__version__}"}]
    assert re.findall(r"^ARG VERSION=(.*)$", (ROOT / "Dockerfile").read_text(), re.M) == [__version__]
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", read("CHANGELOG.md"), re.M)
    result = run_version_script(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def read(name: str) -> str:
    return (ROOT / name).read_text()


def run_version_script(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / ".ci" / "version.py"), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def copy(tmp_path):
    """The files .ci/version.py reads and writes, in a copy of the repository's layout."""
    for name in ["celery_exporter/__init__.py", "Dockerfile", "CHANGELOG.md", "README.md", ".ci/version.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (tmp_path / "helm" / "celery-exporter").mkdir(parents=True)
    for name in ["Chart.yaml", "README.md"]:
        shutil.copy(CHART / name, tmp_path / "helm" / "celery-exporter" / name)
    return tmp_path


def test_the_version_script_names_each_copy_that_disagrees(copy):
    dockerfile = copy / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f"ARG VERSION={__version__}", "ARG VERSION=9.9.9"))
    chart_yaml = copy / "helm" / "celery-exporter" / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace(f"{IMAGE}:{__version__}", f"{IMAGE}:0.0.1"))
    result = run_version_script(copy, "--check")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Dockerfile: ARG VERSION is 9.9.9, not {__version__}",
        f"helm/celery-exporter/Chart.yaml: {IMAGE}:<tag> is 0.0.1, not {__version__}",
    ]


def test_the_version_script_sets_every_copy_from_the_changelog_entry(copy):
    changelog = copy / "CHANGELOG.md"
    entry = "## [7.1.0] - 2027-01-02\n\n### Removed\n\n- `celery_task_gone_total`: query `x` instead. More.\n\n"
    # below whatever the Unreleased section holds (the release entry starts where it ends)
    changelog.write_text(changelog.read_text().replace("## [1.0.0] - ", entry + "## [1.0.0] - ", 1))
    result = run_version_script(copy, "7.1.0")
    assert result.returncode == 0, result.stderr
    assert '__version__ = "7.1.0"' in (copy / "celery_exporter" / "__init__.py").read_text()
    assert "ARG VERSION=7.1.0" in (copy / "Dockerfile").read_text()
    meta = yaml.safe_load((copy / "helm" / "celery-exporter" / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == "7.1.0"
    assert yaml.safe_load(meta["annotations"]["artifacthub.io/images"])[0]["image"] == f"{IMAGE}:7.1.0"
    changes = yaml.safe_load(meta["annotations"]["artifacthub.io/changes"])
    assert changes == [{"kind": "removed", "description": "celery_task_gone_total: query x instead"}]
    # a version without its CHANGELOG entry is refused, and nothing is written
    result = run_version_script(copy, "8.0.0")
    assert result.returncode == 1 and "no entry '## [8.0.0]" in result.stderr
    assert '__version__ = "7.1.0"' in (copy / "celery_exporter" / "__init__.py").read_text()


def test_the_charts_changes_annotation_is_the_changelog_entry():
    changes = yaml.safe_load(chart()["annotations"]["artifacthub.io/changes"])
    entry = read("CHANGELOG.md").split(f"## [{__version__}]", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in entry.splitlines() if line.startswith("- ")]
    assert len(changes) == len(bullets) > 0
    assert {c["kind"] for c in changes} <= {"added", "changed", "deprecated", "removed", "fixed", "security"}


# -- the revision a build records -----------------------------------------------------------


@pytest.fixture
def setup_py(tmp_path, monkeypatch):
    """setup.py's functions, with its directory moved to tmp_path (setup() itself is not run)."""
    spec = importlib.util.spec_from_file_location("celery_exporter_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    monkeypatch.delenv(module.ENVIRONMENT, raising=False)
    (tmp_path / "celery_exporter").mkdir()
    return module


def test_a_build_outside_git_without_a_carried_revision_records_unknown(setup_py):
    assert setup_py.source_revision() == "unknown"


def test_a_wheel_built_from_an_sdist_records_the_revision_the_sdist_carries(setup_py, tmp_path):
    (tmp_path / "celery_exporter" / "REVISION").write_text("abc123\n")
    assert setup_py.source_revision() == "abc123"


def test_a_build_in_a_git_checkout_records_head(setup_py, tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "celery_exporter" / "REVISION").write_text("stale\n")  # git wins over a stray file
    assert re.fullmatch("[0-9a-f]{40}", head) and setup_py.source_revision() == head


def test_the_environment_wins(setup_py, tmp_path, monkeypatch):
    (tmp_path / "celery_exporter" / "REVISION").write_text("abc123\n")
    monkeypatch.setenv(setup_py.ENVIRONMENT, " given ")
    assert setup_py.source_revision() == "given"


def test_writing_the_revision_never_writes_through_a_hard_link(setup_py, tmp_path):
    source = tmp_path / "source-REVISION"
    source.write_text("old\n")
    target = tmp_path / "celery_exporter" / "REVISION"
    os.link(source, target)
    setup_py.write_revision(tmp_path / "celery_exporter")
    assert source.read_text() == "old\n" and target.read_text() == "unknown\n"


# -- license, metadata, image ---------------------------------------------------------------


def test_mit_license_with_its_holder_everywhere():
    text = read("LICENSE")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The celery-exporter authors\n")
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # the SPDX expression says it
    assert 'org.opencontainers.image.licenses="MIT"' in read("Dockerfile")
    assert chart()["annotations"]["artifacthub.io/license"] == "MIT"


def test_the_published_metadata_names_the_project_and_carries_no_development_tools():
    project = pyproject()
    assert project["project"]["name"] == "celery-events-exporter"
    assert project["project"]["urls"]["Source"] == HOME and project["project"]["urls"]["Documentation"] == DOCS
    assert project["project"]["scripts"] == {"celery-exporter": "celery_exporter.cli:main"}
    assert "optional-dependencies" not in project["project"]
    assert set(project["dependency-groups"]) == {"test", "lint", "docs", "release", "dev"}
    assert (ROOT / "celery_exporter" / "py.typed").exists()
    assert project["tool"]["setuptools"]["package-data"] == {"celery_exporter": ["py.typed"]}


def lock_pins():
    """(name, version, marker or None, hash count) of each requirement in requirements.lock."""
    text = read("requirements.lock")
    out = []
    for block in re.split(r"\n(?=[a-z0-9])", text):
        match = re.match(r"([a-z0-9._-]+)==([^ ;\\]+)(?: ; ([^\\]+))?", block)
        if match:
            out.append((match.group(1), match.group(2), match.group(3), block.count("--hash=sha256:")))
    return out


def test_the_lock_pins_each_dependency_within_pyproject_and_hashes_every_pin():
    pins = lock_pins()
    assert pins and all(hashes > 0 for _, _, _, hashes in pins)
    by_name = {}
    for name, version, _, _ in pins:
        by_name.setdefault(name.replace("_", "-").replace(".", "-"), []).append(version)
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        versions = by_name.get(requirement.name.lower().replace("_", "-").replace(".", "-"))
        assert versions, f"{requirement.name} is not in requirements.lock: run bash .ci/lock"
        assert all(requirement.specifier.contains(v) for v in versions), (line, versions)
    assert "celery-events-exporter" not in by_name  # the lock holds the dependencies, not the project


def test_the_image_installs_the_lock_with_hash_checking_and_checks_itself():
    text = read("Dockerfile")
    assert text.count("pip install --require-hashes") == 2 and text.count("-r /src/requirements.lock") == 2
    assert "pip check" in text
    for label in ("source", "version", "revision", "licenses", "documentation"):
        assert f"org.opencontainers.image.{label}=" in text
    assert f'org.opencontainers.image.source="{HOME}"' in text
    assert re.search(r'^    CMD \["celery-exporter", "healthcheck"', text, re.M)


def test_the_build_context_leaves_out_everything_git_ignores_but_the_wheels():
    ignored = [line.rstrip("/") for line in read(".gitignore").splitlines() if line and not line.startswith("#")]
    docker = {line for line in read(".dockerignore").splitlines() if line and not line.startswith("#")}
    assert ".wheels" in ignored and ".wheels" not in docker  # .ci/build-image puts the wheels there
    missing = [i for i in ignored if i != ".wheels" and not ({i, f"**/{i}"} & docker or i.startswith(".venv"))]
    assert missing == []
    assert {".venv", ".venv-*", ".git"} <= docker


def test_the_chart_names_its_home_sources_maintainers_and_artifact_hub_links():
    meta = chart()
    assert meta["home"] == DOCS and meta["sources"] == [HOME]
    assert meta["maintainers"] == [{"name": "The celery-exporter authors", "url": HOME}]
    links = yaml.safe_load(meta["annotations"]["artifacthub.io/links"])
    assert {link["name"] for link in links} == {"Documentation", "Changelog"}
    assert all(link["url"].startswith("https://") for link in links)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"] == IMAGE
