"""How fast the generator goes. Paced (--rate, events/s over all shards, heartbeats
included): each loop iteration takes as many pipeline steps as it is behind (a step is
about 4 events), at most --chunk, and sleeps when it is not behind. Unpaced (--rate 0):
--chunk steps per iteration. Fresh tasks stop after --tasks; or, without --tasks, after
--duration seconds or (with --rate) once rate x duration events were emitted, whichever
comes first."""

from __future__ import annotations

import argparse
from typing import Optional


class Pacing:
    def __init__(self, args: argparse.Namespace):
        self.chunk = args.chunk
        self.duration: Optional[float] = args.duration if args.tasks is None else None
        self.rate = args.rate / args.shards if args.rate else 0.0
        self.budget = int(self.rate * args.duration) if (self.rate and args.duration and args.tasks is None) else None

    def stop_new(self, emitted: int, elapsed: float) -> bool:
        """Is it time to stop creating tasks?"""
        if self.budget is not None and emitted >= self.budget:
            return True
        return self.duration is not None and self.duration > 0 and elapsed >= self.duration

    def steps(self, emitted: int, elapsed: float) -> int:
        """Pipeline steps for this loop iteration."""
        if not self.rate:
            return int(self.chunk)
        behind = self.rate * elapsed - emitted
        return min(self.chunk, int(behind // 4) + 1) if behind >= 1 else 0

    def next_event_at(self, start: float, emitted: int) -> float:
        """When, paced, the generator is due a few events again."""
        return start + (emitted + 4) / self.rate
