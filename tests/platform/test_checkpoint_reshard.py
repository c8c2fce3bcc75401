"""Checkpoints that reshard: a run saved at TP 2 x DP 2 (ZeRO-2) resumes at TP 1 x DP 4 (ZeRO-2, the
micro-batches regrouped so the global batch stays 4 rows), at TP 2 x DP 1 (ZeRO runs as stage 0,
2 rows x 2 micro-batches) and at CP 2 x DP 2 (ZeRO-2 over the 4 replicas, each rank a half of
every row), and its next step matches the uninterrupted run's, the data position included. The same
run under ZeRO-3 resumes at TP 1 x DP 4 (ZeRO-3 over 4 ranks) and at TP 2 x DP 1 (stage 0).

Bound: the next step's loss and grad norm within relative 1e-5 (fp32; the layouts sum the same
terms in other orders), the updated weights within absolute 5e-5 (Adam turns rounding-level
gradient differences into up to ~1% of one lr=2e-3 step; test_tensor_parallel.py's bound). A
deliberately wrong reshard fails it: the Adam moments left at zero, or the old TP slices put
together in the wrong order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _reshard_workers import SAVE_AT, Layout, resume_worker, save_then_continue_worker
from _tp_workers import launch

WEIGHT_ATOL = 5e-5
SAVED = Layout(tp=2, dp=2, micro=1, accum=2)
SAVED_ZERO3 = dataclasses.replace(SAVED, zero_stage=3)


def _results(out: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / f"{name}.json").read_text()), torch.load(out / f"{name}.weights.pt", weights_only=True)


def _max_weight_difference(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert weights.keys() == reference.keys()
    return max(float((weights[k] - reference[k]).abs().max()) for k in reference)


def _assert_continues(out: Path, name: str, source: str) -> None:
    expected, expected_weights = _results(out, f"uninterrupted_{source}")
    got, weights = _results(out, name)
    step, reference = got["steps"][0], expected["steps"][SAVE_AT]
    assert step["loss"] == pytest.approx(reference["loss"], rel=1e-5), f"{name} loss"
    assert step["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5), f"{name} grad norm"
    assert step["lr"] == pytest.approx(reference["lr"], rel=1e-12), f"{name} learning rate"
    assert got["samples_after"] == expected["samples_after"], f"{name} data position"
    difference = _max_weight_difference(weights, expected_weights)
    assert difference <= WEIGHT_ATOL, f"{name}: updated weights differ by {difference:.2e} > {WEIGHT_ATOL}"


def _assert_breaks(out: Path, name: str, source: str) -> None:
    _, expected_weights = _results(out, f"uninterrupted_{source}")
    _, weights = _results(out, name)
    difference = _max_weight_difference(weights, expected_weights)
    assert difference > 10 * WEIGHT_ATOL, f"the deliberate break {name} passed: weights differ by {difference:.2e}"


@pytest.mark.slow
def test_a_checkpoint_saved_at_tp2_dp2_resumes_at_tp1_dp4_tp2_dp1_and_cp2_dp2(packed_data, tmp_path: Path) -> None:
    data = (str(packed_data.manifest), packed_data.vocab_size, str(tmp_path))
    launch(save_then_continue_worker, SAVED.world, {"zero2": SAVED, "zero3": SAVED_ZERO3}, *data)
    for source in ("zero2", "zero3"):
        steps = json.loads((tmp_path / f"uninterrupted_{source}.json").read_text())["steps"]
        assert min(s["grad_norm"] for s in steps) > 0.5, "clipping must engage for the grad-norm check to bite"

    wide = Layout(tp=1, dp=4, micro=1, accum=1)
    context = Layout(tp=1, cp=2, dp=2, micro=1, accum=2)
    launch(resume_worker, wide.world, [
        ("tp1_dp4", "zero2", wide, "none"),
        ("tp1_dp4_no_moments", "zero2", wide, "moments"),
        ("cp2_dp2", "zero2", context, "none"),
        ("tp1_dp4_zero3", "zero3", dataclasses.replace(wide, zero_stage=3), "none"),
    ], *data)
    narrow = Layout(tp=2, dp=1, micro=2, accum=2)
    launch(resume_worker, narrow.world, [
        ("tp2_dp1", "zero2", narrow, "none"),
        ("tp2_dp1_tp_order", "zero2", narrow, "tp_order"),
        ("tp2_dp1_from_zero3", "zero3", dataclasses.replace(narrow, zero_stage=3), "none"),
    ], *data)

    for name in ("tp1_dp4", "tp2_dp1", "cp2_dp2"):
        _assert_continues(tmp_path, name, "zero2")
    for name in ("tp1_dp4_zero3", "tp2_dp1_from_zero3"):
        _assert_continues(tmp_path, name, "zero3")
    _assert_breaks(tmp_path, "tp1_dp4_no_moments", "zero2")
    _assert_breaks(tmp_path, "tp2_dp1_tp_order", "zero2")
