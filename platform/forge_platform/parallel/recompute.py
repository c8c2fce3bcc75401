"""Per-layer activation recompute, applied from outside the model.

A recomputed residual block's forward is wrapped so its activations are recomputed in the
backward pass instead of stored: memory per layer drops to the block's input, at the price of one
more forward of that block. The wrapper is set on the instance, so parameter names and
checkpoints do not change. Which blocks are recomputed is the stage's mode (memory_plan.py says
why each exists and which fits): every block ("full"), every block but attention ("selective"),
or none.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.utils.checkpoint
from torch import nn


# Layer kinds each mode leaves alone (keeps their activations); None: the mode recomputes nothing.
KEPT_KINDS: dict[str, tuple[str, ...] | None] = {"none": None, "selective": ("attention",), "full": ()}


def apply_recompute(model: nn.Module, mode: str) -> int:
    """Wrap the blocks of `model.layers` that `mode` recomputes; returns how many were wrapped."""
    if mode not in KEPT_KINDS:
        raise ValueError(f"train.recompute = {mode!r}: must be one of {', '.join(map(repr, KEPT_KINDS))} here "
                         "('auto' is resolved by the memory plan before the model is parallelized)")
    kept = KEPT_KINDS[mode]
    if kept is None:
        return 0
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `layers` to recompute")
    wrapped = 0
    for block in layers:
        if block.spec.kind in kept:
            continue
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)
        wrapped += 1
    return wrapped


def _checkpointed_forward(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    # Decoding (a cache state is passed) and evaluation keep no graph: nothing to save there.
    decoding = len(args) > 3 and args[3] is not None or kwargs.get("state") is not None
    if not block.training or decoding or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # Non-reentrant: works with keyword arguments, inputs that need no grad, and the TP hooks.
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
