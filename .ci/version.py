#!/usr/bin/env python3
"""The version has one place, `__version__` in celery_exporter/__init__.py: pyproject.toml
reads it, and so do `--version` and celery_exporter_build_info. The files that cannot read
it carry copies, which this script writes and checks:

- Dockerfile: the default of `ARG VERSION` (the image's OCI version label; the build
  checks it against the installed package);
- helm/celery-exporter/Chart.yaml: `version` and `appVersion` (chart and exporter are
  released together, under one version), and the `artifacthub.io/changes` annotation, made
  from the version's CHANGELOG.md entry;
- every reference to the published image, `ghcr.io/celery-exporter/celery-exporter:<tag>`,
  in Chart.yaml (the `artifacthub.io/images` annotation) and in the documentation (but
  docs/releasing.md, whose commands are examples).

CHANGELOG.md must hold an entry `## [X.Y.Z] - YYYY-MM-DD` for the version.

    python .ci/version.py            print each place and its version; exit 1 if any disagrees
    python .ci/version.py --check    the same, quietly: exit 1 naming each place that disagrees
    python .ci/version.py X.Y.Z      set the version: __init__.py, then every copy (the
                                     CHANGELOG entry for X.Y.Z must be written first)

tests/artifacts/test_release.py runs `--check`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/celery-exporter/celery-exporter"
SEMVER = r"[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?"
# files that may name the published image with a tag; the tag must be the version
IMAGE_FILES = ["helm/celery-exporter/Chart.yaml", "helm/celery-exporter/README.md", "README.md", "docs/*.md"]
NOT_IMAGE_FILES = ["docs/releasing.md"]  # its commands are examples, for a release to come
# Keep a Changelog's section names, as Artifact Hub's change kinds
CHANGE_KINDS = {
    "Added": "added",
    "Changed": "changed",
    "Deprecated": "deprecated",
    "Removed": "removed",
    "Fixed": "fixed",
    "Security": "security",
}


class Place:
    """One copy of the version in one file: a pattern whose group 1 is the version."""

    def __init__(self, path: str, what: str, pattern: str):
        self.path, self.what = path, what
        self.pattern = re.compile(pattern, re.M)

    def found(self, root: Path) -> List[str]:
        return [m.group(1) for m in self.pattern.finditer((root / self.path).read_text())]

    def write(self, root: Path, version: str) -> None:
        path = root / self.path
        text = path.read_text()
        path.write_text(self.pattern.sub(lambda m: m.group(0).replace(m.group(1), version), text))


SOURCE = Place("celery_exporter/__init__.py", "__version__", rf'^__version__ = "({SEMVER})"$')
COPIES = [
    Place("Dockerfile", "ARG VERSION", rf"^ARG VERSION=({SEMVER})$"),
    Place("helm/celery-exporter/Chart.yaml", "version", rf"^version: ({SEMVER})$"),
    Place("helm/celery-exporter/Chart.yaml", "appVersion", rf'^appVersion: "({SEMVER})"$'),
]


def image_places(root: Path) -> List[Place]:
    paths = sorted({p.relative_to(root).as_posix() for pattern in IMAGE_FILES for p in root.glob(pattern)})
    paths = [p for p in paths if p not in NOT_IMAGE_FILES]
    return [Place(p, f"{IMAGE}:<tag>", rf"{re.escape(IMAGE)}:({SEMVER})\b") for p in paths]


def changelog_entry(root: Path, version: str) -> Optional[List[Tuple[str, str]]]:
    """The (kind, text) changes of the version's CHANGELOG entry, or None without one. A
    change is a top-level bullet; its text is the bullet's first sentence, on one line,
    without Markdown's code spans, emphasis and links."""
    text = (root / "CHANGELOG.md").read_text()
    match = re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        return None
    changes: List[Tuple[str, str]] = []
    kind = ""
    for block in re.split(r"\n(?=### |- )", match.group(1)):
        if block.startswith("### "):
            kind = CHANGE_KINDS.get(block[4:].splitlines()[0].strip(), "")
        elif block.startswith("- ") and kind:
            bullet = " ".join(block[2:].split())
            first = re.split(r"(?<=\.)\s", bullet, maxsplit=1)[0].rstrip(".")
            changes.append((kind, re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", first)))
    return changes


def changes_annotation(changes: List[Tuple[str, str]]) -> str:
    """The `artifacthub.io/changes` annotation's lines (a YAML list in a literal block)."""
    lines = ["  artifacthub.io/changes: |"]
    for kind, text in changes:
        quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines += [f"    - kind: {kind}", f"      description: {quoted}"]
    return "\n".join(lines) + "\n"


CHANGES_BLOCK = re.compile(r"^  artifacthub\.io/changes: \|\n(?:    .*\n)*", re.M)


def chart_changes_problem(root: Path, version: str) -> Optional[str]:
    changes = changelog_entry(root, version)
    if changes is None:
        return f"CHANGELOG.md: no entry '## [{version}] - YYYY-MM-DD'"
    chart = (root / "helm/celery-exporter/Chart.yaml").read_text()
    block = CHANGES_BLOCK.search(chart)
    if block is None or block.group(0) != changes_annotation(changes):
        return f"helm/celery-exporter/Chart.yaml: artifacthub.io/changes is not the CHANGELOG entry of {version}"
    return None


def problems(root: Path = ROOT) -> Tuple[str, List[str]]:
    """The version, and a line for each place that does not carry it."""
    (version,) = SOURCE.found(root)
    out = []
    for place in COPIES + image_places(root):
        seen = place.found(root)
        if place in COPIES and len(seen) != 1:
            out.append(f"{place.path}: {place.what}: expected once, found {len(seen)} times")
        out += [f"{place.path}: {place.what} is {v}, not {version}" for v in seen if v != version]
    problem = chart_changes_problem(root, version)
    return version, out + ([problem] if problem else [])


def set_version(root: Path, version: str) -> None:
    changes = changelog_entry(root, version)
    if changes is None:
        raise SystemExit(f"CHANGELOG.md has no entry '## [{version}] - YYYY-MM-DD': write it first")
    for place in [SOURCE, *COPIES, *image_places(root)]:
        place.write(root, version)
    chart = root / "helm/celery-exporter/Chart.yaml"
    text = chart.read_text()
    if CHANGES_BLOCK.search(text) is None:
        raise SystemExit(f"{chart}: needs an '  artifacthub.io/changes: |' annotation to rewrite")
    chart.write_text(CHANGES_BLOCK.sub(lambda _: changes_annotation(changes), text))


def main(argv: List[str], root: Path = ROOT) -> int:
    if argv and argv[0] not in ("--check",):
        if not re.fullmatch(SEMVER, argv[0]) or len(argv) > 1:
            print("usage: version.py [--check | X.Y.Z]", file=sys.stderr)
            return 2
        set_version(root, argv[0])
    version, found = problems(root)
    for line in found:
        print(line, file=sys.stderr)
    if not argv:
        for place in [SOURCE, *COPIES, *image_places(root)]:
            for seen in place.found(root):
                print(f"{place.path}: {place.what} = {seen}")
        print(f"version {version}: " + ("the copies disagree" if found else "every copy agrees"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
