"""The driver side of a stage: a Ray Train `TorchTrainer` over `train_stage_worker`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from forge_platform.engine.train_loop import FINAL_METRICS_FILE, StageRun, train_stage_worker
from forge_platform.training_config import ParallelConfig


@dataclass(frozen=True)
class StageResult:
    """Where a finished stage left its last checkpoint, and its final reported metrics."""

    checkpoint_dir: Path | None
    """The last checkpoint; None only when the stage was told not to save one."""
    metrics: dict
    raw: Result
    """Ray Train's own result: every retained checkpoint with its reported metrics."""


def check_resources(parallel: ParallelConfig) -> None:
    """Refuse a worker group that this Ray can never place (it would retry forever).

    Skipped on a cluster (RAY_ADDRESS set), where an autoscaler may add the nodes.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    have = ray.cluster_resources()
    need = {"CPU": parallel.num_workers * parallel.cpus_per_worker, "GPU": parallel.num_workers * parallel.use_gpu}
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0)}
    if short:
        detail = ", ".join(f"{k}: {v:g} needed, {h:g} in this Ray" for k, (v, h) in short.items())
        raise ValueError(
            f"parallel: {parallel.num_workers} workers x {parallel.cpus_per_worker:g} CPU"
            f"{' + 1 GPU' if parallel.use_gpu else ''} cannot be placed ({detail}); "
            "raise ray_num_cpus or lower parallel.cpus_per_worker / num_workers"
        )


def run_stage(run: StageRun, storage_dir: str | Path, name: str) -> StageResult:
    """Train one stage on `run.parallel.num_workers` Ray Train workers; resumes after worker failures."""
    parallel = run.parallel
    check_resources(parallel)
    storage = Path(storage_dir).resolve()
    run = dataclasses.replace(run, checkpoint_root=str(storage / name))
    final_metrics = Path(run.checkpoint_root) / FINAL_METRICS_FILE
    final_metrics.unlink(missing_ok=True)  # an earlier run's ending is not this one's
    trainer = TorchTrainer(
        train_stage_worker,
        train_loop_config={"run": run},
        torch_config=TorchConfig(backend="nccl" if parallel.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=parallel.num_workers,
            use_gpu=parallel.use_gpu,
            resources_per_worker={"CPU": parallel.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=run.stage.checkpoint.keep_last),
            failure_config=FailureConfig(max_failures=parallel.max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"stage {run.stage.name!r} failed") from result.error
    if result.checkpoint is None and run.stage.checkpoint.save_final:
        raise RuntimeError(f"stage {run.stage.name!r} finished without reporting a checkpoint")
    checkpoint_dir = Path(result.checkpoint.path) if result.checkpoint else None
    metrics = dict(result.metrics or {})
    if final_metrics.exists():  # the last step's, also when no final checkpoint was saved
        metrics.update(json.loads(final_metrics.read_text()))
    return StageResult(checkpoint_dir=checkpoint_dir, metrics=metrics, raw=result)
