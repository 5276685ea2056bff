"""Build-time only: everything else about the package is declared in pyproject.toml.

Every wheel and sdist carries the source revision it was built from, in the file
celery_exporter/REVISION, which `celery-exporter --version` and the `revision` label of
celery_exporter_build_info read (celery_exporter/revision.py). The revision is, in order:

1. the environment variable CELERY_EXPORTER_BUILD_REVISION, when set (an image build whose
   context has no .git passes its REVISION build argument this way);
2. `git rev-parse HEAD`, when this directory is a git checkout;
3. the REVISION file that the sdist carries (a wheel built from an sdist);
4. "unknown".

An editable install has no REVISION file, so it reports "unknown".
"""

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PACKAGE = "celery_exporter"
REVISION_FILE = "REVISION"
ENVIRONMENT = "CELERY_EXPORTER_BUILD_REVISION"


def source_revision() -> str:
    given = os.environ.get(ENVIRONMENT, "").strip()
    if given:
        return given
    if (HERE / ".git").exists():  # a directory, or a file in a git worktree
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=30, check=True
            )
            return out.stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            return "unknown"
    carried = HERE / PACKAGE / REVISION_FILE
    if carried.is_file():
        return carried.read_text().strip() or "unknown"
    return "unknown"


def write_revision(package_dir: Path) -> None:
    target = package_dir / REVISION_FILE
    if target.exists():
        target.unlink()  # never write through a hard link into the source tree
    target.write_text(source_revision() + "\n")


class BuildPyWithRevision(build_py):
    def run(self) -> None:
        super().run()
        if not self.dry_run and not getattr(self, "editable_mode", False):
            write_revision(Path(self.build_lib) / PACKAGE)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PACKAGE / REVISION_FILE))
        return outputs


class SdistWithRevision(sdist):
    def make_release_tree(self, base_dir: str, files: list) -> None:
        super().make_release_tree(base_dir, files)
        if not self.dry_run:
            write_revision(Path(base_dir) / PACKAGE)


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithRevision, "sdist": SdistWithRevision})
