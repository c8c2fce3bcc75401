"""The process groups of a `ParallelDims` layout, held in an explicit object.

The groups are handed to whoever needs them (no module globals, unlike Megatron's
parallel_state), so two layouts can coexist in one process and tests can build them on gloo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed import ProcessGroup

from forge_platform.parallel.dims import ParallelDims


@dataclass
class ParallelGroups:
    """This rank's view of the layout: its groups, ranks and peers. Pass it explicitly."""

    dims: ParallelDims
    rank: int
    """Global rank of this process."""
    tp_group: ProcessGroup
    """The tensor-parallel group containing this rank."""
    dp_group: ProcessGroup
    """The data-parallel group containing this rank."""
    tp_ranks: list[int] = field(default_factory=list)
    """Global ranks of tp_group, in group-rank order."""
    dp_ranks: list[int] = field(default_factory=list)
    """Global ranks of dp_group, in group-rank order."""

    @property
    def tp(self) -> int:
        """Tensor-parallel degree."""
        return self.dims.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.dims.dp

    @property
    def tp_rank(self) -> int:
        """This rank's position in its tensor-parallel group (which slice it holds)."""
        return self.dims.tp_rank(self.rank)

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel rank (which share of the data it reads)."""
        return self.dims.dp_rank(self.rank)

    @property
    def tp_src_rank(self) -> int:
        """Global rank of the first member of this tensor-parallel group (broadcast source)."""
        return self.tp_ranks[0]


def build_process_groups(dims: ParallelDims) -> ParallelGroups:
    """Create every tensor- and data-parallel group and return this rank's.

    `torch.distributed.new_group` is collective over the whole world: every rank must create
    every group, in the same order, even the groups it is not in. Hence the two full loops.
    Needs `init_process_group` to have run (Ray Train or torchrun did it) with world = dims.world_size.
    """
    if not dist.is_initialized():
        raise RuntimeError("build_process_groups needs torch.distributed to be initialised first")
    if dist.get_world_size() != dims.world_size:
        raise ValueError(
            f"ParallelDims world {dims.world_size} (tp {dims.tp} x dp {dims.dp}) "
            f"!= torch.distributed world {dist.get_world_size()}"
        )
    rank = dist.get_rank()
    tp_group = dp_group = None
    tp_ranks: list[int] = []
    dp_ranks: list[int] = []
    for dp_index in range(dims.dp):
        ranks = dims.tp_group_ranks(dp_index)
        group = dist.new_group(ranks)
        if rank in ranks:
            tp_group, tp_ranks = group, ranks
    for tp_index in range(dims.tp):
        ranks = dims.dp_group_ranks(tp_index)
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group, dp_ranks = group, ranks
    assert tp_group is not None and dp_group is not None  # every rank is in one of each
    return ParallelGroups(dims=dims, rank=rank, tp_group=tp_group, dp_group=dp_group,
                          tp_ranks=tp_ranks, dp_ranks=dp_ranks)
