"""Validation loss over held-out packed sequences, with the same document resets as training."""

from __future__ import annotations

import math

import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader
from forge_models import language_model_loss
from torch import nn


@torch.no_grad()
def validation_loss(model: nn.Module, manifest: str, num_batches: int, batch_size: int = 1) -> dict[str, float]:
    """Mean next-token loss (nats per token) over the first `num_batches` held-out batches (in order).

    The mean is weighted by the number of predicted tokens, so short final rows do not count
    more than full ones.
    """
    model.eval()
    device = next(model.parameters()).device
    loader = PackedShardLoader(manifest, micro_batch_size=batch_size, dp_rank=0, dp_size=1, shuffle=False)
    # The loader wraps around epochs: never count a held-out row twice.
    num_batches = min(num_batches, loader.num_rows // batch_size)
    total_loss, total_tokens = 0.0, 0
    for _ in range(num_batches):
        batch = {k: v.to(device) for k, v in loader.next_batch().items()}
        logits = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        if tokens:
            total_loss += float(language_model_loss(logits, batch["labels"])) * tokens
            total_tokens += tokens
    if total_tokens == 0:
        raise ValueError(f"no held-out tokens to evaluate in {manifest}")
    loss = total_loss / total_tokens
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_tokens": float(total_tokens)}
