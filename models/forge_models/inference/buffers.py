"""The decode engine's preallocated state: one set of static buffers for the largest batch.

Legend: B batch rows, W conv width, C conv channels, H heads, P head dim, N state size,
I Mamba-1 channels, G kv groups, S cache capacity (tokens), E attention head dim.

Every buffer is allocated once; a decode step only writes into it, so its addresses never change
and a CUDA graph captured over the first b rows (`[:b]` views of the same memory) stays valid.

- Mamba conv state: stored (B, W-1, C) in memory, exactly forge_models.cache.MambaState's layout,
  and handed to causal_conv1d_update as the (B, C, W-1) view `conv_channels_first(b)`: the
  kernel takes any strides, and this is the layout mamba_ssm's own decode uses (its channels are
  contiguous, so the kernel's threads, one per channel, read consecutive addresses).
- Mamba SSM state: fp32, (B, H, P, N) for Mamba-2 and (B, I, N) for Mamba-1, updated in place.
- KV cache: (B, G, S, E), so that for one row and group the keys are one contiguous (S, E)
  matrix and the decode attention is two batched matmuls without a copy of the cache.
- `lengths` (B,): tokens consumed per row. Row b's next token has position lengths[b]; attention
  reads keys [0, lengths[b]] after writing the new one there. Rows have their own lengths, so
  prompts of different lengths decode together without padding tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forge_models.attention import Attention
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.model import LanguageModel


@dataclass
class MambaBuffers:
    """Conv inputs (B, W-1, C) and the fp32 SSM state of one Mamba layer."""

    conv: torch.Tensor
    ssm: torch.Tensor

    def conv_channels_first(self, rows: int) -> torch.Tensor:
        """The first `rows` conv states as the (rows, C, W-1) view causal_conv1d_update takes."""
        return self.conv[:rows].transpose(1, 2)


@dataclass
class KVBuffers:
    """Keys and values (B, G, S, E) of one attention layer."""

    k: torch.Tensor
    v: torch.Tensor


LayerBuffers = MambaBuffers | KVBuffers | None


KV_CHUNK = 256
"""A KV capacity above this is a multiple of it: the decode attention sums its values chunk by chunk."""


class DecodeBuffers:
    """All layers' state for `batch` rows of up to `capacity` tokens (above KV_CHUNK rounded up to a
    multiple of it), plus per-row lengths."""

    def __init__(self, model: LanguageModel, batch: int, capacity: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        if capacity > KV_CHUNK:
            capacity = -(-capacity // KV_CHUNK) * KV_CHUNK
        self.batch, self.capacity = batch, capacity
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.layers: list[LayerBuffers] = [_allocate(block.mixer, batch, capacity, device, dtype)
                                           for block in model.layers]

    def reset_rows(self, rows: slice) -> None:
        """Zero the state of `rows` (before a prefill writes new prompts there)."""
        self.lengths[rows] = 0
        for buf in self.layers:
            if isinstance(buf, MambaBuffers):
                buf.conv[rows] = 0
                buf.ssm[rows] = 0
            elif isinstance(buf, KVBuffers):
                buf.k[rows] = 0
                buf.v[rows] = 0

    def nbytes(self) -> dict[str, int]:
        """Bytes held per layer kind (the KV part is for the full capacity)."""
        out = {"mamba": 0, "attention": 0}
        for buf in self.layers:
            if isinstance(buf, MambaBuffers):
                out["mamba"] += buf.conv.nbytes + buf.ssm.nbytes
            elif isinstance(buf, KVBuffers):
                out["attention"] += buf.k.nbytes + buf.v.nbytes
        return out


def _allocate(mixer: torch.nn.Module, batch: int, capacity: int, device: torch.device,
              dtype: torch.dtype) -> LayerBuffers:
    if isinstance(mixer, Mamba2Mixer):
        channels = mixer.d_inner + 2 * mixer.ngroups * mixer.d_state
        return MambaBuffers(
            conv=torch.zeros(batch, mixer.d_conv - 1, channels, device=device, dtype=dtype),
            ssm=torch.zeros(batch, mixer.num_heads, mixer.head_dim, mixer.d_state, device=device,
                            dtype=torch.float32))
    if isinstance(mixer, MambaMixer):
        return MambaBuffers(
            conv=torch.zeros(batch, mixer.d_conv - 1, mixer.d_inner, device=device, dtype=dtype),
            ssm=torch.zeros(batch, mixer.d_inner, mixer.d_state, device=device, dtype=torch.float32))
    if isinstance(mixer, Attention):
        shape = (batch, mixer.num_kv_groups, capacity, mixer.head_dim)
        return KVBuffers(k=torch.zeros(shape, device=device, dtype=dtype),
                         v=torch.zeros(shape, device=device, dtype=dtype))
    return None
