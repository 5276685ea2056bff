"""Fixtures shared by the artifact tests."""

from __future__ import annotations

import os
import subprocess

import pytest

from .test_helm import tool


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    binary = tool("helm", "run .ci/install-helm (it puts helm in .tools/bin)")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    return run
