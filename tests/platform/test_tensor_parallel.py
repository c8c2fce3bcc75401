"""Tensor parallelism (forge_platform.parallel) on CPU: gloo process groups spawned by the tests.

What each distributed test proves (fp32, relative tolerance 1e-5):
- TP = 2 computes the single-device model's loss and gradients on packed documents (seq_idx),
  for the hybrid (Mamba-2 + attention + GELU MLP), the Transformer (RoPE + SwiGLU) and a tied-
  embedding hybrid; the vocab-parallel cross-entropy, the TP grad norm, weight gather/shard,
  cached decoding and the TP batch check agree too.
- TP 2 x DP 2 under DeepSpeed ZeRO-1, 2 and 3 (4 processes, `mpu=ModelParallelUnit`) follows a
  single-process run on the concatenated batch step by step: loss, grad norm (with clipping
  engaged, so a wrong TP norm would change the updates) and final weights.
- ZeRO-3 without TP (2 processes) does the same.
The DeepSpeed tests reuse the JIT-compiled comm op cached in .cache/torch_extensions (the very
first run on a machine compiles it once, 40-110 s on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tp_workers import RunSpec, deepspeed_worker, launch, reference_run, tp_parity_worker
from forge_models import build_model, get_preset

from forge_models.tp_plan import check_tensor_parallel, partition_dims
from forge_platform.parallel import ParallelDims, shard_tensor

WEIGHT_ATOL = 5e-5  # Adam turns rounding-level gradient differences into up to ~1% of one lr=1e-3 step


# --- Layout and plan: no processes -------------------------------------------------------------
def test_parallel_dims_error_shows_the_whole_product() -> None:
    with pytest.raises(ValueError, match=r"tp 2 x dp 3 != world 4"):
        ParallelDims(tp=2, dp=3, world_size=4)
    with pytest.raises(ValueError, match=r"tp 2 x dp 2 != world 5"):
        ParallelDims.from_world(5, tp=2)
    with pytest.raises(ValueError, match="tp = 0"):
        ParallelDims.from_world(4, tp=0)


def test_tensor_parallel_groups_are_consecutive_and_data_parallel_strided() -> None:
    dims = ParallelDims.from_world(6, tp=2)
    assert dims.dp == 3
    assert [dims.tp_group_ranks(i) for i in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [dims.dp_group_ranks(j) for j in range(2)] == [[0, 2, 4], [1, 3, 5]]
    assert [(dims.tp_rank(r), dims.dp_rank(r)) for r in range(6)] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]


@pytest.mark.parametrize("preset", ["hybrid-debug", "transformer-debug", "mamba2-debug", "hybrid-8b", "hybrid-840m"])
def test_plan_has_a_rule_for_every_parameter(preset: str) -> None:
    cfg = get_preset(preset)
    model = build_model(cfg, device="meta")
    dims = partition_dims(cfg, [name for name, _ in model.named_parameters()])
    assert dims["embedding.weight"] == 0
    assert all(dims[name] is None for name in dims if name.endswith("norm.weight") and ".mixer." not in name)


def test_paper_sizes_split_strictly_at_tp_8() -> None:
    check_tensor_parallel(get_preset("hybrid-8b"), 8, strict=True)  # d_inner / ngroups = 1024 > 256


def test_indivisible_sizes_are_named() -> None:
    with pytest.raises(ValueError, match=r"mamba2.ngroups=2.*attention.num_kv_groups=2"):
        check_tensor_parallel(get_preset("hybrid-debug"), 4)
    with pytest.raises(ValueError, match="Mamba-1"):
        check_tensor_parallel(get_preset("mamba-debug"), 2)


def test_norm_group_size_rule_warns_or_fails_when_strict() -> None:
    cfg = get_preset("hybrid-debug")  # d_inner 128 / 2 groups = 64
    with pytest.warns(UserWarning, match="group size d_inner/ngroups = 128/2 = 64"):
        check_tensor_parallel(cfg, 2)
    with pytest.raises(ValueError, match="not > 256"):
        check_tensor_parallel(cfg, 2, strict=True)


def test_shard_then_merge_restores_the_single_device_state_dict() -> None:
    cfg = get_preset("hybrid-debug")
    full = build_model(cfg).state_dict()
    dims = partition_dims(cfg, list(full))
    shards = [{k: shard_tensor(v, dims[k], rank, 2) for k, v in full.items()} for rank in range(2)]
    assert shards[1]["layers.0.mixer.B_proj.weight"].shape[0] == full["layers.0.mixer.B_proj.weight"].shape[0] // 2
    assert shards[1]["layers.0.mixer.out_proj.weight"].shape[1] == full["layers.0.mixer.out_proj.weight"].shape[1] // 2
    merged = {k: shards[0][k] if dims[k] is None else torch.cat([s[k] for s in shards], dim=dims[k]) for k in full}
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[k], full[k]) for k in full)


# --- Distributed: gloo processes ---------------------------------------------------------------
@pytest.mark.slow
def test_tp2_matches_single_device_on_packed_documents() -> None:
    launch(tp_parity_worker, 2, ["hybrid-debug", "transformer-debug", "hybrid-tied"])


def _compare_with_reference(out_dir: Path, spec: RunSpec, dp: int, stages: list[int]) -> None:
    results = json.loads((out_dir / "results.json").read_text())
    ref_losses, ref_norms, ref_weights = reference_run(spec, dp)
    assert min(ref_norms) > spec.clip, "clipping must engage for the grad-norm check to bite"
    for stage in stages:
        run = results[str(stage)]
        assert run["losses"] == pytest.approx(ref_losses, rel=1e-5), f"ZeRO-{stage} losses"
        assert run["grad_norms"] == pytest.approx(ref_norms, rel=1e-5), f"ZeRO-{stage} grad norms"
        weights = torch.load(out_dir / f"weights_zero{stage}.pt", weights_only=True)
        for name, expected in ref_weights.items():
            torch.testing.assert_close(weights[name], expected, rtol=0, atol=WEIGHT_ATOL,
                                       msg=lambda m, n=name: f"ZeRO-{stage} weight {n}: {m}")


@pytest.mark.slow
def test_tp2_dp2_deepspeed_zero_1_2_3_match_single_process(tmp_path: Path) -> None:
    spec = RunSpec()
    launch(deepspeed_worker, 4, 2, [1, 2, 3], spec, str(tmp_path))
    _compare_with_reference(tmp_path, spec, dp=2, stages=[1, 2, 3])


@pytest.mark.slow
def test_zero3_dp2_without_tp_matches_single_process(tmp_path: Path) -> None:
    spec = RunSpec()
    launch(deepspeed_worker, 2, 1, [3], spec, str(tmp_path))
    _compare_with_reference(tmp_path, spec, dp=2, stages=[3])
