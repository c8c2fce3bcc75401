"""The driver side of a stage: a Ray Train `TorchTrainer` over `train_stage_worker`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from forge_platform.engine.train_loop import StageRun, train_stage_worker


@dataclass(frozen=True)
class StageResult:
    """Where a finished stage left its last checkpoint, and its final reported metrics."""

    checkpoint_dir: Path | None
    """The last checkpoint; None only when the stage was told not to save one."""
    metrics: dict
    raw: Result
    """Ray Train's own result: every retained checkpoint with its reported metrics."""


def run_stage(run: StageRun, storage_dir: str | Path, name: str) -> StageResult:
    """Train one stage on `run.parallel.num_workers` Ray Train workers; resumes after worker failures."""
    parallel = run.parallel
    storage = Path(storage_dir).resolve()
    run = dataclasses.replace(run, checkpoint_root=str(storage / name))
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
    return StageResult(checkpoint_dir=checkpoint_dir, metrics=dict(result.metrics or {}), raw=result)
