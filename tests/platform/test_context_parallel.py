"""Context parallelism (tp x cp x dp): the layout, the config checks, and parity on gloo.

The parity tests run CP=2, SP with TP=2, TP=2 x CP=2 with and without SP in spawned gloo
processes against one process on the same packed rows, whose middle document crosses the CP
split: loss, every gradient and the global gradient norm agree within fp32 rounding
(_tp_workers.assert_close: relative 1e-5, absolute 1e-6 x the tensor's largest magnitude).
Deliberate breaks must fail that same comparison, so it can fail: the shard edge treated as a
document boundary (what a sequence-sharded scan without state passing computes), and SP's norm
gradients left unsummed over TP. CP=2 x DP=2 under DeepSpeed ZeRO-2 and CP=2 through the
trainer follow a single-process / one-worker run step by step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _cp_workers import cp_deepspeed_worker, cp_parity_worker, reference_result
from _tp_workers import RunSpec, assert_close, launch, reference_run
from forge_models import get_preset
from forge_models.tp_plan import check_context_parallel

from forge_platform.config_sections import ParallelConfig, TrainConfig
from forge_platform.parallel import ParallelDims

WEIGHT_ATOL = 5e-5  # as test_tensor_parallel: Adam turns rounding-level gradient differences into ~1% of a step


# --- Layout and plan: no processes -------------------------------------------------------------
def test_dims_error_shows_the_whole_product() -> None:
    with pytest.raises(ValueError, match=r"tp 2 x cp 2 x dp 2 != world 6"):
        ParallelDims(tp=2, cp=2, dp=2, world_size=6)
    with pytest.raises(ValueError, match=r"tp 2 x cp 3 x dp 1 != world 8"):
        ParallelDims.from_world(8, tp=2, cp=3)
    with pytest.raises(ValueError, match="cp = 0"):
        ParallelDims.from_world(4, tp=1, cp=0)


def test_layout_tensor_innermost_then_context_then_data() -> None:
    dims = ParallelDims.from_world(8, tp=2, cp=2)
    assert (dims.dp, dims.replicas) == (2, 4)
    assert [dims.tp_group_ranks(i) for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [dims.cp_group_ranks(d, t) for d in range(2) for t in range(2)] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert [dims.dp_group_ranks(t, c) for c in range(2) for t in range(2)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert [dims.replica_group_ranks(t) for t in range(2)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    coords = [(dims.tp_rank(r), dims.cp_rank(r), dims.dp_rank(r)) for r in range(8)]
    assert coords == [(t, c, d) for d in range(2) for c in range(2) for t in range(2)]
    # cp 1 is exactly the tensor x data layout of before.
    flat = ParallelDims.from_world(6, tp=2)
    assert flat.cp == 1 and flat.replica_group_ranks(1) == flat.dp_group_ranks(1) == [1, 3, 5]


def test_parallel_config_validates_context_parallel() -> None:
    assert ParallelConfig(num_workers=8, tensor_parallel=2, context_parallel=2).dims.dp == 2
    with pytest.raises(ValueError, match=r"parallel.context_parallel = 0"):
        ParallelConfig(num_workers=4, context_parallel=0)
    with pytest.raises(ValueError, match=r"tensor_parallel x parallel.context_parallel = 2 x 3.*tp 2 x cp 3"):
        ParallelConfig(num_workers=8, tensor_parallel=2, context_parallel=3)


def test_sequence_parallelism_needs_tensor_parallelism() -> None:
    assert ParallelConfig(num_workers=2, tensor_parallel=2, sequence_parallel=True).sequence_parallel
    with pytest.raises(ValueError, match=r"parallel.sequence_parallel = true: needs parallel.tensor_parallel > 1"):
        ParallelConfig(num_workers=2, sequence_parallel=True)


def test_context_parallel_needs_heads_and_groups_divisible_by_tp_times_cp() -> None:
    hybrid = get_preset("hybrid-debug")
    check_context_parallel(hybrid, tp=1, cp=1)
    with pytest.raises(ValueError, match=r"tp 2 x cp 4 = 8 ranks.*mamba2.ngroups"):
        check_context_parallel(dataclasses.replace(hybrid, mamba2=dataclasses.replace(hybrid.mamba2, ngroups=4)),
                               tp=2, cp=4)
    with pytest.raises(ValueError, match=r"attention.num_kv_groups=1"):
        check_context_parallel(dataclasses.replace(hybrid, attention=dataclasses.replace(hybrid.attention,
                                                                                          num_kv_groups=1)), tp=1, cp=2)
    with pytest.raises(ValueError, match="Mamba-1"):
        check_context_parallel(get_preset("mamba-debug"), tp=1, cp=2)


# --- Distributed: gloo processes ---------------------------------------------------------------
def _compare(result: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Loss, global grad norm and every gradient within fp32 rounding (_tp_workers.assert_close:
    relative 1e-5, absolute 1e-6 x the tensor's largest magnitude)."""
    assert result.keys() == reference.keys()
    for key, expected in reference.items():
        assert_close(result[key], expected, key)


@pytest.mark.slow
def test_cp2_and_sp_tp2_match_single_process_and_a_reset_at_the_shard_edge_does_not(tmp_path: Path) -> None:
    # (label, tp, cp, sequence_parallel): three layouts in one launch of 2 processes.
    launch(cp_parity_worker, 2, [("cp2", 1, 2, False), ("broken-cp2", 1, 2, False), ("sp-tp2", 2, 1, True),
                                 ("broken-sp-tp2", 2, 1, True)], str(tmp_path))
    reference = reference_result()
    _compare(torch.load(tmp_path / "cp2.pt", weights_only=True), reference)
    _compare(torch.load(tmp_path / "sp-tp2.pt", weights_only=True), reference)
    # The same comparison catches the bug CP exists to avoid: documents restarting at a shard edge,
    with pytest.raises(AssertionError, match="loss"):  # the loss already differs, then the gradients
        _compare(torch.load(tmp_path / "broken-cp2.pt", weights_only=True), reference)
    # and SP's: norm weights whose gradients count only the rank's share of the tokens.
    with pytest.raises(AssertionError, match=r"grad/layers\.\d+\.norm\.weight"):
        _compare(torch.load(tmp_path / "broken-sp-tp2.pt", weights_only=True), reference)


@pytest.mark.slow
def test_tp2_cp2_with_and_without_sequence_parallelism_match_single_process(tmp_path: Path) -> None:
    launch(cp_parity_worker, 4, [("tp2-cp2", 2, 2, False), ("sp-tp2-cp2", 2, 2, True)], str(tmp_path))
    reference = reference_result()
    _compare(torch.load(tmp_path / "tp2-cp2.pt", weights_only=True), reference)
    _compare(torch.load(tmp_path / "sp-tp2-cp2.pt", weights_only=True), reference)


@pytest.mark.slow
def test_cp2_dp2_deepspeed_zero2_matches_single_process(tmp_path: Path) -> None:
    spec = RunSpec()
    launch(cp_deepspeed_worker, 4, 2, 2, spec, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    ref_losses, ref_norms, ref_weights = reference_run(spec, 2)
    assert min(ref_norms) > spec.clip, "clipping must engage for the grad-norm check to bite"
    assert results["losses"] == pytest.approx(ref_losses, rel=1e-5)
    assert results["grad_norms"] == pytest.approx(ref_norms, rel=1e-5)
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for name, expected in ref_weights.items():
        torch.testing.assert_close(weights[name], expected, rtol=0, atol=WEIGHT_ATOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_context_parallel_stage_matches_one_worker(packed_data, tmp_path: Path) -> None:
    """CP=2 through the trainer (Ray Train + DeepSpeed ZeRO-2 over the two CP replicas): each worker
    keeps its half of every 64-token row, and the run follows one worker step for step."""
    from forge_platform.cluster import ensure_ray
    from forge_platform.training.stage_runner import run_stage

    from tests.platform.test_fault_tolerance import losses_by_step, stage_run

    ensure_ray(4, workspace=tmp_path)
    short = {"stage": dataclasses.replace(stage_run(packed_data).stage,
                                          train=TrainConfig(steps=3, micro_batch_size=2, zero_stage=2, seed=3))}
    one = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=1, peak_tflops=1.0), **short),
                    tmp_path / "storage", "cp1")
    two = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=2, context_parallel=2,
                                                                   peak_tflops=1.0), **short),
                    tmp_path / "storage", "cp2")
    one_losses, two_losses = losses_by_step(one.raw), losses_by_step(two.raw)
    assert sorted(one_losses) == [1, 2, 3]
    for step, loss in one_losses.items():
        assert two_losses[step] == pytest.approx(loss, rel=1e-5), step
    full_one = torch.load(one.checkpoint_dir / "model.pt", weights_only=True)
    full_two = torch.load(two.checkpoint_dir / "model.pt", weights_only=True)
    for name, tensor in full_one.items():
        torch.testing.assert_close(full_two[name], tensor, rtol=1e-4, atol=1e-5)  # Adam amplifies 1e-7 grad noise


def test_shard_batch_cuts_contiguous_shards_with_positions_of_the_whole_row() -> None:
    from forge_platform.parallel import shard_batch

    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2]])
    rows = {"input_ids": torch.arange(8).unsqueeze(0), "seq_idx": seq_idx}
    second = shard_batch(rows, cp_rank=1, cp=2)
    assert second["input_ids"].tolist() == [[4, 5, 6, 7]]
    assert second["position_ids"].tolist() == [[1, 2, 3, 0]]  # document 1 began in the first shard
    assert shard_batch({"input_ids": rows["input_ids"]}, 1, 2)["position_ids"].tolist() == [[4, 5, 6, 7]]
    with pytest.raises(ValueError, match="sequence length 8 is not divisible by parallel.context_parallel = 3"):
        shard_batch(rows, 0, 3)
