"""AdamW with the paper's weight-decay exemptions, and the warmup + cosine schedule by tokens."""

from __future__ import annotations

import math

import torch
from forge_models import weight_decay_groups
from torch import nn

from forge_platform.config_sections import OptimConfig

def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """A plain `torch.optim.AdamW` (no DeepSpeed op to JIT-compile) over the model's two groups.

    Which parameters skip weight decay (norms, biases, A_log, D, dt_bias) is the model's own
    rule: `forge_models.weight_decay_groups` reads the tags set where each parameter is made.
    """
    groups = weight_decay_groups(model, optim.weight_decay)
    # The fused CUDA kernel: one launch for all parameters instead of several per tensor.
    on_cuda = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=on_cuda or None)


def lr_at(tokens: int, optim: OptimConfig, total_tokens: int) -> float:
    """Linear warmup over `warmup_tokens`, then cosine from `lr` to `min_lr`.

    The cosine spans `decay_tokens` when set, else the rest of the stage (`total_tokens`).
    """
    if optim.warmup_tokens and tokens < optim.warmup_tokens:
        return optim.lr * (tokens + 1) / optim.warmup_tokens
    span = optim.decay_tokens or max(total_tokens - optim.warmup_tokens, 1)
    progress = min(max(tokens - optim.warmup_tokens, 0) / span, 1.0)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def build_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, tokens_per_step: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over optimizer steps whose state DeepSpeed checkpoints with the engine."""
    total_tokens = tokens_per_step * total_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step * tokens_per_step, optim, total_tokens) / optim.lr
    )
