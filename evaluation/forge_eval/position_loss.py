"""Perplexity by position: held-out loss in buckets of the position inside each document.

A stage that uses its context predicts later tokens of a document better than early ones; one that
extrapolates keeps doing so past its trained length. Rows come from packed held-out shards, with
the same document resets as training (`seq_idx`): a token's position is the number of tokens of
its own document before it *in this row*, i.e. the context the model actually had, so a document
split across rows never claims context the model did not see.

The rows scored are the ones whose documents run longest, not the first ones: held-out data mixes
long documents with many short ones, and the first 32 rows of the reproduction study's held-out set
held only short recall documents (furthest position 447 of 4,096), so nothing past one bucket was
measured.
"""

from __future__ import annotations

import heapq
import math

import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader
from forge_models.model import positions_from_seq_idx
from torch import nn
from tqdm.auto import tqdm


def bucket_name(start: int, width: int) -> str:
    """`pos_<start>_<end>` with positions in tokens, e.g. pos_0_1024."""
    return f"pos_{start}_{start + width}"


def longest_rows(manifest: str, num_rows: int, progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """The `num_rows` rows of `manifest` whose longest document segment is longest (ties: the earlier
    row), in manifest order. Reads every row once and keeps only the chosen ones."""
    loader = PackedShardLoader(manifest, micro_batch_size=1, dp_rank=0, dp_size=1, shuffle=False)
    kept: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # a min-heap of (reach, -row, batch)
    for index in tqdm(range(loader.num_rows), desc="ppl: finding the longest documents", unit="row",
                      disable=not progress or loader.num_rows < 2, leave=False):
        batch = loader.next_batch()
        reach = int(positions_from_seq_idx(batch["seq_idx"]).max()) + 1
        if len(kept) < num_rows:
            heapq.heappush(kept, (reach, -index, batch))
        elif (reach, -index) > kept[0][:2]:
            heapq.heapreplace(kept, (reach, -index, batch))
    return [batch for _, _, batch in sorted(kept, key=lambda item: -item[1])]


@torch.no_grad()
def loss_by_position(model: nn.Module, manifest: str, num_rows: int, bucket: int, max_position: int,
                     chunk: int = 4096, progress: bool = True) -> dict[str, float]:
    """Mean next-token loss per position bucket [k*bucket, (k+1)*bucket) up to `max_position`.

    Metrics per bucket with tokens: `<bucket>_loss`, `<bucket>_ppl`, `<bucket>_tokens`, and
    `pos_max_position` (the furthest position measured). The `num_rows` rows scored are those whose
    longest document (within the row) is longest (`longest_rows`), each counted once.
    """
    model.eval()
    device = next(model.parameters()).device
    num_buckets = math.ceil(max_position / bucket)
    total = torch.zeros(num_buckets, dtype=torch.float64)
    count = torch.zeros(num_buckets, dtype=torch.float64)
    furthest = 0
    rows = longest_rows(manifest, num_rows, progress)
    for row in tqdm(rows, desc="ppl by position", unit="row", disable=not progress or len(rows) < 2, leave=False):
        batch = {k: v.to(device) for k, v in row.items()}
        hidden = model.hidden_states(batch["input_ids"], seq_idx=batch["seq_idx"])[0]
        # The label at i is token i+1 of the same document: predicted with positions[i] + 1 tokens of context.
        positions = positions_from_seq_idx(batch["seq_idx"])[0]
        labels = batch["labels"][0]
        weight = model.lm_head_weight()
        for start in range(0, hidden.shape[0], chunk):  # logits a chunk at a time: (L, V) would not fit at 128K
            end = min(start + chunk, hidden.shape[0])
            logits = torch.nn.functional.linear(hidden[start:end], weight).float()
            target = labels[start:end]
            keep = (target != IGNORE_INDEX) & (positions[start:end] < max_position)
            if not bool(keep.any()):
                continue
            losses = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
            index = (positions[start:end][keep] // bucket).cpu()
            total.index_add_(0, index, losses.double().cpu())
            count.index_add_(0, index, torch.ones_like(losses, dtype=torch.float64).cpu())
            furthest = max(furthest, int(positions[start:end][keep].max()) + 1)
    if not bool((count > 0).any()):
        raise ValueError(f"no held-out tokens to evaluate in {manifest}")
    metrics: dict[str, float] = {"pos_max_position": float(furthest)}
    for k in range(num_buckets):
        if count[k] > 0:
            name = bucket_name(k * bucket, bucket)
            loss = float(total[k] / count[k])
            metrics.update({f"{name}_loss": loss, f"{name}_ppl": math.exp(min(loss, 50.0)),
                            f"{name}_tokens": float(count[k])})
    return metrics
