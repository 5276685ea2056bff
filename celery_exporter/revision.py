"""The source revision this copy of the package was built from: the REVISION file that the
build writes beside this module (see setup.py), or "unknown" (an editable install, or a
build from a tree with neither git nor that file)."""

from __future__ import annotations

import functools
from pathlib import Path

UNKNOWN = "unknown"


@functools.lru_cache(maxsize=None)
def revision() -> str:
    try:
        text = Path(__file__).with_name("REVISION").read_text().strip()
    except OSError:
        return UNKNOWN
    return text or UNKNOWN
