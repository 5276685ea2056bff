#!/usr/bin/env python3
"""The files of requirements.lock that an image's Python installs, downloaded with hash
checking, for image builds without a package index (.ci/build-image).

    python3 - --describe < .ci/image-wheels.py
        run by the image's own python3 (standard library only): prints its environment as
        JSON (PEP 508 marker values, glibc version, CPython ABI)
    python3 .ci/image-wheels.py --download TARGET.json requirements.lock DIRECTORY
        keeps the lock's requirements whose markers hold for that Python, and has pip
        download their wheels for its platform and ABI into DIRECTORY, checking every
        file's sha256 against the lock (needs pip and packaging: the CI venv has both)

The host's own Python may differ from the image's (requirements.lock has markers such as
python_full_version < '3.11.3'), which is why the markers are evaluated for the image's.
"""

import json
import os
import platform
import re
import subprocess
import sys


def describe() -> dict:
    impl = sys.implementation
    version = impl.version
    impl_version = f"{version.major}.{version.minor}.{version.micro}"
    if version.releaselevel != "final":
        impl_version += version.releaselevel[0] + str(version.serial)
    libc, libc_version = platform.libc_ver()
    return {
        "markers": {
            "implementation_name": impl.name,
            "implementation_version": impl_version,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_python_implementation": platform.python_implementation(),
            "platform_release": platform.release(),
            "platform_system": platform.system(),
            "platform_version": platform.version(),
            "python_full_version": platform.python_version(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        },
        "libc": [libc, libc_version],
        "abi": f"cp{sys.version_info.major}{sys.version_info.minor}",
    }


def platforms(target: dict) -> list:
    """The manylinux platform tags the image's glibc takes, newest first (pip does not
    expand a `--platform manylinux_2_X` to the older ones by itself)."""
    machine = target["markers"]["platform_machine"]
    libc, version = target["libc"]
    if libc != "glibc":
        raise SystemExit(f"the image's C library is {libc or 'unknown'}, not glibc: no manylinux wheels")
    major, minor = (int(part) for part in version.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{machine}" for m, name in legacy.items() if m <= minor]


def selected(lock_text: str, markers: dict) -> str:
    """The lock's requirements whose markers hold for `markers`, markers removed, hashes kept."""
    from packaging.markers import Marker

    out = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text):
        lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
        if not lines or lines[0].startswith("-"):
            continue
        first = lines[0].rstrip(" \\")
        requirement, _, marker = first.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(markers):
            continue
        hashes = [line.strip().rstrip(" \\") for line in lines[1:] if line.strip().startswith("--hash=")]
        if not hashes:
            raise SystemExit(f"requirements.lock: {requirement.strip()} has no hashes")
        out.append(" \\\n    ".join([requirement.strip(), *hashes]))
    return "\n".join(out) + "\n"


def download(target_path: str, lock_path: str, directory: str) -> None:
    with open(target_path) as f:
        target = json.load(f)
    markers = target["markers"]
    with open(lock_path) as f:
        chosen = selected(f.read(), markers)
    chosen_path = os.path.join(directory, "image-requirements.txt")
    os.makedirs(directory, exist_ok=True)
    with open(chosen_path, "w") as f:
        f.write(chosen)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
    argv += ["--only-binary=:all:", "--implementation", "cp", "--abi", target["abi"]]
    argv += ["--python-version", markers["python_full_version"], "--dest", directory, "-r", chosen_path]
    for tag in platforms(target):
        argv += ["--platform", tag]
    subprocess.run(argv, check=True)
    os.remove(chosen_path)
    print(f"{chosen.count('==')} locked requirements for Python {markers['python_full_version']} ({target['abi']})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--describe"]:
        print(json.dumps(describe()))
    elif len(sys.argv) == 5 and sys.argv[1] == "--download":
        download(*sys.argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
