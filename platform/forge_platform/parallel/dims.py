"""Parallel degrees (tensor x context x data): one validated dataclass, built from the job's ParallelConfig.

Layout: tensor parallel innermost, then context parallel, then data parallel. A rank's
coordinates are

    tp_rank = rank % tp,   cp_rank = (rank // tp) % cp,   dp_rank = rank // (tp * cp)

With tp 2 x cp 2 x dp 2 (world 8):

    tensor-parallel groups:  [0, 1] [2, 3] [4, 5] [6, 7]        (consecutive ranks)
    context-parallel groups: [0, 2] [1, 3] [4, 6] [5, 7]        (stride tp)
    data-parallel groups:    [0, 4] [1, 5] [2, 6] [3, 7]        (stride tp * cp)
    replica groups (dp x cp): [0, 2, 4, 6] [1, 3, 5, 7]         (stride tp: same TP slice)

Consecutive TP ranks land on the same host (and the same NVLink island) when ranks are numbered
host by host, which is where TP's per-layer all-reduces belong; CP's per-mixer collectives come
next (inside the node whenever tp * cp <= GPUs per node), and data-parallel traffic is once per
step and tolerates the slower links. CP ranks hold the same weights and different sequence shards
of the same rows, so gradients are reduced over the replica group (dp x cp): that is DeepSpeed's
data-parallel group (parallel/mpu.py). The process groups themselves are made in
`parallel/groups.py`; this module is pure arithmetic, so the job config validates with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelDims:
    """How `world_size` ranks split into tensor-parallel x context-parallel x data-parallel."""

    tp: int
    """Tensor-parallel degree: ranks that hold slices of the same layers."""
    dp: int
    """Data-parallel degree: model replicas (each one tp x cp ranks) reading different rows."""
    world_size: int
    """Number of ranks; must equal tp * cp * dp."""
    cp: int = 1
    """Context-parallel degree: ranks that share the same rows, each holding 1/cp of every row's
    tokens (a contiguous shard of the sequence); the mixers see whole rows for a share of heads."""

    def __post_init__(self) -> None:
        for name, value in (("tp", self.tp), ("cp", self.cp), ("dp", self.dp)):
            if value < 1:
                kind = {"tp": "tensor", "cp": "context", "dp": "data"}[name]
                raise ValueError(f"{kind}-parallel degree {name} = {value}: must be >= 1")
        if self.tp * self.cp * self.dp != self.world_size:
            raise ValueError(f"parallel degrees do not cover the world: {self.describe()} != world {self.world_size}")

    def describe(self) -> str:
        """The product, as errors and plans print it: 'tp 2 x dp 3' (cp shown only when > 1)."""
        middle = f" x cp {self.cp}" if self.cp > 1 else ""
        return f"tp {self.tp}{middle} x dp {self.dp}"

    @classmethod
    def from_world(cls, world_size: int, tp: int, cp: int = 1) -> ParallelDims:
        """dp derived from the world size; fails (showing the product) when tp x cp does not divide it."""
        if tp < 1:
            raise ValueError(f"tensor-parallel degree tp = {tp}: must be >= 1")
        if cp < 1:
            raise ValueError(f"context-parallel degree cp = {cp}: must be >= 1")
        return cls(tp=tp, cp=cp, dp=max(world_size // (tp * cp), 1), world_size=world_size)

    @property
    def replicas(self) -> int:
        """Ranks holding the same tensor-parallel slice (dp x cp): gradients are averaged over them."""
        return self.dp * self.cp

    def tp_rank(self, rank: int) -> int:
        """Position of `rank` inside its tensor-parallel group."""
        return rank % self.tp

    def cp_rank(self, rank: int) -> int:
        """Position of `rank` inside its context-parallel group: which sequence shard it holds."""
        return (rank // self.tp) % self.cp

    def dp_rank(self, rank: int) -> int:
        """Index of the model replica `rank` belongs to (its data-parallel rank: which rows it reads)."""
        return rank // (self.tp * self.cp)

    def tp_group_ranks(self, index: int) -> list[int]:
        """Global ranks of tensor-parallel group `index` = rank // tp (consecutive ranks)."""
        return list(range(index * self.tp, (index + 1) * self.tp))

    def cp_group_ranks(self, dp_index: int, tp_index: int) -> list[int]:
        """Global ranks sharing replica `dp_index` and TP slice `tp_index`, in sequence-shard order."""
        base = dp_index * self.tp * self.cp + tp_index
        return [base + c * self.tp for c in range(self.cp)]

    def dp_group_ranks(self, tp_index: int, cp_index: int = 0) -> list[int]:
        """Global ranks holding TP slice `tp_index` and sequence shard `cp_index` (strided by tp * cp)."""
        return list(range(cp_index * self.tp + tp_index, self.world_size, self.tp * self.cp))

    def replica_group_ranks(self, tp_index: int) -> list[int]:
        """Global ranks holding TP slice `tp_index` across every replica and shard (dp x cp, stride tp)."""
        return list(range(tp_index, self.world_size, self.tp))
