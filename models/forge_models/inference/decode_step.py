"""One decode step over static buffers: every row consumes one token, returns the next-token logits.

Legend: b rows in this step, D d_model, V vocabulary, Z Mamba-2 in-projection width,
C conv channels, H heads, P head dim, G groups (SSM groups or kv groups), N state size,
I Mamba-1 channels, S cache capacity, E attention head dim, r query heads per kv group.

Nothing here changes a shape or allocates a buffer that outlives the step, and nothing reads a
value back to the host: the same Python runs eagerly (CPU, the reference) and under
torch.cuda.graph capture (cuda_graph.py). Per layer kind:
- Mamba-2 / Mamba-1 on CUDA: causal_conv1d's `causal_conv1d_update` (conv window + silu, state
  updated in place) and mamba_ssm's `selective_state_update` (one recurrence step, in place);
  elsewhere the reference ops (ops/conv.py, ops/ssd.py, ops/selective_scan.py), written back
  into the same buffers. Mamba-2's five in-projection pieces and three conv pieces are
  concatenated once when the step is built (the model concatenates them on every call, which
  at decode would move the weights three times), see `refresh_weights`.
- Attention: the new key/value is scattered to position lengths[row] of the preallocated cache,
  then softmax(q K^T / sqrt(E)) V over the whole capacity with keys past lengths[row] masked:
  batched matmuls (the second split over chunks of keys), static shapes whatever each row's length.
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn.functional as F

from forge_models.attention import Attention
from forge_models.inference.buffers import KV_CHUNK, DecodeBuffers, KVBuffers, LayerBuffers, MambaBuffers
from forge_models.inference.pointwise import PointwiseOps
from forge_models.inference.prefill import mamba1_dt
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.model import LanguageModel
from forge_models.ops.conv import causal_conv1d_step
from forge_models.ops.selective_scan import selective_scan_step
from forge_models.ops.ssd import ssd_step


@functools.cache
def state_update_kernels() -> tuple:  # (selective_state_update, causal_conv1d_update)
    """The two single-token kernels, imported on first use (CUDA machines only)."""
    ssu = importlib.import_module("mamba_ssm.ops.triton.selective_state_update").selective_state_update
    return ssu, importlib.import_module("causal_conv1d").causal_conv1d_update


class Mamba2Step:
    """One token through a Mamba-2 mixer with its state in a MambaBuffers."""

    def __init__(self, mixer: Mamba2Mixer, use_kernels: bool, dtype: torch.dtype,
                 ops: PointwiseOps | None = None) -> None:
        self.mixer, self.use_kernels, self.dtype = mixer, use_kernels, dtype
        self.ops = ops or PointwiseOps(compiled=False)
        self.in_proj_weight = torch.empty(0)
        self.conv_weight = torch.empty(0)
        self.conv_bias: torch.Tensor | None = None
        self.A_H = torch.empty(0)
        self.refresh_weights()

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """(Re)build the concatenated weights from the mixer's parameters, in place once built."""
        m = self.mixer
        fresh = {"in_proj_weight": m.in_proj_weight().to(self.dtype), "conv_weight": m.conv_weight().to(self.dtype),
                 "A_H": -torch.exp(m.A_log.float())}  # concatenations: new tensors, never the parameters
        bias = m.conv_bias()
        if bias is not None:
            fresh["conv_bias"] = bias.to(self.dtype)
        for name, value in fresh.items():
            current = getattr(self, name)
            if current is not None and current.shape == value.shape:
                current.copy_(value)
            else:
                setattr(self, name, value)

    def __call__(self, h_bD: torch.Tensor, buf: MambaBuffers, positions_b: torch.Tensor) -> torch.Tensor:
        m, rows = self.mixer, h_bD.shape[0]
        zxbcdt = F.linear(h_bD, self.in_proj_weight)
        z, xbc, dt = torch.split(zxbcdt, [m.d_inner, zxbcdt.shape[-1] - m.d_inner - m.num_heads, m.num_heads], dim=-1)
        if self.use_kernels:
            ssu, conv_update = state_update_kernels()
            xbc = conv_update(xbc, buf.conv_channels_first(rows), self.conv_weight, self.conv_bias, "silu")
            x_bHP, B_bGN, C_bGN = m._split_xbc(xbc)
            # The kernel's per-channel dt, A, D, dt_bias as stride-0 views: it then runs its one-scalar-per-head path.
            hp = (m.num_heads, m.head_dim)
            y_bHP = ssu(buf.ssm[:rows], x_bHP, dt[:, :, None].expand(rows, *hp),
                        self.A_H[:, None, None].expand(*hp, m.d_state), B_bGN, C_bGN,
                        D=m.D[:, None].expand(hp), z=None, dt_bias=m.dt_bias[:, None].expand(hp), dt_softplus=True)
        else:
            conv_out, new_conv = causal_conv1d_step(xbc, buf.conv[:rows], self.conv_weight, self.conv_bias)
            buf.conv[:rows].copy_(new_conv)
            x_bHP, B_bGN, C_bGN = m._split_xbc(F.silu(conv_out))
            dt_bH = F.softplus(dt.float() + m.dt_bias.float())
            y_bHP, new_ssm = ssd_step(x_bHP, dt_bH, self.A_H, B_bGN, C_bGN, buf.ssm[:rows])
            buf.ssm[:rows].copy_(new_ssm)
            y_bHP = y_bHP + x_bHP.float() * m.D.float()[:, None]
        normed = self.ops.gated_group_rms_norm(y_bHP.flatten(-2).to(h_bD.dtype), z, m.norm.weight, m.norm.num_groups,
                                               m.norm.eps)
        return m.out_proj(normed)


class Mamba1Step:
    """One token through a Mamba-1 mixer with its state in a MambaBuffers."""

    def __init__(self, mixer: MambaMixer, use_kernels: bool, dtype: torch.dtype) -> None:
        self.mixer, self.use_kernels, self.dtype = mixer, use_kernels, dtype
        self.refresh_weights()

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Recompute A = -exp(A_log) (fp32) and the conv weight and bias in the compute dtype, in place
        once built (a captured graph keeps reading the same tensors)."""
        m = self.mixer
        fresh = {"A_IN": -torch.exp(m.A_log.float()), "conv_weight": m.conv_weight.to(self.dtype, copy=True),
                 "conv_bias": None if m.conv_bias is None else m.conv_bias.to(self.dtype, copy=True)}
        for name, value in fresh.items():
            current = getattr(self, name, None)
            if current is not None and value is not None and current.shape == value.shape:
                current.copy_(value)
            else:
                setattr(self, name, value)

    def __call__(self, h_bD: torch.Tensor, buf: MambaBuffers, positions_b: torch.Tensor) -> torch.Tensor:
        m, rows = self.mixer, h_bD.shape[0]
        x_in, z = m.x_in_proj(h_bD), m.z_proj(h_bD)
        if self.use_kernels:
            ssu, conv_update = state_update_kernels()
            x = conv_update(x_in, buf.conv_channels_first(rows), self.conv_weight, self.conv_bias, "silu")
            dt = F.linear(m.dt_low_proj(x), m.dt_proj.weight)  # the kernel adds dt_proj's bias in fp32
            y = ssu(buf.ssm[:rows], x, dt, self.A_IN, m.B_proj(x), m.C_proj(x), D=m.D, z=z,
                    dt_bias=m.dt_proj.bias, dt_softplus=True)
            return m.out_proj(y)
        conv_out, new_conv = causal_conv1d_step(x_in, buf.conv[:rows], self.conv_weight, self.conv_bias)
        buf.conv[:rows].copy_(new_conv)
        x = F.silu(conv_out)
        y, new_ssm = selective_scan_step(x, mamba1_dt(m, x), self.A_IN, m.B_proj(x), m.C_proj(x), buf.ssm[:rows])
        buf.ssm[:rows].copy_(new_ssm)
        y = (y + x.float() * m.D.float()) * F.silu(z.float())
        return m.out_proj(y.to(h_bD.dtype))


class AttentionStep:
    """One token through an attention mixer over a KVBuffers with per-row lengths."""

    def __init__(self, mixer: Attention, capacity: int, device: torch.device, ops: PointwiseOps | None = None) -> None:
        self.mixer = mixer
        self.ops = ops or PointwiseOps(compiled=False)
        self.key_positions_S = torch.arange(capacity, device=device)
        self.scale = 1.0 / math.sqrt(mixer.head_dim)

    def refresh_weights(self) -> None:
        """Nothing is copied: the projections are read from the mixer."""

    def __call__(self, h_bD: torch.Tensor, buf: KVBuffers, positions_b: torch.Tensor) -> torch.Tensor:
        m, rows = self.mixer, h_bD.shape[0]
        groups, per_group, head_dim = m.num_kv_groups, m.num_heads // m.num_kv_groups, m.head_dim
        q = m.q_proj(h_bD).view(rows, 1, m.num_heads, head_dim)
        k = m.k_proj(h_bD).view(rows, 1, groups, head_dim)
        v = m.v_proj(h_bD).view(rows, groups, 1, head_dim)
        if m.rope:
            q = self.ops.rope(q, positions_b[:, None], m.rope_base)
            k = self.ops.rope(k, positions_b[:, None], m.rope_base)
        k_cache, v_cache = buf.k[:rows], buf.v[:rows]
        slot = positions_b.view(rows, 1, 1, 1).expand(rows, groups, 1, head_dim)
        k_cache.scatter_(2, slot, k.view(rows, groups, 1, head_dim).to(k_cache.dtype))
        v_cache.scatter_(2, slot, v.to(v_cache.dtype))
        # Query head h reads kv group h // per_group (SDPA's enable_gqa order).
        q_bGrE = q.view(rows, groups, per_group, head_dim)
        scores = torch.matmul(q_bGrE, k_cache.transpose(-1, -2))  # (b, G, r, S)
        probs = self.ops.masked_softmax(scores, positions_b, self.key_positions_S, self.scale, v_cache.dtype)
        # probs @ V is a reduction over all S keys with only r x E outputs per (row, group): as one
        # matmul it would run on a handful of thread blocks. Per KV_CHUNK keys it is b*G*S/KV_CHUNK
        # small matmuls in parallel, then a sum of their partial outputs (flash-decoding's split).
        chunk = min(KV_CHUNK, v_cache.shape[2])  # a capacity above KV_CHUNK is a multiple of it
        chunks = v_cache.shape[2] // chunk
        probs_chunked = probs.view(rows, groups, per_group, chunks, chunk).transpose(2, 3)
        values_chunked = v_cache.view(rows, groups, chunks, chunk, head_dim)
        out = torch.matmul(probs_chunked, values_chunked).sum(dim=2, dtype=torch.float32).to(v_cache.dtype)
        return m.o_proj(out.reshape(rows, m.num_heads * head_dim))


class MLPStep:
    """A position-wise MLP needs no state: the module itself."""

    def __init__(self, mixer: torch.nn.Module) -> None:
        self.mixer = mixer

    def refresh_weights(self) -> None:
        """Nothing is copied."""

    def __call__(self, h_bD: torch.Tensor, buf: LayerBuffers, positions_b: torch.Tensor) -> torch.Tensor:
        return self.mixer(h_bD)


class DecodeProgram:
    """The whole step: embedding -> every layer -> final norm -> LM head, over `buffers`' first rows."""

    def __init__(self, model: LanguageModel, buffers: DecodeBuffers, use_kernels: bool,
                 compiled_pointwise: bool = False) -> None:
        self.model, self.buffers, self.use_kernels = model, buffers, use_kernels
        self.ops = PointwiseOps(compiled=compiled_pointwise)
        dtype, device = model.embedding.weight.dtype, model.embedding.weight.device
        self.steps = []
        for block in model.layers:
            mixer = block.mixer
            if isinstance(mixer, Mamba2Mixer):
                self.steps.append(Mamba2Step(mixer, use_kernels, dtype, self.ops))
            elif isinstance(mixer, MambaMixer):
                self.steps.append(Mamba1Step(mixer, use_kernels, dtype))
            elif isinstance(mixer, Attention):
                self.steps.append(AttentionStep(mixer, buffers.capacity, device, self.ops))
            else:
                self.steps.append(MLPStep(mixer))

    def refresh_weights(self) -> None:
        """Re-read the model's weights into the step's own concatenated copies (after loading new weights)."""
        for step in self.steps:
            step.refresh_weights()

    def __call__(self, tokens_b: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) for the next token of each of the first b rows; advances their lengths by one."""
        model, rows, ops = self.model, tokens_b.shape[0], self.ops
        positions_b = self.buffers.lengths[:rows]
        x = F.embedding(tokens_b, model.embedding.weight)
        norms = [block.norm for block in model.layers] + [model.final_norm]
        h = ops.rms_norm(x, norms[0].weight, norms[0].eps)
        for i, (step, buf) in enumerate(zip(self.steps, self.buffers.layers)):
            # The residual add and the next pre-norm (the final norm after the last layer) in one op.
            x, h = ops.add_rms_norm(x, step(h, buf, positions_b), norms[i + 1].weight, norms[i + 1].eps)
        positions_b.add_(1)
        return F.linear(h, model.lm_head_weight())
