"""Per-layer activation checkpointing, applied from outside the model.

Each residual block's forward is wrapped so its activations are recomputed in the backward pass
instead of stored: memory per layer drops to the block's input, at the price of one more forward.
The wrapper is set on the instance, so parameter names and checkpoints do not change.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.utils.checkpoint
from torch import nn


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of `model.layers` while training; returns how many were wrapped."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `layers` to checkpoint")
    for block in layers:
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)
    return len(layers)


def _checkpointed_forward(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    # Decoding (a cache state is passed) and evaluation keep no graph: nothing to save there.
    decoding = len(args) > 3 and args[3] is not None or kwargs.get("state") is not None
    if not block.training or decoding or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # Non-reentrant: works with keyword arguments, inputs that need no grad, and the TP hooks.
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
