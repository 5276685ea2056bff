"""What a session ran on: the machine, the library versions, the commit of this checkout,
and each build under test."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, Dict, List, Optional

from harness.builds import Build
from harness.procs import REPO


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def command_output(cmd: List[str], timeout: Optional[float] = None) -> Optional[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def checkout() -> Dict[str, Any]:
    """This checkout's commit, and whether its package has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        status = ["git", "-C", REPO, "status", "--porcelain", "--", "celery_exporter"]
        dirty = bool(subprocess.run(status, capture_output=True, text=True).stdout.strip())
    except OSError:
        return {"git_commit": None, "package_dirty": None}
    return {"git_commit": commit, "package_dirty": dirty}


def machine_info(args: Any, brokers: List[str], builds: Dict[str, Build]) -> dict:
    from importlib.metadata import version

    import celery
    import kombu
    import redis as redis_py

    rabbitmq_version = None
    if "rabbitmq" in brokers:
        rabbitmq_version = command_output([args.rabbitmqctl, "-q", "version"], timeout=30)
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis_py.__version__,
        "prometheus_client": version("prometheus_client"),
        "exporter": version("celery-events-exporter"),
        "redis_server": command_output([args.redis_server, "--version"]),
        "rabbitmq_server": rabbitmq_version,
        "amqp_py": version("amqp"),
        **checkout(),
        "consumer_core": args.consumer_core,
        "generator_core": args.generator_core,
        "loadavg_at_start": os.getloadavg(),
        "builds": {name: b.describe() for name, b in builds.items()},
    }
