"""The global gradient norm of a tensor-parallel model: split parameters summed, replicas counted once.

A split parameter's gradient is different on every TP rank (each holds a slice), so its squared
norm is summed over the TP group. A replicated parameter (norm weights) has the same gradient on
every TP rank, so only TP rank 0 counts it; counting it tp times would overstate the norm and
clip too hard. This is the rule DeepSpeed's clipping applies through `tensor_model_parallel`;
use this function outside DeepSpeed (plain training, tests, logging).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from forge_platform.parallel.groups import ParallelGroups


def is_tensor_parallel_param(param: nn.Parameter) -> bool:
    """True for a parameter that parallelize_model split across TP ranks."""
    return bool(getattr(param, "tensor_model_parallel", False))


def global_grad_norm(model: nn.Module, groups: ParallelGroups) -> torch.Tensor:
    """L2 norm of the gradient of the whole (unsplit) model, identical on every rank of the TP group.

    Gradients must already be averaged over data parallel (identical across DP ranks), as after
    DDP's all-reduce; ZeRO-2/3's partitioned gradients are DeepSpeed's to norm
    (`engine.get_global_grad_norm()`).
    """
    split, replicated = [], []
    for param in model.parameters():
        if param.grad is not None:
            (split if is_tensor_parallel_param(param) else replicated).append(param.grad.detach())
    counted = split + (replicated if groups.tp_rank == 0 else [])
    device = next(model.parameters()).device
    # One multi-tensor kernel per dtype and device (get_total_norm's foreach path) instead of a
    # pow/sum pair per tensor, which read every gradient twice more per step.
    total = torch.nn.utils.get_total_norm(counted).float().pow(2) if counted else torch.zeros((), device=device)
    if groups.tp > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=groups.tp_group)
    return total.sqrt()
