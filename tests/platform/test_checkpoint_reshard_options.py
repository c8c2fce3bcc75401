"""Checkpoint options around resharding (issue #13), on 2 gloo workers (TP 1 x DP 2):

- `checkpoint.reshardable = false` writes no universal state (`universal/`, the optimizer state a second
  time); such a checkpoint still resumes with its own layout and ZeRO stage (DeepSpeed's shards), and a
  resume with another layout or ZeRO stage is refused on the driver, in one line saying what to do;
- a checkpoint with universal state, saved under ZeRO-2, resumes under ZeRO-3 (the universal state
  rebuilds ZeRO-3's partitions) and its next step matches the uninterrupted ZeRO-2 run's.

Bound as test_checkpoint_reshard.py's (same argument): next-step loss and grad norm within relative
1e-5, the updated weights within absolute 5e-5; the resume that drops Adam's moments fails it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _reshard_workers import (SAVE_AT, SEQ_LEN, Layout, _build, _finish, _layout_groups, _manager, _train_step,
                              model_config, resume_worker, stage_config)
from _tp_workers import launch
from forge_data import PackedShardLoader

from forge_platform.config_sections import ParallelConfig
from forge_platform.input_errors import StageInputError
from forge_platform.training.checkpoint_files import UNIVERSAL_DIR, read_meta
from forge_platform.training.checkpoint_manager import CheckpointManager
from forge_platform.training.checkpoint_storage import CheckpointTarget
from forge_platform.training.stage_runner import refuse_unresumable
from forge_platform.training.trainer import StageRun

WEIGHT_ATOL = 5e-5
SAVED = Layout(tp=1, dp=2, micro=1, accum=2)  # ZeRO-2 over the two replicas


def save_both_ways_worker(rank: int, world_size: int, manifest: str, vocab_size: int, out_dir: str) -> None:
    """SAVE_AT steps under ZeRO-2, the same state saved twice (`checkpoint_universal` as by default,
    `checkpoint_plain` with checkpoint.reshardable = false), then one more step: the reference."""
    cfg, out = model_config(vocab_size), Path(out_dir)
    groups = _layout_groups(SAVED)
    parallel, stage = _build(SAVED, cfg, groups, seed=stage_config(SAVED).train.seed)
    loader = PackedShardLoader(manifest, micro_batch_size=SAVED.micro, dp_rank=groups.dp_rank, dp_size=groups.dp,
                               shuffle_seed=stage.train.seed)
    steps = [_train_step(parallel, loader, SAVED.accum) for _ in range(SAVE_AT)]
    tokens_per_step = SAVED.micro * SAVED.accum * groups.dp * SEQ_LEN
    universal = _manager(stage, cfg, out)
    universal.write(SAVE_AT, parallel, loader, tokens_per_step, target=CheckpointTarget(
        out / "checkpoint_universal", rank == 0, {}))
    plain = CheckpointManager(dataclasses.replace(stage.checkpoint, reshardable=False), out, universal.identity,
                              stage.train.steps, cfg)
    plain.write(SAVE_AT, parallel, loader, tokens_per_step, target=CheckpointTarget(out / "checkpoint_plain",
                                                                                    rank == 0, {}))
    steps.append(_train_step(parallel, loader, SAVED.accum))
    _finish(parallel, cfg, {"steps": steps, "samples_after": loader.samples_consumed}, out, "uninterrupted")


def _results(out: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / f"{name}.json").read_text()), torch.load(out / f"{name}.weights.pt", weights_only=True)


def _weight_difference(out: Path, name: str) -> float:
    _, expected = _results(out, "uninterrupted")
    _, got = _results(out, name)
    return max(float((got[k] - expected[k]).abs().max()) for k in expected)


def _assert_continues(out: Path, name: str) -> None:
    expected, _ = _results(out, "uninterrupted")
    got, _ = _results(out, name)
    step, reference = got["steps"][0], expected["steps"][SAVE_AT]
    assert step["loss"] == pytest.approx(reference["loss"], rel=1e-5), f"{name} loss"
    assert step["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5), f"{name} grad norm"
    assert step["lr"] == pytest.approx(reference["lr"], rel=1e-12), f"{name} learning rate"
    assert got["samples_after"] == expected["samples_after"], f"{name} data position"
    assert _weight_difference(out, name) <= WEIGHT_ATOL, name


def _registered(root: Path, checkpoint: Path) -> None:
    """Ray Train's record of a stage's latest checkpoint (its checkpoint_manager_snapshot.json, the part
    the driver's check reads), pointing at `checkpoint` as a rerun of the stage would find it."""
    root.mkdir(parents=True)
    (root / checkpoint.name).symlink_to(checkpoint, target_is_directory=True)
    (root / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": checkpoint.name, "metrics": {"step": SAVE_AT}}}))


def _rerun(data, root: Path, layout: Layout, num_workers: int, tensor_parallel: int) -> StageRun:
    return StageRun(stage=stage_config(layout), model=model_config(data.vocab_size), train_manifest=str(data.manifest),
                    parallel=ParallelConfig(num_workers=num_workers, tensor_parallel=tensor_parallel),
                    checkpoint_root=str(root))


@pytest.mark.slow
def test_reshardable_false_saves_the_universal_state_and_a_zero_change_resumes_from_it(packed_data,
                                                                                      tmp_path: Path) -> None:
    data = (str(packed_data.manifest), packed_data.vocab_size, str(tmp_path))
    launch(save_both_ways_worker, SAVED.world, *data)
    universal, plain = tmp_path / "checkpoint_universal", tmp_path / "checkpoint_plain"
    assert read_meta(universal).universal_state and len(list((universal / UNIVERSAL_DIR).glob("rank_*.pt"))) == 2
    assert not read_meta(plain).universal_state and not (plain / UNIVERSAL_DIR).exists()

    zero3 = dataclasses.replace(SAVED, zero_stage=3)
    launch(resume_worker, SAVED.world, [
        ("plain_same_layout", "plain", SAVED, "none"),  # DeepSpeed's own shards: no universal state needed
        ("zero3_from_zero2", "universal", zero3, "none"),
        ("zero3_from_zero2_no_moments", "universal", zero3, "moments"),  # a deliberately broken rebuild
    ], *data)
    _assert_continues(tmp_path, "plain_same_layout")
    _assert_continues(tmp_path, "zero3_from_zero2")
    broken = _weight_difference(tmp_path, "zero3_from_zero2_no_moments")
    assert broken > 10 * WEIGHT_ATOL, f"the deliberate break passed: weights differ by {broken:.2e}"

    # On the driver, before any worker starts: a rerun of the stage whose latest checkpoint is the plain one.
    root = tmp_path / "rerun"
    _registered(root, plain)
    refuse_unresumable(_rerun(packed_data, root, SAVED, num_workers=2, tensor_parallel=1))  # its own layout: fine
    narrow = dataclasses.replace(SAVED, micro=2)  # TP 2 x DP 1 keeps the global batch of 4 rows
    with pytest.raises(StageInputError,
                       match=r"^stage 'reshard': checkpoint layout tp 1 x dp 2 differs from this run's tp 2 x dp 1, "
                             r"and it holds no optimizer state by parameter name \(universal/: written with "
                             r"checkpoint\.reshardable = false[^\n]*rerun with its layout \(parallel\.num_workers 2, "
                             r"parallel\.tensor_parallel 1, parallel\.context_parallel 1\)[^\n]*$"):
        refuse_unresumable(_rerun(packed_data, root, narrow, num_workers=2, tensor_parallel=2))
    with pytest.raises(StageInputError,
                       match=r"^stage 'reshard': checkpoint of stage 'reshard' at step 2 was trained under ZeRO-2 and "
                             r"this run asks ZeRO-3, and it holds no optimizer state by parameter name[^\n]*"
                             r"rerun with train\.zero_stage 2[^\n]*$"):
        refuse_unresumable(_rerun(packed_data, root, zero3, num_workers=2, tensor_parallel=1))
