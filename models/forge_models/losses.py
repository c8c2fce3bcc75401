"""Chunked LM-head + cross-entropy: the loss without materialising (tokens x vocab) logits.

`language_model_loss(logits, labels)` needs the full logits, their fp32 copy, the log-softmax
saved for the backward and the fp32 gradient: at 16K tokens x 32K vocab about 6 GB and several
passes over it. `chunked_lm_loss(hidden, weight, labels)` computes the same mean next-token
cross-entropy chunk by chunk of tokens: the forward keeps only the hidden states and one fp32
log-sum-exp per token; the backward recomputes each chunk's logits (one extra LM-head matmul,
about 1% of a 2B model's training FLOPs) and writes the gradients of hidden and weight.
"""

from __future__ import annotations

import torch


class _ChunkedLMLoss(torch.autograd.Function):
    """Sum over valid tokens of lse(h W^T) - (h W^T)[label]; h (T, D), W (V, D), labels (T,)."""

    @staticmethod
    def forward(ctx, hidden_TD: torch.Tensor, weight_VD: torch.Tensor, labels_T: torch.Tensor,  # noqa: ANN001
                ignore_index: int, chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden_TD.device)
        lse_T = torch.empty(hidden_TD.shape[0], dtype=torch.float32, device=hidden_TD.device)
        for start in range(0, hidden_TD.shape[0], chunk):
            end = min(start + chunk, hidden_TD.shape[0])
            logits = (hidden_TD[start:end] @ weight_VD.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            labels = labels_T[start:end]
            valid = labels != ignore_index
            picked = logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            lse_T[start:end] = lse
        ctx.save_for_backward(hidden_TD, weight_VD, labels_T, lse_T)
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):  # noqa: ANN001, ANN205
        hidden_TD, weight_VD, labels_T, lse_T = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden_TD)
        grad_weight = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
        for start in range(0, hidden_TD.shape[0], ctx.chunk):
            end = min(start + ctx.chunk, hidden_TD.shape[0])
            h = hidden_TD[start:end]
            probs = torch.exp((h @ weight_VD.t()).float() - lse_T[start:end, None])  # softmax
            labels = labels_T[start:end]
            valid = labels != ctx.ignore_index
            rows = torch.arange(end - start, device=h.device)
            probs[rows, labels.clamp(min=0)] -= 1.0
            probs *= (valid.float() * grad_total)[:, None]
            g = probs.to(h.dtype)
            grad_hidden[start:end] = g @ weight_VD
            grad_weight += g.t() @ h  # bf16 product per chunk, fp32 sum over chunks
        return grad_hidden, grad_weight.to(weight_VD.dtype), None, None, None


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                    chunk: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of logits = hidden @ weight^T over labels != ignore_index (0 if none).

    hidden (..., D) and weight (V, D) are cast to the autocast dtype when autocast is on (as a
    linear layer would); the log-sum-exp and the sum are fp32.
    """
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    labels = labels.reshape(-1)
    with torch.autocast(hidden.device.type, enabled=False):
        total = _ChunkedLMLoss.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels, ignore_index, chunk)
    count = (labels != ignore_index).sum().clamp(min=1)
    return total / count
