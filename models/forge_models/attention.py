"""Causal self-attention with GQA, optional RoPE, restricted to the current document.

Legend: B batch, L query length, S key length, D d_model, H query heads, G kv groups, E head dim.

Separate q / k / v / o projections keep a tensor-parallel split by heads a slice (q, o by H;
k, v by G). Masking is block-diagonal causal: query i sees key j iff j <= i and both are in the
same document (equal seq_idx). CPU and the "sdpa" backend build that mask explicitly; on CUDA
the "auto" backend uses flex_attention with a block mask, which skips fully masked blocks.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from forge_models.cache import KVCache
from forge_models.config import ModelConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_BLHE: torch.Tensor, position_ids_BL: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding (half-split layout) from explicit positions, computed in fp32."""
    head_dim = x_BLHE.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=x_BLHE.device, dtype=torch.float32) / head_dim))
    angles = position_ids_BL.float().unsqueeze(-1) * inv_freq  # (B, L, E/2)
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(2)  # (B, L, 1, E)
    x32 = x_BLHE.float()
    return (x32 * angles.cos() + rotate_half(x32) * angles.sin()).to(x_BLHE.dtype)


def doc_causal_mask(
    seq_idx_BL: torch.Tensor | None, q_len: int, k_len: int, device: torch.device
) -> torch.Tensor:
    """Boolean (B or 1, 1, L, S) mask, True = may attend. Queries are the last q_len of k_len positions."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if seq_idx_BL is not None:
        same_doc = seq_idx_BL[:, -q_len:, None] == seq_idx_BL[:, None, :]
        mask = mask & same_doc[:, None]
    return mask


@functools.cache
def _flex_attention_fn(device_type: str):  # noqa: ANN202 - a (compiled) callable
    """flex_attention is only fast when compiled: compile once per process on CUDA.

    Elsewhere (CPU tests of the mask logic, forward only: flex has no CPU backward) run eagerly.
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


# One-entry cache: every attention layer of a forward gets the same seq_idx tensor, so the block
# mask is built once per forward, not once per layer. The key holds a weak reference to that
# tensor object plus its in-place version: a new batch is a new object (or a bumped version).
_BLOCK_MASK_CACHE: list = []


def doc_block_mask(seq_idx_BL: torch.Tensor, length: int, device: torch.device):  # noqa: ANN201
    """flex_attention BlockMask for block-diagonal causal attention over `seq_idx_BL`."""
    import weakref

    from torch.nn.attention.flex_attention import create_block_mask

    if _BLOCK_MASK_CACHE:
        ref, version, shape, mask = _BLOCK_MASK_CACHE[0]
        if ref() is seq_idx_BL and version == seq_idx_BL._version and shape == (length, str(device)):
            return mask

    def doc_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (kv <= q) & (seq_idx_BL[b, q] == seq_idx_BL[b, kv])

    # _compile: built block by block, never as a dense (L, L) mask: 128 GiB at 128K tokens (it ran out
    # of memory there). One compiled graph serves every batch (the mask reads seq_idx as an input).
    mask = create_block_mask(doc_causal, seq_idx_BL.shape[0], None, length, length, device=device, _compile=True)
    _BLOCK_MASK_CACHE[:] = [(weakref.ref(seq_idx_BL), seq_idx_BL._version, (length, str(device)), mask)]
    return mask


def flex_doc_attention(q_BHLE: torch.Tensor, k_BGLE: torch.Tensor, v_BGLE: torch.Tensor,
                       seq_idx_BL: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal attention with flex_attention (CUDA path)."""
    length = q_BHLE.shape[2]
    block_mask = doc_block_mask(seq_idx_BL, length, q_BHLE.device)
    return _flex_attention_fn(q_BHLE.device.type)(q_BHLE, k_BGLE, v_BGLE, block_mask=block_mask,
                                                     enable_gqa=k_BGLE.shape[1] != q_BHLE.shape[1])


class Attention(nn.Module):
    """One attention layer's mixer (without its pre-norm and residual)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.attention
        self.num_heads, self.num_kv_groups, self.head_dim = a.num_heads, a.num_kv_groups, a.head_dim
        self.rope, self.rope_base, self.backend = a.rope, a.rope_base, a.backend
        self.q_proj = nn.Linear(cfg.d_model, a.num_heads * a.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, a.num_kv_groups * a.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, a.num_kv_groups * a.head_dim, bias=False)
        self.o_proj = nn.Linear(a.num_heads * a.head_dim, cfg.d_model, bias=False)

    def reset_parameters(self, init_std: float, out_std: float) -> None:
        """Normal init; the output projection gets the depth-scaled std."""
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(lin.weight, std=init_std)
        nn.init.normal_(self.o_proj.weight, std=out_std)

    def allocate_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for `capacity` tokens."""
        shape = (batch, capacity, self.num_kv_groups, self.head_dim)
        return KVCache(k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype))

    def forward(
        self,
        x_BLD: torch.Tensor,
        seq_idx_BL: torch.Tensor | None = None,
        position_ids_BL: torch.Tensor | None = None,
        state: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend within documents; with a KV cache, the new tokens attend to everything cached."""
        batch, length, _ = x_BLD.shape
        q = self.q_proj(x_BLD).view(batch, length, self.num_heads, self.head_dim)
        k = self.k_proj(x_BLD).view(batch, length, self.num_kv_groups, self.head_dim)
        v = self.v_proj(x_BLD).view(batch, length, self.num_kv_groups, self.head_dim)
        if self.rope:
            if position_ids_BL is None:
                raise ValueError("attention.rope=True needs position_ids (LanguageModel derives them)")
            q = apply_rope(q, position_ids_BL, self.rope_base)
            k = apply_rope(k, position_ids_BL, self.rope_base)
        if state is not None:
            k, v = state.append(k, v)  # decode: keys are the whole cache; one document per row
            seq_idx_BL = None
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, len, E)
        gqa = self.num_kv_groups != self.num_heads
        if self._use_flex(x_BLD, seq_idx_BL, state):
            out = flex_doc_attention(q, k, v, seq_idx_BL)
        elif seq_idx_BL is None and k.shape[2] == length:
            # One document per row, no cache: the fused causal kernels need no mask tensor.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            mask = doc_causal_mask(seq_idx_BL, length, k.shape[2], x_BLD.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))

    def _use_flex(self, x: torch.Tensor, seq_idx_BL: torch.Tensor | None, state: KVCache | None) -> bool:
        if seq_idx_BL is None or state is not None:
            return False
        if self.backend == "flex":
            return True
        return self.backend == "auto" and x.is_cuda
