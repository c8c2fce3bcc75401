"""Parallel degrees (tensor x data): one validated dataclass, built from the job's ParallelConfig.

Layout: tensor-parallel groups are runs of consecutive ranks, data-parallel groups are strided.
With tp 2 x dp 3 (world 6):

    tensor-parallel groups: [0, 1] [2, 3] [4, 5]      (dp index = rank // tp)
    data-parallel groups:   [0, 2, 4] [1, 3, 5]       (tp index = rank % tp)

Consecutive TP ranks land on the same host (and the same NVLink island) when ranks are numbered
host by host, which is where TP's per-layer all-reduces belong; data-parallel traffic is once
per step and tolerates the slower links. The process groups themselves are made in
`parallel/groups.py`; this module is pure arithmetic, so the job config validates with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelDims:
    """How `world_size` ranks split into tensor-parallel x data-parallel."""

    tp: int
    """Tensor-parallel degree: ranks that hold slices of the same layers."""
    dp: int
    """Data-parallel degree: model replicas (each one tp ranks) reading different data."""
    world_size: int
    """Number of ranks; must equal tp * dp."""

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tensor-parallel degree tp = {self.tp}: must be >= 1")
        if self.dp < 1:
            raise ValueError(f"data-parallel degree dp = {self.dp}: must be >= 1")
        if self.tp * self.dp != self.world_size:
            raise ValueError(
                f"parallel degrees do not cover the world: tp {self.tp} x dp {self.dp} != world {self.world_size}"
            )

    @classmethod
    def from_world(cls, world_size: int, tp: int) -> ParallelDims:
        """dp derived from the world size; fails (showing the product) when tp does not divide it."""
        if tp < 1:
            raise ValueError(f"tensor-parallel degree tp = {tp}: must be >= 1")
        return cls(tp=tp, dp=max(world_size // tp, 1), world_size=world_size)

    def tp_rank(self, rank: int) -> int:
        """Position of `rank` inside its tensor-parallel group."""
        return rank % self.tp

    def dp_rank(self, rank: int) -> int:
        """Index of the model replica `rank` belongs to (its data-parallel rank)."""
        return rank // self.tp

    def tp_group_ranks(self, dp_index: int) -> list[int]:
        """Global ranks of the tensor-parallel group of replica `dp_index` (consecutive)."""
        return list(range(dp_index * self.tp, (dp_index + 1) * self.tp))

    def dp_group_ranks(self, tp_index: int) -> list[int]:
        """Global ranks holding tensor-parallel slice `tp_index` (strided by tp)."""
        return list(range(tp_index, self.world_size, self.tp))

