"""How large a Mamba-2 kernel call may be: mamba_ssm's Triton SSD kernels index memory in 32 bits.

Legend: B batch, L length, H heads, P head dim, G groups, N state size, Q chunk length,
I = H * P (d_inner), C = I + 2*G*N (conv channels), Z = 2*I + 2*G*N + H (in-projection width).

The kernels compute pointer offsets as int32 products of indices and strides (upstream issue
state-spaces/mamba#1015, open), so a call whose largest offset reaches 2**31 reads or writes out
of bounds: "illegal memory access" at the paper's 8B width at 128K tokens, and silently wrong
output in other shapes. The widest tensor a call reads is a strided view of the fused projection
(B, L, Z), not d_inner: in the fused path all of z / xBC / dt are views of it; in the unfused
path dt is. The kernels' own buffers are smaller per token: chunk states (B, L/Q, H, P, N),
C*B products (B, L/Q, G, Q, Q), the conv output (B, L, C).

`Mamba2Widths.per_token` counts the widest tensor or kernel buffer per token; `plan_mamba2_calls`
says how to split a call so that none reaches the limit, and `check_offsets` checks every call's
real inputs (shape and strides) against it before the kernel runs:
whole rows per call when one row fits, else one row in sequence segments (a multiple of the
chunk length) whose states are handed from segment to segment (`ops/segmented_scan.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT32_OFFSET_LIMIT = 2**31  # an offset must stay below this


def largest_offset(tensor: torch.Tensor) -> int:
    """The largest element offset from `tensor`'s data pointer that indexing it can reach."""
    return sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 0)


@dataclass(frozen=True)
class Mamba2Widths:
    """Per-token widths of the tensors a Mamba-2 kernel call touches."""

    d_inner: int
    ngroups: int
    d_state: int
    num_heads: int
    chunk_size: int

    @property
    def in_proj(self) -> int:
        """Z: the fused projection [z, x, B, C, dt] whose strided views the kernels read."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.num_heads

    @property
    def conv(self) -> int:
        """C: the conv channels [x, B, C]."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    def per_token(self) -> int:
        """The largest per-token element count of any tensor or kernel buffer of a call."""
        chunk_states = self.d_inner * self.d_state // self.chunk_size  # (L/Q) * H * P * N per token
        cb = self.ngroups * self.chunk_size  # (L/Q) * G * Q * Q per token
        return max(self.in_proj, self.conv, chunk_states, cb)


def check_offsets(what: str, *tensors: torch.Tensor, limit: int = INT32_OFFSET_LIMIT) -> None:
    """Refuse a kernel call whose inputs, as laid out in memory, reach the 32-bit offset limit."""
    for tensor in tensors:
        if (reach := largest_offset(tensor)) >= limit:
            raise ValueError(f"{what}: a tensor of shape {tuple(tensor.shape)} and strides {tensor.stride()} "
                             f"reaches offset {reach:,}, past the kernels' 32-bit limit {limit:,}")


@dataclass(frozen=True)
class CallPlan:
    """How one mixer forward is split into kernel calls."""

    rows_per_call: int
    """Batch rows per call (all of them when the whole call fits)."""
    segment_length: int | None
    """None: whole rows. Else one row per call, cut into segments of this many tokens."""

    @property
    def single_call(self) -> bool:
        return self.segment_length is None


def plan_mamba2_calls(batch: int, length: int, widths: Mamba2Widths, limit: int = INT32_OFFSET_LIMIT) -> CallPlan:
    """The largest calls that stay below `limit`: the whole batch, whole rows, or segments of one row."""
    per_token = widths.per_token()
    if batch * length * per_token < limit:
        return CallPlan(rows_per_call=batch, segment_length=None)
    if length * per_token < limit:
        return CallPlan(rows_per_call=(limit - 1) // (length * per_token), segment_length=None)
    q = widths.chunk_size
    segment = ((limit - 1) // per_token) // q * q
    if segment < q:
        raise ValueError(
            f"a Mamba-2 kernel call of one chunk ({q} tokens x {per_token} elements per token) already "
            f"reaches the kernels' 32-bit offset limit ({limit}); lower mamba2.chunk_size or the mixer width"
        )
    return CallPlan(rows_per_call=1, segment_length=segment)
