"""Reference ops against simpler definitions: conv vs F.conv1d, chunked SSD vs the recurrence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forge_models.ops.conv import causal_conv1d_ref
from forge_models.ops.selective_scan import selective_scan_ref, selective_scan_step
from forge_models.ops.ssd import segsum, ssd_scan_ref, ssd_step
from tests.models.helpers import packed_seq_idx, rel_err


def test_conv_without_resets_equals_conv1d() -> None:
    x = torch.randn(2, 19, 6)
    w, b = torch.randn(6, 4), torch.randn(6)
    expected = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w[:, None], b, groups=6).transpose(1, 2)
    assert rel_err(causal_conv1d_ref(x, w, b), expected) <= 1e-6


def test_conv_resets_at_doc_starts() -> None:
    x = torch.randn(1, 12, 3)
    w, b = torch.randn(3, 4), torch.randn(3)
    seq_idx = packed_seq_idx([5, 7])
    out = causal_conv1d_ref(x, w, b, seq_idx)
    assert rel_err(out[:, 5:], causal_conv1d_ref(x[:, 5:], w, b)) <= 1e-6


def test_segsum() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.tensor([[0.0, -float("inf"), -float("inf")], [2.0, 0.0, -float("inf")], [5.0, 3.0, 0.0]])
    assert torch.equal(segsum(a), expected)


def _ssd_inputs(length: int) -> tuple[torch.Tensor, ...]:
    b, h, p, g, n = 2, 4, 3, 2, 5
    return (torch.randn(b, length, h, p), torch.rand(b, length, h), -torch.rand(h) * 2,
            torch.randn(b, length, g, n), torch.randn(b, length, g, n))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_chunked_ssd_equals_recurrence_with_resets(chunk_size: int) -> None:
    x, dt, A, Bm, C = _ssd_inputs(23)
    seq_idx = torch.cat([packed_seq_idx([6, 9, 8]), packed_seq_idx([23])])
    y, final = ssd_scan_ref(x, dt, A, Bm, C, chunk_size, seq_idx)
    state, ys = torch.zeros(2, 4, 3, 5), []
    for t in range(23):
        if t:
            state = state * (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
        y_t, state = ssd_step(x[:, t], dt[:, t], A, Bm[:, t], C[:, t], state)
        ys.append(y_t)
    assert rel_err(y, torch.stack(ys, dim=1)) <= 1e-5
    assert rel_err(final, state) <= 1e-5


def test_ssd_initial_state_continues_a_sequence() -> None:
    x, dt, A, Bm, C = _ssd_inputs(20)
    y_full, final_full = ssd_scan_ref(x, dt, A, Bm, C, 4)
    _, mid = ssd_scan_ref(x[:, :9], dt[:, :9], A, Bm[:, :9], C[:, :9], 4)
    y_rest, final = ssd_scan_ref(x[:, 9:], dt[:, 9:], A, Bm[:, 9:], C[:, 9:], 4, initial_state_BHPN=mid)
    assert rel_err(y_rest, y_full[:, 9:]) <= 1e-5 and rel_err(final, final_full) <= 1e-5


def test_ssd_gradients_are_finite_across_resets() -> None:
    x, dt, A, Bm, C = (t.requires_grad_() for t in _ssd_inputs(16))
    y, final = ssd_scan_ref(x, dt, A, Bm, C, 4, torch.cat([packed_seq_idx([4, 1, 11])] * 2))
    (y.sum() + final.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, dt, A, Bm, C))


def test_selective_scan_resets() -> None:
    x, dt = torch.randn(1, 10, 6), torch.rand(1, 10, 6)
    A, Bm, C = -torch.rand(6, 4), torch.randn(1, 10, 4), torch.randn(1, 10, 4)
    y, _ = selective_scan_ref(x, dt, A, Bm, C, packed_seq_idx([3, 7]))
    y_alone, _ = selective_scan_ref(x[:, 3:], dt[:, 3:], A, Bm[:, 3:], C[:, 3:])
    assert rel_err(y[:, 3:], y_alone) <= 1e-6
    y0, _ = selective_scan_step(x[:, 0], dt[:, 0], A, Bm[:, 0], C[:, 0], torch.zeros(1, 6, 4))
    assert rel_err(y[:, 0], y0) <= 1e-6
