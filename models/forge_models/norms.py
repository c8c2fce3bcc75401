"""RMSNorm (pre-norm and final norm) and the grouped gated RMSNorm inside Mamba-2.

Legend: B batch, L length, D channels, G groups.
Statistics are computed in fp32 whatever the activation dtype, then cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dimension (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5, compiled: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # On CUDA, the torch.compile'd kernel (ops/fused.py; its output is already in the compute
        # dtype). Chosen here, inside the module, so callers always call the module and whatever
        # hooks it (tensor parallelism's communication) runs.
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the last dimension."""
        if self.compiled and x.is_cuda:
            from forge_models.ops import fused  # lazy: only the CUDA path compiles

            return fused.compiled_rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)

    def reset_parameters(self) -> None:
        """Weights to one."""
        nn.init.ones_(self.weight)


class GatedGroupRMSNorm(nn.Module):
    """Mamba-2's norm: rmsnorm(y * silu(z)) per group of channels, then * weight.

    Normalising per group (not over all of d_inner) is what lets a tensor-parallel split by
    groups normalise locally, so a Mamba-2 layer needs one all-reduce (paper, Section 2.1).
    """

    def __init__(self, dim: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate with silu(z), normalise each of the num_groups groups, scale."""
        gated = y.float() * F.silu(z.float())
        grouped = gated.unflatten(-1, (self.num_groups, -1))
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(y.dtype)

    def reset_parameters(self) -> None:
        """Weights to one."""
        nn.init.ones_(self.weight)
