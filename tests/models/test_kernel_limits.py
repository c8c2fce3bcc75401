"""The 32-bit offset limit of mamba_ssm's SSD kernels: which calls reach it, how they are split, and
that the split (sequence segments with states handed across edges) is exact, on the reference ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from forge_models import get_preset
from forge_models.ops.conv import causal_conv1d_ref
from forge_models.ops.kernel_limits import (
    INT32_OFFSET_LIMIT,
    Mamba2Widths,
    check_offsets,
    largest_offset,
    plan_mamba2_calls,
)
from forge_models.ops.segmented_scan import segmented_conv_scan
from forge_models.ops.ssd import ssd_scan_ref

K = 1024


def preset_widths(name: str) -> Mamba2Widths:
    cfg = get_preset(name)
    m = cfg.mamba2
    return Mamba2Widths(d_inner=cfg.mamba2_d_inner, ngroups=m.ngroups, d_state=m.d_state,
                        num_heads=cfg.mamba2_num_heads, chunk_size=m.chunk_size)


@pytest.mark.parametrize(("preset", "batch", "length", "crashed"), [
    # Measured on one H200 (2026-12-04): exact, or "an illegal memory access" in _chunk_state_fwd.
    ("hybrid-8b", 1, 64 * K, False),
    ("hybrid-8b", 1, 96 * K, False),
    ("hybrid-8b", 1, 128 * K, True),
    ("hybrid-2b-anchor", 1, 32 * K, False),
    ("hybrid-2b-anchor", 1, 128 * K, False),
    ("hybrid-2b-anchor", 2, 128 * K, True),
])
def test_the_plan_splits_exactly_the_calls_that_crashed(preset: str, batch: int, length: int, crashed: bool) -> None:
    widths = preset_widths(preset)
    plan = plan_mamba2_calls(batch, length, widths)
    assert (not plan.single_call or plan.rows_per_call < batch) == crashed
    # The fused projection is what the kernels read strided views of: its real layout decides.
    zxbcdt = torch.empty(batch, length, widths.in_proj, device="meta")
    dt = zxbcdt[..., -widths.num_heads:]
    assert (largest_offset(dt) >= INT32_OFFSET_LIMIT) == crashed
    if crashed:
        with pytest.raises(ValueError, match="past the kernels' 32-bit limit"):
            check_offsets("call", dt)
    # Every call of the plan stays inside the limit, on the real strides of the views it passes.
    rows = plan.rows_per_call
    if plan.single_call:
        check_offsets("call", zxbcdt[:rows])
    else:
        assert rows == 1 and plan.segment_length % widths.chunk_size == 0
        check_offsets("segment", zxbcdt[:1, :plan.segment_length], dt[:1, -plan.segment_length:])


@pytest.mark.parametrize("preset", ["hybrid-2b-anchor", "hybrid-8b"])
def test_the_plan_splits_a_call_exactly_when_its_projection_reaches_the_limit(preset: str) -> None:
    """The whole grid 4K...128K x batch 1-4: a call is split iff batch x length x Z reaches 2**31
    (the measured crash rule), the split is the largest that fits (whole batch, whole rows, then
    segments), and every call it makes stays inside the limit on the real strides of its views."""
    widths = preset_widths(preset)
    assert widths.per_token() == widths.in_proj  # at these widths the projection is the widest tensor
    split = set()
    for length in (4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 96 * K, 128 * K):
        for batch in range(1, 5):
            plan = plan_mamba2_calls(batch, length, widths)
            zxbcdt = torch.empty(batch, length, widths.in_proj, device="meta")
            reaches = largest_offset(zxbcdt) >= INT32_OFFSET_LIMIT
            assert reaches == (batch * length * widths.in_proj > INT32_OFFSET_LIMIT)  # Z-1 + ... = B*L*Z - 1
            if plan.single_call and plan.rows_per_call >= batch:
                assert not reaches, (batch, length)
                continue
            assert reaches, (batch, length)
            split.add((batch, length // K))
            if plan.single_call:  # whole rows: as many as fit, and one more would not
                rows = plan.rows_per_call
                assert 1 <= rows < batch
                check_offsets("rows", zxbcdt[:rows])
                assert largest_offset(zxbcdt[:rows + 1]) >= INT32_OFFSET_LIMIT
            else:  # one row is already too long: chunk-aligned segments, one chunk more would not fit
                segment, q = plan.segment_length, widths.chunk_size
                assert plan.rows_per_call == 1 and segment % q == 0 and segment < length
                check_offsets("segment", zxbcdt[:1, :segment], zxbcdt[:1, -segment:, -widths.num_heads:])
                assert largest_offset(zxbcdt[:1, :segment + q]) >= INT32_OFFSET_LIMIT
    expected = {"hybrid-2b-anchor": {(2, 128), (3, 128), (4, 128), (3, 96), (4, 96), (4, 64)},
                "hybrid-8b": {(1, 128), (2, 128), (3, 128), (4, 128), (2, 96), (3, 96), (4, 96), (2, 64),
                              (3, 64), (4, 64), (4, 32)}}[preset]
    assert split == expected


def test_the_8b_row_at_128k_is_cut_into_chunk_aligned_segments() -> None:
    plan = plan_mamba2_calls(1, 128 * K, preset_widths("hybrid-8b"))
    assert plan.segment_length == 115_456  # 451 chunks of 256: the most that fit (18,560 elements a token)
    assert plan_mamba2_calls(2, 128 * K, preset_widths("hybrid-2b-anchor")).rows_per_call == 1


# --- The segmented driver on the reference ops ----------------------------------------------------
H, P, G, N, W, Q = 4, 8, 2, 16, 4, 8  # heads, head dim, groups, state, conv width, chunk
C_CH = H * P + 2 * G * N


def split_xbc(xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lead = xbc.shape[:-1]
    x, b, c = torch.split(xbc, [H * P, G * N, G * N], dim=-1)
    return x.reshape(*lead, H, P), b.reshape(*lead, G, N), c.reshape(*lead, G, N)


def reference_ops(params: dict[str, torch.Tensor]):  # noqa: ANN201 - (conv, scan)
    def conv(xbc: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        return F.silu(causal_conv1d_ref(xbc, params["conv_w"], params["conv_b"], seq_idx))

    def scan(x, dt, B, C, seq_idx, state):  # noqa: ANN001, ANN202
        y, final = ssd_scan_ref(x, F.softplus(dt + params["dt_bias"]), params["A"], B, C, Q, seq_idx, state)
        return y + x * params["D"][:, None], final

    return conv, scan


def packed_row(length: int, cuts: list[int], seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = {
        "conv_w": torch.randn(C_CH, W, generator=g) * 0.5, "conv_b": torch.randn(C_CH, generator=g) * 0.1,
        "dt_bias": torch.randn(H, generator=g) * 0.5, "A": -torch.rand(H, generator=g) - 0.5,
        "D": torch.randn(H, generator=g),
        "xbc": torch.randn(1, length, C_CH, generator=g), "dt": torch.randn(1, length, H, generator=g),
    }
    for tensor in params.values():
        tensor.requires_grad_()
    seq_idx = torch.zeros(1, length, dtype=torch.int64)
    for cut in cuts:
        seq_idx[:, cut:] += 1
    return params, seq_idx


def run(params: dict[str, torch.Tensor], seq_idx: torch.Tensor, segment: int, scan_wrapper=None):  # noqa: ANN001, ANN201
    conv, scan = reference_ops(params)
    if segment >= params["xbc"].shape[1]:  # the unsegmented reference: one conv, one scan
        x, B, C = split_xbc(conv(params["xbc"], seq_idx))
        return scan(x, params["dt"], B, C, seq_idx, None)[0]
    return segmented_conv_scan(params["xbc"], params["dt"], seq_idx, segment, W, split_xbc, conv,
                               scan_wrapper(scan) if scan_wrapper else scan)


def grads(params: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    weights = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    return dict(zip(params, torch.autograd.grad((y * weights).sum(), list(params.values()))))


@pytest.mark.parametrize("with_seq_idx", [True, False])
def test_segments_equal_one_pass_forward_and_backward(with_seq_idx: bool) -> None:
    """Documents cross the segment edges at 16 and 48 (and one starts exactly at 32): exact in fp32."""
    params, seq_idx = packed_row(60, cuts=[10, 32, 41])
    seq_idx = seq_idx if with_seq_idx else None
    whole = run(params, seq_idx, segment=10**6)
    segmented = run(params, seq_idx, segment=16)
    torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)
    expected = grads(params, whole)
    for name, grad in grads(params, segmented).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_state_carried_into_a_new_document_is_caught() -> None:
    """The deliberate break: hand the state over even where a document starts at the edge."""
    params, seq_idx = packed_row(48, cuts=[16])  # a document starts exactly at the second segment

    def leaky(scan):  # noqa: ANN001, ANN202
        last = []

        def wrapped(x, dt, B, C, idx, state):  # noqa: ANN001, ANN202
            y, final = scan(x, dt, B, C, idx, state if state is not None or not last else last[-1])
            last.append(final)
            return y, final

        return wrapped

    whole = run(params, seq_idx, segment=10**6)
    assert torch.allclose(run(params, seq_idx, segment=16), whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(run(params, seq_idx, segment=16, scan_wrapper=leaky), whole, rtol=1e-3, atol=1e-3)


def test_the_conv_window_reaches_across_the_edge() -> None:
    """Without the W-1 inputs before a segment, its first tokens would see zeros: the driver reads them."""
    params, seq_idx = packed_row(32, cuts=[])
    whole = run(params, seq_idx, segment=10**6)
    torch.testing.assert_close(run(params, seq_idx, segment=8), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one row at a time"):
        segmented_conv_scan(torch.zeros(2, 8, C_CH), torch.zeros(2, 8, H), None, 4, W, split_xbc,
                            *reference_ops(params))
