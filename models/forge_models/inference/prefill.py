"""Packed prefill: prompts of different lengths in one row, one forward, each prompt's decode state out.

Legend: T packed tokens (sum of the prompt lengths), n prompts, D d_model, V vocabulary,
C conv channels, W conv width, H heads, P head dim, G groups, N state size, E head dim.

The prompts are concatenated into one row with a document index (seq_idx, as in training), so
every mixer resets at a prompt boundary and each prompt computes what it would compute alone.
What each layer leaves for decoding is written straight into the engine's buffers at the
prompt's row:
- Mamba-2: the last W-1 conv inputs of the prompt (zero on the left when it is shorter) and
  its final SSM state. On CUDA: causal_conv1d_fn + mamba_chunk_scan_combined, which returns
  every prompt's final state from `cu_seqlens` with `return_varlen_states=True` (batch 1 only,
  hence one packed row; mamba-ssm 2.2/2.3: the states are built from its chunk states, which it
  keeps in the activation dtype, so a bf16 prefill hands over bf16-accurate states). On CPU: the reference conv and scan, and the per-prompt states from
  their closed form (`varlen_final_states_ref`).
- Mamba-1: its projections run packed; the selective scan (a loop over time, no varlen kernel)
  runs per prompt, which is the same work.
- Attention: keys and values of each prompt copied into its row of the KV cache; the attention
  itself runs per prompt (causal SDPA, flash kernels on CUDA): no (T, T) mask, no compilation
  per packed length.
- The LM head only reads each prompt's last position: (n, V) logits, not (T, V).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from forge_models.attention import Attention, apply_rope
from forge_models.inference.buffers import DecodeBuffers, KVBuffers, MambaBuffers
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.model import LanguageModel, positions_from_seq_idx
from forge_models.ops import kernels
from forge_models.ops.conv import causal_conv1d_ref
from forge_models.ops.kernel_limits import check_offsets
from forge_models.ops.selective_scan import selective_scan_ref
from forge_models.ops.ssd import ssd_scan_ref


class PackedPrompts:
    """One row of concatenated prompts with its document index and boundaries."""

    def __init__(self, prompts: Sequence[torch.Tensor], device: torch.device) -> None:
        lengths = [int(p.numel()) for p in prompts]
        self.lengths = lengths
        self.ids_1T = torch.cat([p.reshape(-1) for p in prompts]).to(device=device, dtype=torch.long)[None]
        doc_index = [torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)]
        self.seq_idx_1T = torch.cat(doc_index)[None].to(device)
        cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
        self.cu_seqlens = cu.to(device=device, dtype=torch.int32)
        self.starts = [int(s) for s in cu[:-1]]
        self.ends = [int(e) for e in cu[1:]]
        self.last_n = (cu[1:] - 1).to(device)

    @property
    def num_prompts(self) -> int:
        return len(self.lengths)


def last_inputs_per_prompt(x_1TC: torch.Tensor, packed: PackedPrompts, width: int) -> torch.Tensor:
    """(n, W-1, C): each prompt's last W-1 conv inputs, zero where they would come from before it."""
    reach = torch.arange(width - 1, device=x_1TC.device) - (width - 2)  # -(W-2) .. 0
    index_nW = packed.last_n[:, None] + reach[None, :]
    starts = (packed.cu_seqlens[:-1].long())[:, None]
    inside = (index_nW >= starts).unsqueeze(-1)
    return x_1TC[0, index_nW.clamp(min=0)] * inside.to(x_1TC.dtype)


def varlen_final_states_ref(x_THP: torch.Tensor, dt_TH: torch.Tensor, A_H: torch.Tensor, B_TGN: torch.Tensor,
                            packed: PackedPrompts) -> torch.Tensor:
    """(n, H, P, N) fp32: each prompt's final SSD state, h = sum_s exp(sum_{k>s} dt_k A) dt_s x_s B_s^T.

    dt is already softplus'd. The decay uses a reversed cumsum inside each prompt (sums, never
    differences of cumsums, which lose precision far into a long row)."""
    heads_per_group = x_THP.shape[1] // B_TGN.shape[1]
    states = []
    for start, end in zip(packed.starts, packed.ends):
        dt = dt_TH[start:end].float()
        a = dt * A_H.float()
        after = torch.flip(torch.cumsum(torch.flip(a, [0]), 0), [0]) - a  # sum over k > s
        B = B_TGN[start:end].float().repeat_interleave(heads_per_group, dim=1)
        states.append(torch.einsum("th,thp,thn->hpn", torch.exp(after), x_THP[start:end].float() * dt[..., None], B))
    return torch.stack(states)


def mamba2_prefill(mixer: Mamba2Mixer, u_1TD: torch.Tensor, packed: PackedPrompts, use_kernels: bool,
                   buf: MambaBuffers, rows: slice) -> torch.Tensor:
    """The mixer's output on the packed row; writes each prompt's conv and SSM state into `rows`."""
    zxbcdt = F.linear(u_1TD, mixer.in_proj_weight())
    z, xbc, dt = torch.split(zxbcdt, [mixer.d_inner, zxbcdt.shape[-1] - mixer.d_inner - mixer.num_heads,
                                      mixer.num_heads], dim=-1)
    A_H = -torch.exp(mixer.A_log.float())
    buf.conv[rows] = last_inputs_per_prompt(xbc, packed, mixer.d_conv).to(buf.conv.dtype)
    if use_kernels:
        check_offsets("Mamba-2 packed prefill", zxbcdt)
        conv = kernels.causal_conv1d_fn()(xbc.contiguous().transpose(1, 2), mixer.conv_weight(), mixer.conv_bias(),
                                          seq_idx=packed.seq_idx_1T, activation="silu").transpose(1, 2)
        x_1THP, B_1TGN, C_1TGN = mixer._split_xbc(conv)
        y_1THP, states_nHPN = kernels.ssd_kernels().mamba_chunk_scan_combined(
            x_1THP, dt, A_H, B_1TGN, C_1TGN, mixer.chunk_size, D=mixer.D, z=None, dt_bias=mixer.dt_bias,
            seq_idx=packed.seq_idx_1T, cu_seqlens=packed.cu_seqlens, dt_softplus=True, return_varlen_states=True)
    else:
        conv = F.silu(causal_conv1d_ref(xbc, mixer.conv_weight(), mixer.conv_bias(), packed.seq_idx_1T))
        x_1THP, B_1TGN, C_1TGN = mixer._split_xbc(conv)
        dt_1TH = F.softplus(dt.float() + mixer.dt_bias.float())
        y_1THP, _ = ssd_scan_ref(x_1THP, dt_1TH, A_H, B_1TGN, C_1TGN, mixer.chunk_size, packed.seq_idx_1T)
        y_1THP = y_1THP + x_1THP.float() * mixer.D.float()[:, None]
        states_nHPN = varlen_final_states_ref(x_1THP[0], dt_1TH[0], A_H, B_1TGN[0], packed)
    buf.ssm[rows] = states_nHPN.float()
    return mixer.out_proj(mixer.norm(y_1THP.flatten(-2).to(u_1TD.dtype), z))


def mamba1_dt(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """softplus(dt_proj(dt_low_proj(x))) in fp32, with dt_proj's bias added in fp32: the bias is kept
    fp32 under a bf16 cast (params.mark_keep_fp32), so nn.Linear would refuse the mixed dtypes."""
    dt = F.linear(mixer.dt_low_proj(x), mixer.dt_proj.weight).float() + mixer.dt_proj.bias.float()
    return F.softplus(dt)


def mamba1_prefill(mixer: MambaMixer, u_1TD: torch.Tensor, packed: PackedPrompts, buf: MambaBuffers,
                   rows: slice) -> torch.Tensor:
    """Mamba-1 on the packed row: projections and conv packed, the (reference) scan per prompt."""
    x_in, z = mixer.x_in_proj(u_1TD), mixer.z_proj(u_1TD)
    buf.conv[rows] = last_inputs_per_prompt(x_in, packed, mixer.d_conv).to(buf.conv.dtype)
    x = F.silu(causal_conv1d_ref(x_in, mixer.conv_weight, mixer.conv_bias, packed.seq_idx_1T))
    dt, b, c = mamba1_dt(mixer, x), mixer.B_proj(x), mixer.C_proj(x)
    A_IN = -torch.exp(mixer.A_log.float())
    ys, states = [], []
    for start, end in zip(packed.starts, packed.ends):
        y, state = selective_scan_ref(x[:, start:end], dt[:, start:end], A_IN, b[:, start:end], c[:, start:end])
        ys.append(y)
        states.append(state[0])
    buf.ssm[rows] = torch.stack(states)
    y = (torch.cat(ys, dim=1) + x.float() * mixer.D.float()) * F.silu(z.float())
    return mixer.out_proj(y.to(u_1TD.dtype))


def attention_prefill(mixer: Attention, x_1TD: torch.Tensor, positions_1T: torch.Tensor, packed: PackedPrompts,
                      buf: KVBuffers, rows: slice) -> torch.Tensor:
    """Causal attention inside each prompt; its keys and values go to its row of the cache."""
    length = x_1TD.shape[1]
    q = mixer.q_proj(x_1TD).view(1, length, mixer.num_heads, mixer.head_dim)
    k = mixer.k_proj(x_1TD).view(1, length, mixer.num_kv_groups, mixer.head_dim)
    v = mixer.v_proj(x_1TD).view(1, length, mixer.num_kv_groups, mixer.head_dim)
    if mixer.rope:
        q, k = apply_rope(q, positions_1T, mixer.rope_base), apply_rope(k, positions_1T, mixer.rope_base)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (1, heads, T, E)
    outs = []
    for i, (start, end) in enumerate(zip(packed.starts, packed.ends)):
        row = rows.start + i
        buf.k[row, :, : end - start] = k[0, :, start:end].to(buf.k.dtype)
        buf.v[row, :, : end - start] = v[0, :, start:end].to(buf.v.dtype)
        outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                                   is_causal=True, enable_gqa=mixer.num_kv_groups != mixer.num_heads))
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(1, length, mixer.num_heads * mixer.head_dim)
    return mixer.o_proj(out)


@torch.no_grad()
def packed_prefill(model: LanguageModel, prompts: Sequence[torch.Tensor], buffers: DecodeBuffers, first_row: int,
                   use_kernels: bool) -> torch.Tensor:
    """Run `prompts` as one packed row; prompt i's state goes to row first_row + i of `buffers`.

    Returns the logits at each prompt's last position, (n, V); sets the rows' lengths."""
    device = model.embedding.weight.device
    packed = PackedPrompts(prompts, device)
    rows = slice(first_row, first_row + packed.num_prompts)
    positions_1T = positions_from_seq_idx(packed.seq_idx_1T)
    x = model.embedding(packed.ids_1T)
    for block, buf in zip(model.layers, buffers.layers):
        mixer, h = block.mixer, block.norm(x)
        if isinstance(mixer, Mamba2Mixer):
            out = mamba2_prefill(mixer, h, packed, use_kernels, buf, rows)
        elif isinstance(mixer, MambaMixer):
            out = mamba1_prefill(mixer, h, packed, buf, rows)
        elif isinstance(mixer, Attention):
            out = attention_prefill(mixer, h, positions_1T, packed, buf, rows)
        else:
            out = mixer(h)
        x = x + out
    buffers.lengths[rows] = torch.tensor(packed.lengths, device=device)
    last = model.final_norm(x[0, packed.last_n])
    return F.linear(last, model.lm_head_weight())
