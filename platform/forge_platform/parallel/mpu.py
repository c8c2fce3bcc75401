"""The "model parallel unit" DeepSpeed expects from `deepspeed.initialize(mpu=...)`.

DeepSpeed 0.19.8 reads the layout through duck-typed getters (in its modules `deepspeed.utils.groups`,
`deepspeed.utils.bwc`, `deepspeed.runtime.engine` and the ZeRO optimizers of `deepspeed.runtime.zero`):

- data parallel: ZeRO partitions and averages gradients over `get_data_parallel_group()`, and
  broadcasts the initial weights inside it (so each TP slice is only broadcast among its peers).
  With context parallelism this is the replica group (dp x cp): CP ranks hold the same weights
  and each computes the gradient of its sequence shard, so their gradients are averaged too.
- model parallel: the gradient norm sums the squares of split parameters over
  `get_model_parallel_group()` and counts replicated ones on model-parallel rank 0 only
  (`deepspeed.runtime.utils.is_model_parallel_parameter` reads `p.tensor_model_parallel`);
  checkpoints are named by `get_model_parallel_rank()`.
- `bwc_tensor_model_parallel_*` prefer the `get_tensor_model_parallel_*` names when present.

Deliberately absent: `initialize_sequence_parallel` (its mere presence makes DeepSpeed treat the
mpu as an Ulysses sequence-parallel unit and ignore its data-parallel group) and the
sequence-parallel getters (DeepSpeed falls back to the data-parallel group without them).
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed import ProcessGroup

from forge_platform.parallel.groups import ParallelGroups


class ModelParallelUnit:
    """Megatron-style getters over an explicit `ParallelGroups`; model parallel = tensor parallel."""

    def __init__(self, groups: ParallelGroups) -> None:
        self.groups = groups

    # Tensor (= model) parallel: we have no pipeline stages, so both names mean the TP group.
    def get_tensor_model_parallel_group(self) -> ProcessGroup:
        """The TP group of this rank."""
        return self.groups.tp_group

    def get_tensor_model_parallel_rank(self) -> int:
        """This rank's slice index."""
        return self.groups.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        """TP degree."""
        return self.groups.tp

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of the TP group's first member."""
        return self.groups.tp_src_rank

    def get_model_parallel_group(self) -> ProcessGroup:
        """Same as the TP group (no pipeline parallelism)."""
        return self.groups.tp_group

    def get_model_parallel_rank(self) -> int:
        """Same as the TP rank."""
        return self.groups.tp_rank

    def get_model_parallel_world_size(self) -> int:
        """Same as the TP degree."""
        return self.groups.tp

    # Data parallel, for DeepSpeed: every rank holding the same TP slice (dp x cp).
    def get_data_parallel_group(self) -> ProcessGroup:
        """Ranks holding the same TP slice (the replica group): ZeRO shards and reduces over these."""
        return self.groups.replica_group

    def get_data_parallel_rank(self) -> int:
        """This rank's position in its replica group."""
        return dist.get_rank(self.groups.replica_group)

    def get_data_parallel_world_size(self) -> int:
        """dp x cp."""
        return self.groups.replicas

    def get_data_parallel_group_ranks(self) -> list[int]:
        """Global ranks of this rank's replica group."""
        return list(self.groups.replica_ranks)

    # Pipeline parallel: one stage.
    def get_pipeline_model_parallel_world_size(self) -> int:
        """Always 1: Hybrid Forge has no pipeline parallelism."""
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        """Always 0."""
        return 0
