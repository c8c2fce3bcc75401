"""Validation loss over held-out packed sequences: with the document resets training uses, or
with none (each packed row one stream, as plain packing feeds a model: the multi-document view)."""

from __future__ import annotations

import math

import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader, without_document_resets
from forge_data.manifest import Manifest
from forge_models import language_model_loss
from torch import nn


@torch.no_grad()
def validation_loss(model: nn.Module, manifest: str, num_rows: int, batch_tokens: int = 0,
                    document_resets: bool = True) -> dict[str, float]:
    """Mean next-token loss (nats per token) over the first `num_rows` held-out rows (in order, each
    at most once): `val_loss`, `val_perplexity`, `val_tokens`; with `document_resets=False` the rows
    run as plain streams and the metrics are `val_plain_*` (the same tokens are predicted either way).

    Rows run `batch_tokens // seq_len` at a time (at least one; 0: one at a time) and the sums stay
    on the device until the end: one row per forward pass with a host sync after each was 34 ms a
    row for a 6M-parameter model on an H200, 76 s for 2,221 held-out rows of 1,024 tokens.
    The mean is weighted by the number of predicted tokens, so short final rows do not count
    more than full ones.
    """
    model.eval()
    device = next(model.parameters()).device
    rows_per_batch = max(1, batch_tokens // Manifest.load(manifest).seq_len)
    loader = PackedShardLoader(manifest, micro_batch_size=rows_per_batch, dp_rank=0, dp_size=1, shuffle=False)
    # The loader wraps around epochs: never count a held-out row twice.
    num_rows = min(num_rows, loader.num_rows)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_tokens = torch.zeros((), dtype=torch.int64, device=device)
    for first in range(0, num_rows, rows_per_batch):
        batch = loader.next_batch()
        take = min(rows_per_batch, num_rows - first)  # the last batch: only the rows asked for
        if not document_resets:
            batch = without_document_resets(batch)
        batch = {k: v[:take].to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
        tokens = (batch["labels"] != IGNORE_INDEX).sum()
        # language_model_loss is the mean over the batch's predicted tokens (0 where there are none).
        total_loss += language_model_loss(logits, batch["labels"]).double() * tokens
        total_tokens += tokens
    if int(total_tokens) == 0:
        raise ValueError(f"no held-out tokens to evaluate in {manifest}")
    loss = float(total_loss) / int(total_tokens)
    prefix = "val" if document_resets else "val_plain"
    return {f"{prefix}_loss": loss, f"{prefix}_perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}_tokens": float(total_tokens)}
