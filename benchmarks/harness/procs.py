"""Paths, ports and child processes, shared by the runner's modules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
REPO = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def on_core(core: int, cmd: List[str]) -> List[str]:
    """`cmd` pinned to one core with taskset."""
    return ["taskset", "-c", str(core), *cmd]


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def clean_env() -> Dict[str, str]:
    """The environment for every child: none of the exporter's settings from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_") and k != "CELERY_BROKER_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    return env
