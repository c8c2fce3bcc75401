"""Slicing one tensor into its TP shard, and gathering a parallelized model's single-device weights.

Checkpoints stay independent of the TP degree: the consolidated `model.pt` is always the
single-device state_dict. A TP run starts from full weights and slices them in place
(`parallelize_model` uses `shard_tensor`), and reassembles them on save (`gather_state_dict`);
both follow forge_models' plan table (`forge_models.tp_plan`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from forge_models import ModelConfig
from forge_models.tp_plan import partition_dims
from torch import nn

from forge_platform.parallel.groups import ParallelGroups


def shard_tensor(full: torch.Tensor, dim: int | None, tp_rank: int, tp: int) -> torch.Tensor:
    """This rank's contiguous 1/tp slice of `full` along `dim` (a copy; `full` when dim is None)."""
    if dim is None or tp == 1:
        return full
    if full.shape[dim] % tp:
        raise ValueError(f"dimension {dim} of shape {tuple(full.shape)} does not split {tp} ways")
    size = full.shape[dim] // tp
    # clone: a narrow view would keep the whole full tensor alive (and share its storage).
    return full.narrow(dim, tp_rank * size, size).clone()


def gather_state_dict(model: nn.Module, cfg: ModelConfig, groups: ParallelGroups) -> dict[str, torch.Tensor]:
    """The single-device state_dict of a parallelized model, on every rank of its TP group (CPU tensors).

    Collective over the TP group: every TP rank must call it. Under ZeRO-3 the parameters are
    partitioned over data-parallel ranks; gather them first (deepspeed.zero.GatheredParameters).
    """
    local = {k: v.detach() for k, v in model.state_dict().items()}
    if groups.tp == 1:
        return {k: v.cpu() for k, v in local.items()}
    dims = partition_dims(cfg, list(local))
    full = {}
    for name, tensor in local.items():
        if dims[name] is None:
            full[name] = tensor.cpu()
            continue
        parts = [torch.empty_like(tensor) for _ in range(groups.tp)]
        dist.all_gather(parts, tensor.contiguous(), group=groups.tp_group)
        full[name] = torch.cat(parts, dim=dims[name]).cpu()
    return full
