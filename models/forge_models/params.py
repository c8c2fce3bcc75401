"""Parameter tags and the optimizer-facing helpers built on them.

Tags are plain attributes on `nn.Parameter`s, set where the parameter is created, so the rule
"which parameters skip weight decay / stay fp32" lives next to the parameter and survives
`dataclasses.replace`-style rebuilds and tensor-parallel slicing (a slice is re-wrapped by the
TP plan, which should copy the tags; `no_weight_decay_names` also falls back on ndim < 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mark_no_weight_decay(*params: nn.Parameter | None) -> None:
    """Tag parameters that the optimizer must not decay (norm weights, biases, A_log, D, dt_bias)."""
    for p in params:
        if p is not None:
            p._no_weight_decay = True  # type: ignore[attr-defined]


def mark_keep_fp32(*params: nn.Parameter | None) -> None:
    """Tag parameters that must stay fp32 even when the rest of the model is cast to bf16."""
    for p in params:
        if p is not None:
            p._keep_fp32 = True  # type: ignore[attr-defined]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that skip weight decay: tagged ones and every vector (norms, biases)."""
    return {
        name
        for name, p in model.named_parameters()
        if getattr(p, "_no_weight_decay", False) or p.ndim < 2
    }


def keep_fp32_names(model: nn.Module) -> set[str]:
    """Names of parameters to keep in fp32 under a bf16 cast (Mamba's A_log, D, dt_bias)."""
    return {name for name, p in model.named_parameters() if getattr(p, "_keep_fp32", False)}


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: decayed matrices and everything in no_weight_decay_names."""
    skip = no_weight_decay_names(model)
    decay = [p for n, p in model.named_parameters() if n not in skip and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if n in skip and p.requires_grad]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def inverse_softplus_dt(size: int | tuple[int, ...], dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """dt log-uniform in [dt_min, dt_max] (clamped at floor), returned as the bias whose softplus is dt."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
