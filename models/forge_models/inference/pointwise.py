"""The decode step's pointwise work, each piece one function that torch.compile can fuse into one kernel.

Legend: b rows, D width, G groups, S cache capacity.

In a CUDA graph a kernel costs ~1-2 us however little it does, and eagerly an RMSNorm is six
kernels, Mamba-2's gated group norm eight, RoPE a dozen per tensor: at batch 1 those launches,
not the bytes, would set the step's time. `PointwiseOps(compiled=True)` runs each function
through torch.compile (dynamic shapes, so one compilation serves every batch bucket); the
compiled kernels are built during the graph's warm-up steps and captured like any other.
`compiled=False` runs the same functions eagerly (CPU, and the GPU parity test's yardstick).
Each computes exactly what the model's modules compute (norms.py, attention.apply_rope).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forge_models.attention import apply_rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """norms.RMSNorm's math: fp32 statistics, output in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add of one layer and the next layer's pre-norm: (x + delta, rms_norm(x + delta))."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def gated_group_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, num_groups: int,
                         eps: float) -> torch.Tensor:
    """norms.GatedGroupRMSNorm's math: rmsnorm(y * silu(z)) per group, times weight, in y's dtype."""
    gated = y.float() * F.silu(z.float())
    grouped = gated.unflatten(-1, (num_groups, -1))
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return (normed.flatten(-2) * weight.float()).to(y.dtype)


def masked_softmax(scores: torch.Tensor, positions_b: torch.Tensor, key_positions_S: torch.Tensor, scale: float,
                   dtype: torch.dtype) -> torch.Tensor:
    """softmax(scores * scale) over keys at positions <= the row's position, in `dtype`; scores (b, G, r, S)."""
    future = (key_positions_S[None, :] > positions_b[:, None])[:, None, None, :]
    probs = torch.softmax((scores.float() * scale).masked_fill(future, float("-inf")), dim=-1)
    return probs.to(dtype)


class PointwiseOps:
    """The functions above, compiled (CUDA) or eager."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled

        def wrap(fn):  # noqa: ANN001, ANN202 - a function in, the same signature out
            return torch.compile(fn, dynamic=True) if compiled else fn

        self.rms_norm = wrap(rms_norm)
        self.add_rms_norm = wrap(add_rms_norm)
        self.gated_group_rms_norm = wrap(gated_group_rms_norm)
        self.masked_softmax = wrap(masked_softmax)
        self.rope = wrap(apply_rope)
