"""Failure drills: faults injected on purpose, to prove that training survives them.

A drill is a step hook the trainer calls after each optimizer step; real runs have none.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailureDrill:
    """The last rank exits abruptly, once, after step `after_step` and before its checkpoint.

    A marker file in `marker_dir` records that it happened, so the restarted worker group does not
    crash again; the folder must outlive the worker (shared storage on a cluster).
    """

    after_step: int
    marker_dir: str
    wait_s: float = 0.0
    """Seconds to wait before exiting. Ray Train's controller collects a reported checkpoint when it
    next polls the workers; a step of a real run outlasts that poll, a CPU test's step may not, and a
    worker that dies first leaves that checkpoint unregistered (the restart begins from the one before)."""

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step == self.after_step and rank == world - 1:
            if self.wait_s and not (Path(self.marker_dir) / "crashed").exists():
                time.sleep(self.wait_s)
            crash_once(Path(self.marker_dir))


def crash_once(marker_dir: Path) -> None:
    """Die like a preempted node would: no exception, no cleanup, no checkpoint."""
    marker = marker_dir / "crashed"
    if marker.exists():
        return
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    print(f"failure drill: rank exits now (marker {marker})", flush=True)
    os._exit(1)
