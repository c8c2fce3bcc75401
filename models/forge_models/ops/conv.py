"""Depthwise causal conv1d with document resets: the slow, obviously correct reference.

Legend: B batch, L length, C channels, W conv width.
A token only sees earlier tokens of its own document: taps that reach across a change of
`seq_idx` are masked out, which is what causal_conv1d_fn does with `seq_idx` on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x_BLC: torch.Tensor,
    weight_CW: torch.Tensor,
    bias_C: torch.Tensor | None,
    seq_idx_BL: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise conv over L (no activation); taps across a seq_idx change are zero."""
    width = weight_CW.shape[1]
    length = x_BLC.shape[1]
    x_pad = F.pad(x_BLC, (0, 0, width - 1, 0))
    if seq_idx_BL is not None:
        seq_pad = F.pad(seq_idx_BL, (width - 1, 0), value=-1)
    out = torch.zeros_like(x_BLC) if bias_C is None else bias_C.to(x_BLC.dtype).expand_as(x_BLC).clone()
    for k in range(width):
        # Tap k reads x[t - (width - 1 - k)].
        tap = x_pad[:, k : k + length] * weight_CW[:, k].to(x_BLC.dtype)
        if seq_idx_BL is not None:
            tap = tap * (seq_pad[:, k : k + length] == seq_idx_BL).unsqueeze(-1).to(x_BLC.dtype)
        out = out + tap
    return out


def conv_state_from_inputs(x_BLC: torch.Tensor, width: int, seq_idx_BL: torch.Tensor | None = None) -> torch.Tensor:
    """The decode-time conv state after a prefill: the last width-1 inputs of the last document.

    Shape (B, width-1, C), zero where the prompt is shorter or the input is from an earlier doc.
    """
    x_pad = F.pad(x_BLC, (0, 0, width - 1, 0))[:, -(width - 1) :] if width > 1 else x_BLC[:, :0]
    if seq_idx_BL is not None and width > 1:
        seq_pad = F.pad(seq_idx_BL, (width - 1, 0), value=-1)[:, -(width - 1) :]
        x_pad = x_pad * (seq_pad == seq_idx_BL[:, -1:]).unsqueeze(-1).to(x_pad.dtype)
    return x_pad.contiguous()


def causal_conv1d_step(
    x_BC: torch.Tensor, state_BWC: torch.Tensor, weight_CW: torch.Tensor, bias_C: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: returns (conv output (B, C), new state (B, W-1, C)). Constant memory."""
    window = torch.cat([state_BWC, x_BC.unsqueeze(1)], dim=1)  # (B, W, C)
    out = (window * weight_CW.t().to(x_BC.dtype)).sum(dim=1)
    if bias_C is not None:
        out = out + bias_C.to(x_BC.dtype)
    return out, window[:, 1:]
