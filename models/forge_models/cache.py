"""Per-layer inference state for incremental decoding.

Mamba layers keep a constant-size state (the last d_conv-1 conv inputs and the SSM state), so
their memory does not grow with the context; attention layers keep a preallocated KV cache.
Legend: B batch, W conv width, C conv channels, H heads, P head dim, N state size,
S cache capacity (tokens), G kv groups, E attention head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MambaState:
    """Conv state (B, W-1, C) and SSM state (fp32; (B, H, P, N) for Mamba-2, (B, D, N) for Mamba-1)."""

    conv: torch.Tensor
    ssm: torch.Tensor
    filled: bool = False
    """False until a prefill has written the states: the first call runs the full (chunked) path."""


@dataclass
class KVCache:
    """Keys and values (B, S, G, E) for positions [0, length)."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    def append(self, k_BLGE: torch.Tensor, v_BLGE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values after the cached ones; return all keys/values so far."""
        end = self.length + k_BLGE.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.k.shape[1]}")
        self.k[:, self.length : end] = k_BLGE.to(self.k.dtype)
        self.v[:, self.length : end] = v_BLGE.to(self.v.dtype)
        self.length = end
        return self.k[:, :end], self.v[:, :end]


@dataclass
class InferenceCache:
    """One state per layer (None for MLP layers) and the number of tokens consumed so far."""

    layers: list[MambaState | KVCache | None]
    offset: int = 0

    def nbytes(self) -> dict[str, int]:
        """Bytes held per layer kind, for the constant-memory checks and decode benchmarks."""
        out = {"mamba": 0, "attention": 0}
        for state in self.layers:
            if isinstance(state, MambaState):
                out["mamba"] += state.conv.nbytes + state.ssm.nbytes
            elif isinstance(state, KVCache):
                out["attention"] += state.k.nbytes + state.v.nbytes
        return out
