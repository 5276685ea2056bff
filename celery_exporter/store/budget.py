"""The --max-series cap, shared by every concern that creates label sets.

Task label sets, exception label sets and workers all count against one total. The budget
admits a new label set while the total is below the cap and counts what it refused; the
concerns hand label sets back when they expire (counted) or leave (a worker-offline).
Called with the store's lock held.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

KINDS = ("task", "exception", "worker")


@dataclasses.dataclass(frozen=True)
class SeriesSnapshot:
    held: Dict[str, int]  # label sets in memory, by kind (including expired, not yet swept)
    expired: Dict[str, int]  # removed after their TTL, since start
    refused: Dict[str, int]  # refused at the cap, since start


class SeriesBudget:
    def __init__(self, max_series: int):
        self.max_series = max_series
        self._held = dict.fromkeys(KINDS, 0)
        self._expired = dict.fromkeys(KINDS, 0)
        self._refused = dict.fromkeys(KINDS, 0)
        self._total = 0

    def admit(self, kind: str) -> bool:
        """Take one label set of `kind`; False (and counted as refused) at the cap."""
        if self._total >= self.max_series:
            self._refused[kind] += 1
            return False
        self._held[kind] += 1
        self._total += 1
        return True

    def release(self, kind: str, n: int = 1, expired: bool = False) -> None:
        self._held[kind] -= n
        self._total -= n
        if expired:
            self._expired[kind] += n

    def snapshot(self) -> SeriesSnapshot:
        return SeriesSnapshot(dict(self._held), dict(self._expired), dict(self._refused))
