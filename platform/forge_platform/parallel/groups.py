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
    """The data-parallel group containing this rank (same TP slice, same sequence shard)."""
    tp_ranks: list[int] = field(default_factory=list)
    """Global ranks of tp_group, in group-rank order."""
    dp_ranks: list[int] = field(default_factory=list)
    """Global ranks of dp_group, in group-rank order."""
    cp_group: ProcessGroup | None = None
    """The context-parallel group (same rows, other sequence shards); a one-rank group at cp 1."""
    cp_ranks: list[int] = field(default_factory=list)
    """Global ranks of cp_group, in sequence-shard order."""
    replica_group: ProcessGroup | None = None
    """Ranks holding this rank's TP slice (dp x cp): gradients and the step's token count are
    reduced over it. The same group object as dp_group at cp 1."""
    replica_ranks: list[int] = field(default_factory=list)
    """Global ranks of replica_group, in group-rank order."""

    def __post_init__(self) -> None:
        # Layouts built before context parallelism (tests, tools) pass no CP groups: cp must be 1.
        if self.replica_group is None:
            if self.dims.cp != 1:
                raise ValueError(f"ParallelGroups with cp = {self.dims.cp} needs cp_group and replica_group")
            self.replica_group, self.replica_ranks = self.dp_group, list(self.dp_ranks)
        if not self.cp_ranks:
            self.cp_ranks = [self.rank] if self.dims.cp == 1 else self.cp_ranks

    @property
    def tp(self) -> int:
        """Tensor-parallel degree."""
        return self.dims.tp

    @property
    def cp(self) -> int:
        """Context-parallel degree."""
        return self.dims.cp

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.dims.dp

    @property
    def replicas(self) -> int:
        """dp x cp: ranks over which gradients are averaged (DeepSpeed's data-parallel world)."""
        return self.dims.replicas

    @property
    def tp_rank(self) -> int:
        """This rank's position in its tensor-parallel group (which slice it holds)."""
        return self.dims.tp_rank(self.rank)

    @property
    def cp_rank(self) -> int:
        """This rank's position in its context-parallel group (which sequence shard it holds)."""
        return self.dims.cp_rank(self.rank)

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel rank (which share of the rows it reads)."""
        return self.dims.dp_rank(self.rank)

    @property
    def tp_src_rank(self) -> int:
        """Global rank of the first member of this tensor-parallel group (broadcast source)."""
        return self.tp_ranks[0]


def build_process_groups(dims: ParallelDims) -> ParallelGroups:
    """Create every tensor-, context-, data-parallel and replica group and return this rank's.

    `torch.distributed.new_group` is collective over the whole world: every rank must create
    every group, in the same order, even the groups it is not in. Hence the full loops.
    Needs `init_process_group` to have run (Ray Train or torchrun did it) with world = dims.world_size.
    At cp 1 no context-parallel or replica groups are created (the layout is exactly the
    tensor x data one it was before context parallelism).
    """
    if not dist.is_initialized():
        raise RuntimeError("build_process_groups needs torch.distributed to be initialised first")
    if dist.get_world_size() != dims.world_size:
        raise ValueError(
            f"ParallelDims world {dims.world_size} ({dims.describe()}) "
            f"!= torch.distributed world {dist.get_world_size()}"
        )
    rank = dist.get_rank()

    def mine(all_ranks: list[list[int]]) -> tuple[ProcessGroup, list[int]]:
        found: tuple[ProcessGroup, list[int]] | None = None
        for ranks in all_ranks:
            group = dist.new_group(ranks)
            if rank in ranks:
                found = (group, ranks)
        assert found is not None  # every rank is in exactly one group of each kind
        return found

    tp_group, tp_ranks = mine([dims.tp_group_ranks(i) for i in range(dims.cp * dims.dp)])
    dp_group, dp_ranks = mine([dims.dp_group_ranks(t, c) for c in range(dims.cp) for t in range(dims.tp)])
    if dims.cp == 1:
        return ParallelGroups(dims=dims, rank=rank, tp_group=tp_group, dp_group=dp_group,
                              tp_ranks=tp_ranks, dp_ranks=dp_ranks)
    cp_group, cp_ranks = mine([dims.cp_group_ranks(d, t) for d in range(dims.dp) for t in range(dims.tp)])
    replica_group, replica_ranks = mine([dims.replica_group_ranks(t) for t in range(dims.tp)])
    return ParallelGroups(dims=dims, rank=rank, tp_group=tp_group, dp_group=dp_group, tp_ranks=tp_ranks,
                          dp_ranks=dp_ranks, cp_group=cp_group, cp_ranks=cp_ranks,
                          replica_group=replica_group, replica_ranks=replica_ranks)
