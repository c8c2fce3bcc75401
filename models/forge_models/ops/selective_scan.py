"""Mamba-1 selective scan in pure PyTorch (fp32), with document resets from seq_idx.

Legend: B batch, L length, I channels (d_inner), N state size.

The recurrence per channel is h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t, y_t = C_t h_t; at a
document start h_{t-1} is zeroed. This is a plain loop over time: obviously correct, linear in
L, but it saves a (B, I, N) state per step for backward. It is also the GPU path, because
mamba_ssm's Mamba-1 CUDA kernel (selective_scan_cuda) takes no document index (and is not
installed on the device image); Mamba-1 is a baseline here, Mamba-2 is the production mixer.
"""

from __future__ import annotations

import torch

from forge_models.ops.ssd import doc_starts


def selective_scan_step(
    x_BI: torch.Tensor, dt_BI: torch.Tensor, A_IN: torch.Tensor, B_BN: torch.Tensor, C_BN: torch.Tensor,
    state_BIN: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence in fp32: returns (y (B, I), new state (B, I, N))."""
    dt = dt_BI.float()
    decay = torch.exp(dt.unsqueeze(-1) * A_IN.float())
    state = decay * state_BIN + (dt * x_BI.float()).unsqueeze(-1) * B_BN.float().unsqueeze(1)
    y = (state * C_BN.float().unsqueeze(1)).sum(-1)
    return y, state


def selective_scan_ref(
    x_BLI: torch.Tensor,
    dt_BLI: torch.Tensor,
    A_IN: torch.Tensor,
    B_BLN: torch.Tensor,
    C_BLN: torch.Tensor,
    seq_idx_BL: torch.Tensor | None = None,
    initial_state_BIN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan over L; returns (y (B, L, I) fp32 without the D skip, final state (B, I, N) fp32)."""
    batch, length, channels = x_BLI.shape
    state = initial_state_BIN
    if state is None:
        state = torch.zeros(batch, channels, A_IN.shape[1], device=x_BLI.device, dtype=torch.float32)
    keep = None if seq_idx_BL is None else (~doc_starts(seq_idx_BL)).float()
    ys = []
    for t in range(length):
        if keep is not None:
            state = state * keep[:, t, None, None]
        y, state = selective_scan_step(x_BLI[:, t], dt_BLI[:, t], A_IN, B_BLN[:, t], C_BLN[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state
