"""Mamba-2 kernel path: mamba_ssm's Triton SSD kernels and causal_conv1d, with seq_idx resets.

Imported only from Mamba2Mixer.forward when ops.kernels.use_kernels() says so, i.e. on CUDA
with the packages present; nothing here runs on CPU. It computes exactly the reference path
(ops/conv.py + ops/ssd.py + the gated group norm), checked by tests/models/test_gpu_kernels.py.

Two variants (Mamba2Config.kernel_fused):
- fused (default): `mamba_split_conv1d_scan_combined` runs conv, scan, gated group RMSNorm and
  the out-projection in one autograd function and recomputes instead of saving the conv output.
  The device anchors measured it at 47.9% MFU against 36.2% for the unfused module.
- unfused: `causal_conv1d_fn` + `mamba_chunk_scan_combined`, then our norm and out-projection;
  kept because it is easier to profile per op and to shard differently.
Both want seq_idx as contiguous int32; causal_conv1d wants channel-last x (B, C, L) views.
Both index memory in 32 bits: a call too large for that is split first (ops/kernel_limits.py),
into whole rows or, for one row, into segments that run the unfused pair (ops/segmented_scan.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from forge_models.ops import kernels
from forge_models.ops.kernel_limits import Mamba2Widths, check_offsets, plan_mamba2_calls
from forge_models.ops.segmented_scan import segmented_conv_scan

if TYPE_CHECKING:
    from forge_models.mamba2 import Mamba2Mixer


def mamba2_kernel_forward(mixer: Mamba2Mixer, u_BLD: torch.Tensor, seq_idx_BL: torch.Tensor | None) -> torch.Tensor:
    """The mixer's training forward (no decode state) on the CUDA kernels.

    One call when it stays inside the kernels' 32-bit offsets (every shape measured fast so far);
    otherwise calls of whole rows, or one row in sequence segments (ops/kernel_limits.py).
    """
    seq_idx = None if seq_idx_BL is None else seq_idx_BL.to(torch.int32).contiguous()
    zxbcdt = F.linear(u_BLD, mixer.in_proj_weight())
    A_H = -torch.exp(mixer.A_log.float())
    batch, length = u_BLD.shape[:2]
    plan = plan_mamba2_calls(batch, length, mixer_widths(mixer))
    if plan.single_call and plan.rows_per_call >= batch:
        return _whole_rows(mixer, zxbcdt, A_H, seq_idx, u_BLD.dtype)
    rows = plan.rows_per_call
    parts = []
    for r in range(0, batch, rows):
        row_idx = None if seq_idx is None else seq_idx[r:r + rows]
        if plan.single_call:
            parts.append(_whole_rows(mixer, zxbcdt[r:r + rows], A_H, row_idx, u_BLD.dtype))
        else:
            parts.append(_segmented_row(mixer, zxbcdt[r:r + 1], A_H, row_idx, plan.segment_length, u_BLD.dtype))
    return torch.cat(parts, dim=0)


def mixer_widths(mixer: Mamba2Mixer) -> Mamba2Widths:
    """The per-token widths a call of this (possibly tensor-parallel, hence narrowed) mixer touches."""
    return Mamba2Widths(d_inner=mixer.d_inner, ngroups=mixer.ngroups, d_state=mixer.d_state,
                        num_heads=mixer.num_heads, chunk_size=mixer.chunk_size)


def _split_projection(mixer: Mamba2Mixer, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z, xBC, dt: views of the fused projection."""
    return torch.split(zxbcdt, [mixer.d_inner, zxbcdt.shape[-1] - mixer.d_inner - mixer.num_heads,
                                mixer.num_heads], dim=-1)


def _conv(mixer: Mamba2Mixer, xbc_BLC: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """silu(causal conv) on causal_conv1d's kernel: it wants channel-last (B, C, L) views."""
    return kernels.causal_conv1d_fn()(xbc_BLC.contiguous().transpose(1, 2), mixer.conv_weight(), mixer.conv_bias(),
                                      seq_idx=seq_idx, activation="silu").transpose(1, 2)


def _whole_rows(mixer: Mamba2Mixer, zxbcdt: torch.Tensor, A_H: torch.Tensor, seq_idx: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """One kernel call over whole rows (fused or unfused, per the config)."""
    ssd = kernels.ssd_kernels()
    check_offsets("Mamba-2 kernel call", zxbcdt)
    if mixer.cfg.kernel_fused:
        return ssd.mamba_split_conv1d_scan_combined(
            zxbcdt, mixer.conv_weight(), mixer.conv_bias(), mixer.dt_bias, A_H, mixer.D, mixer.chunk_size,
            seq_idx=seq_idx, activation="silu", rmsnorm_weight=mixer.norm.weight, rmsnorm_eps=mixer.norm.eps,
            outproj_weight=mixer.out_proj.weight, outproj_bias=None, headdim=mixer.head_dim,
            ngroups=mixer.ngroups, norm_before_gate=False,  # our norm is rmsnorm(y * silu(z))
        )
    z, xbc, dt = _split_projection(mixer, zxbcdt)
    x_BLHP, B_BLGN, C_BLGN = mixer._split_xbc(_conv(mixer, xbc, seq_idx))
    y_BLHP = ssd.mamba_chunk_scan_combined(
        x_BLHP, dt, A_H, B_BLGN, C_BLGN, mixer.chunk_size, D=mixer.D, z=None, dt_bias=mixer.dt_bias,
        seq_idx=seq_idx, dt_softplus=True,
    )
    return mixer.out_proj(mixer.norm(y_BLHP.flatten(-2).to(dtype), z))


def _segmented_row(mixer: Mamba2Mixer, zxbcdt_1LZ: torch.Tensor, A_H: torch.Tensor, seq_idx: torch.Tensor | None,
                   segment_length: int, dtype: torch.dtype) -> torch.Tensor:
    """One row too long for one call: unfused conv and scan per segment, states handed across edges."""
    ssd = kernels.ssd_kernels()
    z, xbc, dt = _split_projection(mixer, zxbcdt_1LZ)

    def scan(x: torch.Tensor, dt_seg: torch.Tensor, B: torch.Tensor, C: torch.Tensor, seg_idx: torch.Tensor | None,
             state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        check_offsets("Mamba-2 segment", dt_seg, x, B, C)
        return ssd.mamba_chunk_scan_combined(
            x, dt_seg, A_H, B, C, mixer.chunk_size, D=mixer.D, z=None, dt_bias=mixer.dt_bias,
            initial_states=state, seq_idx=seg_idx, dt_softplus=True, return_final_states=True,
        )

    y_1LHP = segmented_conv_scan(xbc, dt, seq_idx, segment_length, mixer.d_conv, mixer._split_xbc,
                                 lambda xbc_seg, idx: _conv(mixer, xbc_seg, idx), scan)
    return mixer.out_proj(mixer.norm(y_1LHP.flatten(-2).to(dtype), z))
