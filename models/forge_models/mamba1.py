"""Mamba-1 mixer (`m` in a pattern): in-projection, causal conv, selective scan, gate, out-projection.

Legend: B batch, L length, D d_model, I d_inner, R dt rank, N d_state, W conv width.

Every projection is its own weight (x and z in; dt-low, B, C from x; dt up; out) so a TP split
by channels is a slice; Mamba-1 still needs two all-reduces per layer under TP (paper, Sec. 2.1)
because dt-low, B and C reduce over all channels. Always runs the reference scan (see
ops/selective_scan.py for why there is no kernel path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forge_models.cache import MambaState
from forge_models.config import ModelConfig
from forge_models.ops.conv import causal_conv1d_ref, causal_conv1d_step, conv_state_from_inputs
from forge_models.ops.selective_scan import selective_scan_ref, selective_scan_step
from forge_models.params import inverse_softplus_dt, mark_keep_fp32, mark_no_weight_decay


class MambaMixer(nn.Module):
    """One Mamba-1 layer's mixer (without its pre-norm and residual)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.mamba
        self.cfg = m
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = cfg.mamba_d_inner, m.d_state, m.d_conv, cfg.mamba_dt_rank
        self.x_in_proj = nn.Linear(cfg.d_model, self.d_inner, bias=False)
        self.z_proj = nn.Linear(cfg.d_model, self.d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, self.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner)) if m.conv_bias else None
        self.dt_low_proj = nn.Linear(self.d_inner, self.dt_rank, bias=False)
        self.B_proj = nn.Linear(self.d_inner, self.d_state, bias=False)
        self.C_proj = nn.Linear(self.d_inner, self.d_state, bias=False)
        # dt_proj's bias is Mamba-1's dt bias: it sets the initial dt range, so it is kept.
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        mark_no_weight_decay(self.conv_bias, self.dt_proj.bias, self.A_log, self.D)
        mark_keep_fp32(self.dt_proj.bias, self.A_log, self.D)

    def reset_parameters(self, init_std: float, out_std: float) -> None:
        """Mamba-1 initialisation: S4D-real A = -(1..N), dt log-uniform, D = 1."""
        for lin in (self.x_in_proj, self.z_proj, self.dt_low_proj, self.B_proj, self.C_proj):
            nn.init.normal_(lin.weight, std=init_std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        bound = 1.0 / math.sqrt(self.d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        with torch.no_grad():
            m = self.cfg
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, m.dt_min, m.dt_max, m.dt_init_floor))
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
            self.A_log.copy_(torch.log(a))
            self.D.fill_(1.0)

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Empty decode state; its size does not depend on the context length."""
        return MambaState(
            conv=torch.zeros(batch, self.d_conv - 1, self.d_inner, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dt = F.softplus(self.dt_proj(self.dt_low_proj(x)).float())
        return dt, self.B_proj(x), self.C_proj(x)

    def forward(
        self,
        u_BLD: torch.Tensor,
        seq_idx_BL: torch.Tensor | None = None,
        position_ids_BL: torch.Tensor | None = None,
        state: MambaState | None = None,
    ) -> torch.Tensor:
        """Mix along the sequence with resets at document boundaries."""
        del position_ids_BL
        if state is not None and state.filled:
            return torch.stack([self._step(u_BLD[:, t], state) for t in range(u_BLD.shape[1])], dim=1)
        x_in, z = self.x_in_proj(u_BLD), self.z_proj(u_BLD)
        x = F.silu(causal_conv1d_ref(x_in, self.conv_weight, self.conv_bias, seq_idx_BL))
        dt, b, c = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        y, final_state = selective_scan_ref(x, dt, A, b, c, seq_idx_BL,
                                            None if state is None else state.ssm)
        y = (y + x.float() * self.D.float()) * F.silu(z.float())
        if state is not None:
            state.conv = conv_state_from_inputs(x_in, self.d_conv, seq_idx_BL).to(state.conv.dtype)
            state.ssm = final_state
            state.filled = True
        return self.out_proj(y.to(u_BLD.dtype))

    def _step(self, u_BD: torch.Tensor, state: MambaState) -> torch.Tensor:
        x_in, z = self.x_in_proj(u_BD), self.z_proj(u_BD)
        x, state.conv = causal_conv1d_step(x_in, state.conv, self.conv_weight, self.conv_bias)
        x = F.silu(x)
        dt, b, c = self._ssm_inputs(x)
        y, state.ssm = selective_scan_step(x, dt, -torch.exp(self.A_log.float()), b, c, state.ssm)
        y = (y + x.float() * self.D.float()) * F.silu(z.float())
        return self.out_proj(y.to(u_BD.dtype))
