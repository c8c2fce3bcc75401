"""Slicing single-device weights into TP shards and merging them back.

Checkpoints stay independent of the TP degree: the consolidated `model.pt` is always the
single-device state_dict. A TP run slices it on load (`shard_state_dict`) and reassembles it on
save (`gather_state_dict`); both are driven by the same plan table as `parallelize_model`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from forge_models import ModelConfig
from torch import nn

from forge_platform.parallel.dims import ParallelGroups
from forge_platform.parallel.plan import partition_dims


def shard_tensor(full: torch.Tensor, dim: int | None, tp_rank: int, tp: int) -> torch.Tensor:
    """This rank's contiguous 1/tp slice of `full` along `dim` (a copy; `full` when dim is None)."""
    if dim is None or tp == 1:
        return full
    if full.shape[dim] % tp:
        raise ValueError(f"dimension {dim} of shape {tuple(full.shape)} does not split {tp} ways")
    size = full.shape[dim] // tp
    # clone: a narrow view would keep the whole full tensor alive (and share its storage).
    return full.narrow(dim, tp_rank * size, size).clone()


def shard_state_dict(full_sd: dict[str, torch.Tensor], cfg: ModelConfig, tp_rank: int,
                     tp: int) -> dict[str, torch.Tensor]:
    """The state_dict of TP rank `tp_rank` from a single-device state_dict of model `cfg`.

    Load it with `parallel_model.load_state_dict(...)` after `parallelize_model`.
    """
    if not 0 <= tp_rank < tp:
        raise ValueError(f"tp_rank = {tp_rank}: must be in [0, {tp})")
    dims = partition_dims(cfg, list(full_sd))
    return {name: shard_tensor(t, dims[name], tp_rank, tp) for name, t in full_sd.items()}


def merge_state_dicts(shards: list[dict[str, torch.Tensor]], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of shard_state_dict: concatenate split tensors (in rank order), keep rank 0's replicas."""
    dims = partition_dims(cfg, list(shards[0]))
    merged = {}
    for name, dim in dims.items():
        if dim is None:
            merged[name] = shards[0][name]
        else:
            merged[name] = torch.cat([shard[name] for shard in shards], dim=dim)
    return merged


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
