"""Mamba-2 mixer: projections, depthwise causal conv, SSD scan, grouped gated RMSNorm, out-projection.

Legend: B batch, L length, D d_model, I d_inner, H heads, P head dim, G groups, N d_state,
W conv width, C conv channels (I + 2*G*N).

Do not fuse before you shard: z, x, B, C and dt have their own projection weights and x, B, C
their own conv weights, so a tensor-parallel split by heads (z, x, dt, A_log, D, dt_bias, norm,
out_proj rows) and by groups (B, C) is a plain slice of each parameter. At run time the weights
are concatenated in mamba_ssm's [z, x, B, C, dt] order, one matmul, which is exactly what the
fused kernel consumes; the concat costs one weight copy per call and no extra parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forge_models.cache import MambaState
from forge_models.config import ModelConfig
from forge_models.norms import GatedGroupRMSNorm
from forge_models.ops import kernels
from forge_models.ops.conv import causal_conv1d_ref, causal_conv1d_step, conv_state_from_inputs
from forge_models.ops.ssd import ssd_scan_ref, ssd_step
from forge_models.params import inverse_softplus_dt, mark_keep_fp32, mark_no_weight_decay


class Mamba2Mixer(nn.Module):
    """One Mamba-2 layer's mixer (without its pre-norm and residual)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.mamba2
        d_model, self.d_inner = cfg.d_model, cfg.mamba2_d_inner
        self.num_heads, self.head_dim = cfg.mamba2_num_heads, m.head_dim
        self.ngroups, self.d_state, self.d_conv, self.chunk_size = m.ngroups, m.d_state, m.d_conv, m.chunk_size
        self.kernels = cfg.kernels
        self.cfg = m
        gn = self.ngroups * self.d_state
        self.z_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.x_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.B_proj = nn.Linear(d_model, gn, bias=False)
        self.C_proj = nn.Linear(d_model, gn, bias=False)
        self.dt_proj = nn.Linear(d_model, self.num_heads, bias=False)
        self.conv_x_weight = nn.Parameter(torch.empty(self.d_inner, self.d_conv))
        self.conv_B_weight = nn.Parameter(torch.empty(gn, self.d_conv))
        self.conv_C_weight = nn.Parameter(torch.empty(gn, self.d_conv))
        if m.conv_bias:
            self.conv_x_bias = nn.Parameter(torch.empty(self.d_inner))
            self.conv_B_bias = nn.Parameter(torch.empty(gn))
            self.conv_C_bias = nn.Parameter(torch.empty(gn))
            mark_no_weight_decay(self.conv_x_bias, self.conv_B_bias, self.conv_C_bias)
        else:
            self.conv_x_bias = self.conv_B_bias = self.conv_C_bias = None
        # Per-head SSM parameters, kept in fp32: exp(A_log) and softplus(dt) are precision-sensitive.
        self.A_log = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        mark_no_weight_decay(self.A_log, self.D, self.dt_bias)
        mark_keep_fp32(self.A_log, self.D, self.dt_bias)
        self.norm = GatedGroupRMSNorm(self.d_inner, self.ngroups, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def reset_parameters(self, init_std: float, out_std: float) -> None:
        """Mamba-2 initialisation: dt log-uniform, A uniform in [a_init_min, a_init_max], D = 1."""
        for lin in (self.z_proj, self.x_proj, self.B_proj, self.C_proj, self.dt_proj):
            nn.init.normal_(lin.weight, std=init_std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        bound = 1.0 / math.sqrt(self.d_conv)  # PyTorch's depthwise Conv1d default (fan_in = W)
        for p in (self.conv_x_weight, self.conv_B_weight, self.conv_C_weight,
                  self.conv_x_bias, self.conv_B_bias, self.conv_C_bias):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            m = self.cfg
            self.dt_bias.copy_(inverse_softplus_dt(self.num_heads, m.dt_min, m.dt_max, m.dt_init_floor))
            self.A_log.copy_(torch.log(torch.empty(self.num_heads).uniform_(m.a_init_min, m.a_init_max)))
            self.D.fill_(1.0)
        self.norm.reset_parameters()

    # The runtime concatenations: [z, x, B, C, dt] rows and [x, B, C] conv channels.
    def in_proj_weight(self) -> torch.Tensor:
        """The fused in-projection weight ((2I + 2GN + H), D) in mamba_ssm's order.

        Under autocast the pieces are cast first and concatenated in the compute dtype: the
        linear would cast the fp32 concatenation anyway, and this moves ~40% fewer bytes."""
        pieces = [self.z_proj.weight, self.x_proj.weight, self.B_proj.weight, self.C_proj.weight,
                  self.dt_proj.weight]
        device_type = pieces[0].device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            pieces = [p.to(dtype) for p in pieces]
        return torch.cat(pieces, dim=0)

    def conv_weight(self) -> torch.Tensor:
        """Depthwise conv weight (C, W) over the concatenated x, B, C channels."""
        return torch.cat([self.conv_x_weight, self.conv_B_weight, self.conv_C_weight], dim=0)

    def conv_bias(self) -> torch.Tensor | None:
        """Conv bias (C,) or None."""
        if self.conv_x_bias is None:
            return None
        return torch.cat([self.conv_x_bias, self.conv_B_bias, self.conv_C_bias], dim=0)

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Empty decode state; its size does not depend on the context length."""
        conv_channels = self.d_inner + 2 * self.ngroups * self.d_state
        return MambaState(
            conv=torch.zeros(batch, self.d_conv - 1, conv_channels, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.num_heads, self.head_dim, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self,
        u_BLD: torch.Tensor,
        seq_idx_BL: torch.Tensor | None = None,
        position_ids_BL: torch.Tensor | None = None,
        state: MambaState | None = None,
    ) -> torch.Tensor:
        """Mix along the sequence; documents (runs of equal seq_idx) never see each other."""
        del position_ids_BL  # Mamba needs no positions: the first Mamba layer learns them.
        if state is not None and state.filled:
            steps = [self._step(u_BLD[:, t], state) for t in range(u_BLD.shape[1])]
            return torch.stack(steps, dim=1)
        if state is None and kernels.use_kernels(self.kernels, u_BLD):
            from forge_models.ops.mamba2_kernel import mamba2_kernel_forward  # lazy: CUDA only

            return mamba2_kernel_forward(self, u_BLD, seq_idx_BL)
        return self._forward_reference(u_BLD, seq_idx_BL, state)

    def _split_xbc(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gn = self.ngroups * self.d_state
        x, b, c = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, self.num_heads, self.head_dim),
                b.reshape(*lead, self.ngroups, self.d_state), c.reshape(*lead, self.ngroups, self.d_state))

    def _forward_reference(
        self, u_BLD: torch.Tensor, seq_idx_BL: torch.Tensor | None, state: MambaState | None
    ) -> torch.Tensor:
        zxbcdt = F.linear(u_BLD, self.in_proj_weight())
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, zxbcdt.shape[-1] - self.d_inner - self.num_heads,
                                          self.num_heads], dim=-1)
        conv_weight, conv_bias = self.conv_weight(), self.conv_bias()
        xbc_conv = F.silu(causal_conv1d_ref(xbc, conv_weight, conv_bias, seq_idx_BL))
        x_BLHP, B_BLGN, C_BLGN = self._split_xbc(xbc_conv)
        dt_BLH = F.softplus(dt.float() + self.dt_bias.float())
        A_H = -torch.exp(self.A_log.float())
        y_BLHP, final_state = ssd_scan_ref(
            x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN, self.chunk_size, seq_idx_BL,
            initial_state_BHPN=None if state is None else state.ssm,
        )
        y_BLHP = y_BLHP + x_BLHP.float() * self.D.float()[:, None]
        y_BLI = self.norm(y_BLHP.flatten(-2).to(u_BLD.dtype), z)
        if state is not None:  # prefill: keep what the next decode step needs
            state.conv = conv_state_from_inputs(xbc, self.d_conv, seq_idx_BL).to(state.conv.dtype)
            state.ssm = final_state
            state.filled = True
        return self.out_proj(y_BLI)

    def _step(self, u_BD: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token with constant memory: conv window + one recurrence step."""
        zxbcdt = F.linear(u_BD, self.in_proj_weight())
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, zxbcdt.shape[-1] - self.d_inner - self.num_heads,
                                          self.num_heads], dim=-1)
        xbc_conv, state.conv = causal_conv1d_step(xbc, state.conv, self.conv_weight(), self.conv_bias())
        x_BHP, B_BGN, C_BGN = self._split_xbc(F.silu(xbc_conv))
        dt_BH = F.softplus(dt.float() + self.dt_bias.float())
        y_BHP, state.ssm = ssd_step(x_BHP, dt_BH, -torch.exp(self.A_log.float()), B_BGN, C_BGN, state.ssm)
        y_BHP = y_BHP + x_BHP.float() * self.D.float()[:, None]
        return self.out_proj(self.norm(y_BHP.flatten(-2).to(u_BD.dtype), z))
