"""Validation loss over held-out packed sequences: with the document resets training uses, or
with none (each packed row one stream, as plain packing feeds a model: the multi-document view)."""

from __future__ import annotations

import math

import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader, without_document_resets
from forge_models import language_model_loss
from torch import nn


@torch.no_grad()
def validation_loss(model: nn.Module, manifest: str, num_batches: int, batch_size: int = 1,
                    document_resets: bool = True) -> dict[str, float]:
    """Mean next-token loss (nats per token) over the first `num_batches` held-out batches (in order):
    `val_loss`, `val_perplexity`, `val_tokens`; with `document_resets=False` the rows run as plain
    streams and the metrics are `val_plain_*` (the same tokens are predicted either way).

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
        batch = loader.next_batch()
        if not document_resets:
            batch = without_document_resets(batch)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        if tokens:
            total_loss += float(language_model_loss(logits, batch["labels"])) * tokens
            total_tokens += tokens
    if total_tokens == 0:
        raise ValueError(f"no held-out tokens to evaluate in {manifest}")
    loss = total_loss / total_tokens
    prefix = "val" if document_resets else "val_plain"
    return {f"{prefix}_loss": loss, f"{prefix}_perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}_tokens": float(total_tokens)}
