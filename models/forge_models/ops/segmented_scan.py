"""Mamba-2's causal conv + SSD scan over one row cut into sequence segments, exact at every edge.

Legend: L length, C conv channels, H heads, P head dim, W conv width, S segment length.

Used when one row is too long for one kernel call (ops/kernel_limits.py). Each segment is its
own pair of calls; what crosses a segment edge is handed over explicitly:
- the conv: a token reads the W-1 tokens before it, so each segment's conv also reads the W-1
  inputs before its start (with their own document index, so a document boundary there still
  cuts the taps) and drops their outputs;
- the SSM state: the previous segment's final state enters the next segment as its initial
  state, but only when the segment starts inside the document that the previous one ended in.
  When a new document starts exactly at the edge, the segment starts from zero, as a reset would.
  Inside a segment the document index is renumbered from 0, because the kernels apply an initial
  state to the tokens whose index equals the first one's (mamba_ssm's state passing starts from 0).
Gradients flow through the handed-over state, so the backward pass is exact too.

The conv and scan are passed in, so the same driver runs the CUDA kernels on GPU and the
reference ops in the CPU tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# conv(xbc (1, l, C), seq_idx (1, l) int32 or None) -> silu(conv(xbc)) (1, l, C)
ConvFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
# scan(x (1, S, H, P), dt (1, S, H), B, C, seq_idx (1, S) int32 or None, initial state or None)
#   -> (y (1, S, H, P), final state (1, H, P, N))
ScanFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                   torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
SplitFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def segmented_conv_scan(xbc_1LC: torch.Tensor, dt_1LH: torch.Tensor, seq_idx_1L: torch.Tensor | None,
                        segment_length: int, conv_width: int, split_xbc: SplitFn, conv: ConvFn,
                        scan: ScanFn) -> torch.Tensor:
    """y (1, L, H, P) of conv -> split into x, B, C -> scan, computed segment by segment."""
    if xbc_1LC.shape[0] != 1:
        raise ValueError(f"segmented_conv_scan takes one row at a time, got a batch of {xbc_1LC.shape[0]}")
    length = xbc_1LC.shape[1]
    reach = conv_width - 1
    ys, state = [], None
    for start in range(0, length, segment_length):
        end = min(length, start + segment_length)
        lo = max(0, start - reach)  # the conv's window reaches `reach` tokens back
        window_idx = None if seq_idx_1L is None else seq_idx_1L[:, lo:end].to(torch.int32).contiguous()
        x, B, C = split_xbc(conv(xbc_1LC[:, lo:end], window_idx)[:, start - lo:])
        continues = start > 0 and (seq_idx_1L is None or bool(seq_idx_1L[0, start] == seq_idx_1L[0, start - 1]))
        local_idx = None
        if seq_idx_1L is not None:
            segment_idx = seq_idx_1L[:, start:end]
            local_idx = (segment_idx - segment_idx[:, :1]).to(torch.int32).contiguous()
        y, state = scan(x, dt_1LH[:, start:end], B, C, local_idx, state if continues else None)
        ys.append(y)
    return torch.cat(ys, dim=1)
