"""Chunked LM-head + cross-entropy: the loss without materialising (tokens x vocab) logits.

`language_model_loss(logits, labels)` needs the full logits, their fp32 copy, the log-softmax
saved for the backward and the fp32 gradient: at 16K tokens x 32K vocab about 6 GB and several
passes over it. `chunked_lm_loss(hidden, weight, labels)` computes the same mean next-token
cross-entropy chunk by chunk of tokens: the forward keeps only the hidden states and one fp32
log-sum-exp per token; the backward recomputes each chunk's logits (one extra LM-head matmul,
about 1% of a 2B model's training FLOPs) and writes the gradients of hidden and weight.

With `fused=True` (CUDA, ModelConfig.compile_pointwise) the per-chunk pointwise work is two
torch.compile'd kernels instead of about ten eager passes over (chunk x vocab) fp32 tensors:
the forward reads the bf16 logits once for log-sum-exp and the label's logit, the backward
reads them once and writes the bf16 gradient (softmax minus one-hot as a comparison with the
column index, so nothing fp32 of size chunk x vocab is ever stored). On the 2.2B hybrid at
16K tokens per micro-batch this saves about 9 ms of the 540 ms step (profile in
benchmarks/models/RESULTS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

# The label that predicts nothing (a document's last token, padding): torch's cross_entropy default,
# and the value forge_data's packer writes (the platform's tests check that the two agree).
IGNORE_INDEX = -100


def _lse_and_loss(logits_TV: torch.Tensor, labels_T: torch.Tensor, ignore_index: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 log-sum-exp per token, fp32 sum of lse - logit[label] over counted tokens)."""
    logits = logits_TV.float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, labels_T.clamp(min=0)[:, None]).squeeze(1)
    return lse, torch.where(labels_T != ignore_index, lse - picked, 0.0).sum()


def _grad_logits_eager(logits_TV: torch.Tensor, lse_T: torch.Tensor, labels_T: torch.Tensor,
                       weight_T: torch.Tensor) -> torch.Tensor:
    """(softmax - onehot(label)) * weight per token, in the logits' dtype; in place on one fp32 copy."""
    grad = logits_TV.to(torch.float32, copy=True).sub_(lse_T[:, None]).exp_()  # never the caller's tensor
    grad[torch.arange(grad.shape[0], device=grad.device), labels_T.clamp(min=0)] -= 1.0
    return grad.mul_(weight_T[:, None]).to(logits_TV.dtype)


def _grad_logits_fusable(logits_TV: torch.Tensor, lse_T: torch.Tensor, labels_T: torch.Tensor,
                         weight_T: torch.Tensor) -> torch.Tensor:
    """_grad_logits_eager written as one pointwise expression (the one-hot is a comparison with
    the column index, not a scatter), so the compiled kernel stores nothing but its bf16 output."""
    onehot = torch.arange(logits_TV.shape[1], device=logits_TV.device) == labels_T.clamp(min=0)[:, None]
    grad = torch.exp(logits_TV.float() - lse_T[:, None]) - onehot.float()
    return (grad * weight_T[:, None]).to(logits_TV.dtype)


@functools.cache
def _compiled(name: str) -> Callable[..., object]:
    fn = {"lse_and_loss": _lse_and_loss, "grad_logits": _grad_logits_fusable}[name]
    return torch.compile(fn, dynamic=False)


class _ChunkedLMLoss(torch.autograd.Function):
    """Sum over valid tokens of lse(h W^T) - (h W^T)[label]; h (T, D), W (V, D), labels (T,)."""

    @staticmethod
    def forward(ctx, hidden_TD: torch.Tensor, weight_VD: torch.Tensor, labels_T: torch.Tensor,  # noqa: ANN001
                ignore_index: int, chunk: int, fused: bool) -> torch.Tensor:
        lse_and_loss = _compiled("lse_and_loss") if fused else _lse_and_loss
        total = torch.zeros((), dtype=torch.float32, device=hidden_TD.device)
        lse_T = torch.empty(hidden_TD.shape[0], dtype=torch.float32, device=hidden_TD.device)
        for start in range(0, hidden_TD.shape[0], chunk):
            end = min(start + chunk, hidden_TD.shape[0])
            lse, loss = lse_and_loss(hidden_TD[start:end] @ weight_VD.t(), labels_T[start:end], ignore_index)
            total += loss
            lse_T[start:end] = lse
        ctx.save_for_backward(hidden_TD, weight_VD, labels_T, lse_T)
        ctx.ignore_index, ctx.chunk, ctx.fused = ignore_index, chunk, fused
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):  # noqa: ANN001, ANN205
        hidden_TD, weight_VD, labels_T, lse_T = ctx.saved_tensors
        grad_logits = _compiled("grad_logits") if ctx.fused else _grad_logits_eager
        weight_T = (labels_T != ctx.ignore_index).float() * grad_total  # d total / d loss_t
        grad_hidden = torch.empty_like(hidden_TD)
        grad_weight = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
        for start in range(0, hidden_TD.shape[0], ctx.chunk):
            end = min(start + ctx.chunk, hidden_TD.shape[0])
            h = hidden_TD[start:end]
            g = grad_logits(h @ weight_VD.t(), lse_T[start:end], labels_T[start:end], weight_T[start:end])
            torch.mm(g, weight_VD, out=grad_hidden[start:end])
            grad_weight += g.t() @ h  # product in the compute dtype per chunk, fp32 sum over chunks
        return grad_hidden, grad_weight.to(weight_VD.dtype), None, None, None, None


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                    chunk: int = 4096, fused: bool = False) -> torch.Tensor:
    """Mean cross-entropy of logits = hidden @ weight^T over labels != ignore_index (0 if none).

    hidden (..., D) and weight (V, D) are cast to the autocast dtype when autocast is on (as a
    linear layer would); the log-sum-exp and the sum are fp32. `fused` compiles the per-chunk
    pointwise work (CUDA training, see the module docstring); it computes the same values.
    """
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    labels = labels.reshape(-1)
    with torch.autocast(hidden.device.type, enabled=False):
        total = _ChunkedLMLoss.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels, ignore_index, chunk,
                                     fused)
    count = (labels != ignore_index).sum().clamp(min=1)
    return total / count
