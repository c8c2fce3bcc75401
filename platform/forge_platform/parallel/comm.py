"""Autograd-aware tensor-parallel collectives (Megatron's f and g operators), explicit group.

A column-parallel layer consumes a replicated input and produces a slice; a row-parallel layer
consumes a slice and produces a partial sum. Around such a pair:

    copy_to_tp_region      forward: identity      backward: all-reduce (sum the input grads
                                                  each rank's slice contributed)
    reduce_from_tp_region  forward: all-reduce    backward: identity (the output grad is
                           (sum the partial sums)           already replicated)
    gather_from_tp_region  forward: all-gather along the last dim; backward: keep own slice

Each is a `torch.autograd.Function` taking the process group as an argument, so nothing is
looked up from module globals. With a one-rank group they are identities and cost nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def group_size(group: ProcessGroup) -> int:
    """World size of `group` (1 when distributed is not initialised: single-process use)."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _all_reduce(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    # Out of place: the caller's tensor may be saved by another autograd node.
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class _CopyToTensorParallelRegion(torch.autograd.Function):
    """Identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce(grad.contiguous(), ctx.group), None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    """All-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        return _all_reduce(x.contiguous(), group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherFromTensorParallelRegion(torch.autograd.Function):
    """All-gather along the last dim forward, keep this rank's slice backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.width = x.shape[-1]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.narrow(-1, ctx.rank * ctx.width, ctx.width).contiguous(), None


def copy_to_tp_region(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Enter a column-parallel region: x is replicated, its gradient must be summed over TP."""
    if group_size(group) == 1:
        return x
    return _CopyToTensorParallelRegion.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Leave a row-parallel region: sum the partial results of every TP rank."""
    if group_size(group) == 1:
        return x
    return _ReduceFromTensorParallelRegion.apply(x, group)


def gather_from_tp_region(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Concatenate the TP ranks' last-dim slices (e.g. vocab-parallel logits for evaluation)."""
    if group_size(group) == 1:
        return x
    return _GatherFromTensorParallelRegion.apply(x, group)
