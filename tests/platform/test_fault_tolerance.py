"""Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers: a worker killed mid-run is restarted from the last
checkpoint, and the loss curve equals the uninterrupted run's step for step, bitwise."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from forge_models import get_preset
from forge_platform.cluster import check_resources, ensure_ray
from forge_platform.config_sections import (CheckpointConfig, OptimConfig, ParallelConfig, StageConfig,
                                            TrackingConfig, TrainConfig)
from forge_platform.training.checkpoint_files import read_meta
from forge_platform.training.stage_runner import run_stage
from forge_platform.training.trainer import INPUT_ERROR_FILE, StageRun
from forge_platform.input_errors import StageInputError
from forge_platform.training.drills import FailureDrill

pytestmark = pytest.mark.slow

STEPS = 6


def stage_run(data, **changes) -> StageRun:
    stage = StageConfig(
        name="drill",
        seq_len=64,
        train=TrainConfig(steps=STEPS, micro_batch_size=2, zero_stage=2, seed=3),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_tokens=512),
        checkpoint=CheckpointConfig(every_steps=1, keep_last=STEPS),
    )
    model = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=data.vocab_size)
    run = StageRun(stage=stage, model=model, parallel=ParallelConfig(num_workers=2, max_failures=1, peak_tflops=1.0),
                   train_manifest=str(data.manifest), tracking=TrackingConfig(backend="null"))
    return dataclasses.replace(run, **changes)


def losses_by_step(result) -> dict[int, float]:
    return {int(metrics["step"]): metrics["loss"] for _, metrics in result.best_checkpoints}


def test_killed_worker_resumes_with_identical_losses(packed_data, tmp_path: Path) -> None:
    ensure_ray(4, workspace=tmp_path)
    clean = run_stage(stage_run(packed_data), tmp_path / "storage", "clean")
    crashed = run_stage(
        stage_run(packed_data, drill=FailureDrill(after_step=3, marker_dir=str(tmp_path / "marker"))),
        tmp_path / "storage", "crashed",
    )
    assert (tmp_path / "marker" / "crashed").exists(), "the drill did not crash a worker"
    # the crash came after step 3's update and before its checkpoint: step 3 was recomputed from 2
    clean_losses = losses_by_step(clean.raw)
    crashed_losses = losses_by_step(crashed.raw)
    assert sorted(clean_losses) == list(range(1, STEPS + 1))
    assert crashed_losses == clean_losses  # bitwise: same floats, step for step
    final = read_meta(crashed.checkpoint_dir)
    assert final.step == STEPS and final.samples_consumed == read_meta(clean.checkpoint_dir).samples_consumed
    assert final.samples_consumed == STEPS * 2 * 2  # no sample repeated or skipped on resume


def test_a_restarted_worker_group_logs_each_step_once(packed_data, tmp_path: Path) -> None:
    """A worker dies after step 5 (checkpoints every 3): rank 0 had logged steps 4 and 5 to MLflow; the
    restarted group trains them again from step 3 and does not log them twice."""
    from forge_platform.tracking.mlflow_server import local_mlflow_server
    from forge_platform.tracking.runs import MlflowRuns
    from mlflow.tracking import MlflowClient

    ensure_ray(4, workspace=tmp_path)
    with local_mlflow_server(tmp_path / "mlflow") as server:
        runs = MlflowRuns(server.uri, "restarts")
        run_id = runs.start("drill", {})
        base = stage_run(packed_data)
        stage = dataclasses.replace(base.stage, checkpoint=CheckpointConfig(every_steps=3, keep_last=2))
        tracking = TrackingConfig(uri=server.uri, system_metrics_interval_s=0, spill_dir=str(tmp_path / "spill"))
        result = run_stage(dataclasses.replace(base, stage=stage, tracking=tracking, run_id=run_id,
                                               drill=FailureDrill(after_step=5, marker_dir=str(tmp_path / "marker"), wait_s=3.0)),
                           tmp_path / "storage", "logged-once")
        runs.send_spilled(run_id)
        assert (tmp_path / "marker" / "crashed").exists(), "the drill did not crash a worker"
        history = MlflowClient(server.uri).get_metric_history(run_id, "loss")
        tags = MlflowClient(server.uri).get_run(run_id).data.tags
    assert tags["forge.kernel_path"] == "reference (cpu device)"  # recorded by the worker
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # each step once
    assert {m.step: m.value for m in history}[STEPS] == pytest.approx(result.metrics["loss"], rel=1e-6)


def test_tensor_parallel_stage_matches_one_worker(packed_data, tmp_path: Path) -> None:
    """TP=2 through Ray Train + DeepSpeed (mpu) trains the same model as one worker, step for step."""
    ensure_ray(4, workspace=tmp_path)
    short = {"stage": dataclasses.replace(stage_run(packed_data).stage,
                                          train=TrainConfig(steps=3, micro_batch_size=2, zero_stage=1, seed=3))}
    one = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=1, peak_tflops=1.0), **short),
                    tmp_path / "storage", "tp1")
    two = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=2, tensor_parallel=2, peak_tflops=1.0),
                              **short), tmp_path / "storage", "tp2")
    one_losses, two_losses = losses_by_step(one.raw), losses_by_step(two.raw)
    assert sorted(one_losses) == [1, 2, 3]
    for step, loss in one_losses.items():
        assert two_losses[step] == pytest.approx(loss, rel=1e-5), step
    assert read_meta(two.checkpoint_dir).tensor_parallel == 2
    # the consolidated weights are single-device weights, whatever the layout that wrote them
    import torch

    full_one = torch.load(one.checkpoint_dir / "model.pt", weights_only=True)
    full_two = torch.load(two.checkpoint_dir / "model.pt", weights_only=True)
    assert full_one.keys() == full_two.keys()
    for name, tensor in full_one.items():
        assert full_two[name].shape == tensor.shape
        torch.testing.assert_close(full_two[name], tensor, rtol=1e-4, atol=1e-5)  # Adam amplifies 1e-7 grad noise


def test_data_parallel_stage_matches_one_worker_on_the_same_rows(short_docs_data, tmp_path: Path) -> None:
    """DP=2 (2 rows per rank, ZeRO-2) and one worker (2 rows x 2 accumulation steps) read the same 4 rows per
    step, grouped differently ({0, 2}, {1, 3} against {0, 1}, {2, 3}); rows count different numbers of labels
    (a document's last token has none), so only a per-token mean over the whole step agrees between them."""
    from forge_data import IGNORE_INDEX, PackedShardLoader

    packed_data = short_docs_data
    rows = PackedShardLoader(str(packed_data.manifest), micro_batch_size=4, shuffle_seed=3)
    counts = (next(iter(rows))["labels"] != IGNORE_INDEX).sum(dim=1).tolist()
    assert len(set(counts)) > 1, f"the test needs rows with different label counts, got {counts}"
    ensure_ray(4, workspace=tmp_path)
    train = {"steps": 3, "micro_batch_size": 2, "zero_stage": 2, "seed": 3}
    base = stage_run(packed_data).stage
    one = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=1, peak_tflops=1.0),
                              stage=dataclasses.replace(base, train=TrainConfig(grad_accum_steps=2, **train))),
                    tmp_path / "storage", "dp1")
    two = run_stage(stage_run(packed_data, parallel=ParallelConfig(num_workers=2, peak_tflops=1.0),
                              stage=dataclasses.replace(base, train=TrainConfig(grad_accum_steps=1, **train))),
                    tmp_path / "storage", "dp2")
    one_losses, two_losses = losses_by_step(one.raw), losses_by_step(two.raw)
    assert sorted(one_losses) == [1, 2, 3]
    for step, loss in one_losses.items():  # a mean of per-rank means is off by 1.6e-5 at step 1
        assert two_losses[step] == pytest.approx(loss, rel=2e-6), (step, one_losses, two_losses)
    assert read_meta(two.checkpoint_dir).samples_consumed == read_meta(one.checkpoint_dir).samples_consumed == 12


@pytest.mark.parametrize("layout", [ParallelConfig(num_workers=2, peak_tflops=1.0),
                                    ParallelConfig(num_workers=4, tensor_parallel=2, cpus_per_worker=0.5,
                                                   peak_tflops=1.0)], ids=["dp2", "tp2xdp2"])
def test_zero3_stage_matches_one_worker_on_the_same_rows(short_docs_data, tmp_path: Path,
                                                        layout: ParallelConfig) -> None:
    """ZeRO-3 through the real trainer, alone and under TP=2, trains the same model as one worker on the
    same rows, with gradients accumulated over two micro-batches. The model is wide enough (d_model 256)
    that DeepSpeed really partitions its weights (below 1e5 elements it keeps them whole), and it ties its
    LM head to the embedding, a parameter read outside its own module."""
    ensure_ray(4, workspace=tmp_path)
    model = dataclasses.replace(stage_run(short_docs_data).model, d_model=256, tie_embeddings=True)
    base = stage_run(short_docs_data).stage
    one = run_stage(stage_run(short_docs_data, parallel=ParallelConfig(num_workers=1, peak_tflops=1.0), model=model,
                              stage=dataclasses.replace(base, train=TrainConfig(steps=3, micro_batch_size=2,
                                                                                grad_accum_steps=2, seed=3))),
                    tmp_path / "storage", "zero3-ref")
    three = run_stage(stage_run(short_docs_data, parallel=layout, model=model,
                                stage=dataclasses.replace(base, train=TrainConfig(
                                    steps=3, micro_batch_size=1, grad_accum_steps=2, zero_stage=3, seed=3))),
                      tmp_path / "storage", "zero3")
    one_losses, three_losses = losses_by_step(one.raw), losses_by_step(three.raw)
    assert sorted(three_losses) == [1, 2, 3]
    for step, loss in one_losses.items():
        assert three_losses[step] == pytest.approx(loss, rel=2e-6), (step, one_losses, three_losses)
    assert read_meta(three.checkpoint_dir).tensor_parallel == layout.tensor_parallel


def test_a_rerun_with_other_settings_or_data_is_refused(packed_data, short_docs_data, tmp_path: Path) -> None:
    """Ray Train hands a rerun of a stage (same name, same storage) its latest checkpoint; the
    platform continues it only with the training settings and data it was written with, or with the
    changes `checkpoint.resume_may_change` allows, and says which setting differs."""
    ensure_ray(4, workspace=tmp_path)
    one = ParallelConfig(num_workers=1, peak_tflops=1.0, max_failures=1)

    def rerun(data, steps: int, may_change: tuple[str, ...] = ()):
        base = stage_run(data).stage
        stage = dataclasses.replace(base, train=TrainConfig(steps=steps, micro_batch_size=2, seed=3),
                                    checkpoint=dataclasses.replace(base.checkpoint, resume_may_change=list(may_change)))
        return run_stage(stage_run(data, parallel=one, stage=stage), tmp_path / "storage", "rerun")

    first = rerun(packed_data, steps=2)
    assert read_meta(first.checkpoint_dir).data["dataset_sha256"]  # the loader's state is kept
    marker = tmp_path / "storage" / "rerun" / INPUT_ERROR_FILE
    # Other settings: refused on the driver before any worker starts, each change named, one line.
    with pytest.raises(StageInputError,
                       match=r"^stage 'drill': .*other settings: train\.steps 2 -> 4; [^\n]*resume_may_change[^\n]*$"):
        rerun(packed_data, steps=4)  # would reshape the learning-rate schedule mid-run
    assert not marker.exists()  # no worker was started
    # Other data: the workers' check (the loader's dataset hash); Ray's retry stops at once.
    with pytest.raises(StageInputError, match="^stage 'drill': .*trained on other data"):
        rerun(short_docs_data, steps=2)
    assert json.loads(marker.read_text())["retries_refused"] == 1
    again = rerun(packed_data, steps=2)  # the same run again: continued (here: already done), not refused
    assert read_meta(again.checkpoint_dir).step == 2
    # Training longer, allowed explicitly: continues from step 2 and records the new settings.
    longer = rerun(packed_data, steps=4, may_change=("train.steps",))
    final = read_meta(longer.checkpoint_dir)
    assert final.step == 4 and final.training["train.steps"] == 4
    assert sorted(losses_by_step(longer.raw)) == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 now


def test_a_worker_group_ray_cannot_place_is_refused_at_once(packed_data, tmp_path: Path) -> None:
    """Ray would retry a group it can never place forever; the platform names the shortfall instead."""
    ensure_ray(4, workspace=tmp_path)
    too_big = stage_run(packed_data, parallel=ParallelConfig(num_workers=2, cpus_per_worker=4.0))
    with pytest.raises(ValueError, match=r"2 workers x 4 CPU cannot be placed \(CPU: 8 needed, 4 in this Ray\)"):
        run_stage(too_big, tmp_path / "storage", "too-big")


def test_on_a_cluster_an_unplaceable_group_fails_after_the_placement_timeout(tmp_path: Path) -> None:
    """On a cluster the autoscaler may still add nodes: the check waits, then names the shortfall."""
    import time

    ensure_ray(4, workspace=tmp_path)
    fits = ParallelConfig(num_workers=2, cpus_per_worker=1.0, placement_timeout_s=30.0)
    started = time.monotonic()
    check_resources(fits, on_cluster=True, poll_s=0.1)
    assert time.monotonic() - started < 1.0  # what fits is not waited for
    too_big = ParallelConfig(num_workers=2, cpus_per_worker=4.0, placement_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"CPU: 8 needed, 4 in the cluster after waiting 1 s for the autoscaler\); add nodes"):
        check_resources(too_big, on_cluster=True, poll_s=0.1)
    assert 1.0 <= time.monotonic() - started < 5.0


def test_a_stage_without_a_final_checkpoint_still_reports_its_final_loss(packed_data, tmp_path: Path) -> None:
    """Ray Train's result holds only checkpointed metrics; benchmark runs save none and need their loss."""
    import math

    ensure_ray(4, workspace=tmp_path)
    stage = dataclasses.replace(stage_run(packed_data).stage, train=TrainConfig(steps=2, micro_batch_size=2, seed=3),
                                checkpoint=CheckpointConfig(every_steps=1000, save_final=False))
    result = run_stage(stage_run(packed_data, stage=stage, parallel=ParallelConfig(num_workers=1, peak_tflops=1.0)),
                       tmp_path / "storage", "no-final-checkpoint")
    assert result.checkpoint_dir is None
    assert result.metrics["step"] == 2 and math.isfinite(result.metrics["loss"]) and result.metrics["loss"] > 0
