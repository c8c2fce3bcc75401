"""torch.compile'd pointwise blocks for the CUDA training path (ModelConfig.compile_pointwise).

Eager RMSNorm and SwiGLU/GELU run one kernel per elementwise op and keep every fp32 / bf16
intermediate alive for the backward (the fp32 normalised output, the activation output, the
gated product). Compiled, each becomes one fused kernel per direction, and the partitioner
recomputes the cheap pointwise results in the backward instead of saving them: at 4K tokens
this is what lets micro-batch 4 of the 2.2B anchor-shaped hybrid fit in 80 GB.

The functions are plain (no module state), so all layers of a kind share one compiled graph;
they compute exactly norms.RMSNorm / mlp.MLP (checked against them by the GPU tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a following linear layer would cast to: autocast's, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm in fp32, cast to out_dtype (the consumer's compute dtype: the cast is fused in)."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(out_dtype)


def mlp_block(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, up_w: torch.Tensor,
              gate_w: torch.Tensor | None, down_w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x + MLP(RMSNorm(x)) for one `+` layer; matmuls in `dtype`, residual in x's dtype."""
    h = rms_norm(x, norm_weight, eps, dtype)
    up = F.linear(h, up_w.to(dtype))
    if gate_w is None:
        act = F.gelu(up)
    else:
        act = F.silu(F.linear(h, gate_w.to(dtype))) * up
    return x + F.linear(act, down_w.to(dtype)).to(x.dtype)


@functools.cache
def _compiled(name: str, dynamic: bool) -> Callable[..., torch.Tensor]:
    fn = {"rms_norm": rms_norm, "mlp_block": mlp_block}[name]
    return torch.compile(fn, dynamic=dynamic)


def _dynamic_shapes() -> bool:
    """Static kernels for training (a stage's shapes never change, and static ones are fastest);
    one shape-generic graph without gradients: evaluation and prefill see a new length per prompt,
    and static compilation would recompile for each until torch gives up after 8 and runs eager."""
    return not torch.is_grad_enabled()


def compiled_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused RMSNorm whose output is already in the compute dtype."""
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return _compiled("rms_norm", _dynamic_shapes())(x, weight, eps, dtype)


def compiled_mlp_block(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, up_w: torch.Tensor,
                       gate_w: torch.Tensor | None, down_w: torch.Tensor) -> torch.Tensor:
    """Fused pre-norm MLP layer with its residual add."""
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):  # explicit casts inside: one graph either way
        return _compiled("mlp_block", _dynamic_shapes())(x, norm_weight, eps, up_w, gate_w, down_w, dtype)
