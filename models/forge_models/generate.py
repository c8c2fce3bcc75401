"""Batched incremental decoding: one prefill, then one token per step through the layer caches.

The simple loop, kept as the oracle of the fast engine (forge_models.inference.InferenceEngine:
packed prefill of prompts of any lengths, CUDA-graph decode), which must give the same greedy tokens.
Prompts in a batch share one length T (no padding): each row is one document. Decoding is
greedy at temperature 0, otherwise sampling from softmax(logits / temperature), optionally
restricted to the top_k logits, drawing from `generator` so a seed reproduces the output.
"""

from __future__ import annotations

import torch

from forge_models.model import LanguageModel


def sample_next(logits_BV: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from the last-position logits."""
    if temperature <= 0.0:
        return logits_BV.argmax(dim=-1)
    logits = logits_BV.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt (B, T) -> (B, T + n), n <= max_new_tokens; stops when every row has emitted eos_id.

    Rows that finished early are filled with eos_id after their EOS.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (B, T) with T >= 1, got {tuple(prompt_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: allowed >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} is invalid: allowed None or >= 1")
    was_training = model.training
    model.eval()
    batch, prompt_len = prompt_ids.shape
    cache = model.allocate_cache(batch, prompt_len + max_new_tokens)
    out = prompt_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    logits = model(prompt_ids, cache=cache)[:, -1]
    for _ in range(max_new_tokens):
        next_ids = sample_next(logits, temperature, top_k, generator)
        if eos_id is not None:
            next_ids = torch.where(finished, torch.full_like(next_ids, eos_id), next_ids)
            finished = finished | (next_ids == eos_id)
        out = torch.cat([out, next_ids[:, None]], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
        if out.shape[1] < prompt_len + max_new_tokens:
            logits = model(next_ids[:, None], cache=cache)[:, -1]
    model.train(was_training)
    return out
