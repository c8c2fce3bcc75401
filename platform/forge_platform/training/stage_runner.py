"""The driver side of a stage: a Ray Train `TorchTrainer` over `train_stage_worker`.

Its checkpoints go under `storage_dir/<name>`: a local folder (shared by the nodes), or an object
store (s3://, gs://) through Ray Train's storage filesystem, the workers writing to local scratch
first (`checkpoint_storage.py`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from forge_data import storage
from forge_data.storage import StorageNotFound
from ray.train import FailureConfig, Result, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from forge_platform.cluster import check_resources
from forge_platform.input_errors import StageInputError, worker_input_error
from forge_platform.training.checkpoint_files import META_FILE, CheckpointMeta, IncompatibleCheckpointError, read_meta
from forge_platform.training.checkpoint_manager import (
    check_resumable,
    latest_registered_checkpoint,
    ray_checkpoint_config,
)
from forge_platform.training.checkpoint_storage import checkpoint_uri, latest_registered_meta, ray_storage
from forge_platform.training.trainer import (
    FINAL_METRICS_FILE,
    INPUT_ERROR_FILE,
    StageRun,
    final_metrics_location,
    train_stage_worker,
)


@dataclass(frozen=True)
class StageResult:
    """Where a finished stage left its last checkpoint, and its final reported metrics."""

    checkpoint_dir: Path | str | None
    """The last checkpoint (a local path, or a URI on an object store); None only when the stage was
    told not to save one."""
    metrics: dict
    raw: Result
    """Ray Train's own result: every retained checkpoint with its reported metrics."""


def run_stage(run: StageRun, storage_dir: str | Path, name: str, scratch_dir: str | Path | None = None) -> StageResult:
    """Train one stage on `run.parallel.num_workers` Ray Train workers; resumes after worker failures.

    Checkpoints go to `storage_dir/name`; on an object store the workers write them (and the stage's
    own records) under the local `scratch_dir` first."""
    parallel = run.parallel
    check_resources(parallel)
    storage_path, filesystem = ray_storage(str(storage_dir))
    stage_uri = storage.join(str(storage_dir), name) if filesystem is not None else None
    if stage_uri is not None and scratch_dir is None:
        raise ValueError(f"run_stage: storage {storage_dir} is an object store: scratch_dir must be given")
    local_root = Path(scratch_dir).resolve() / "checkpoints" / name if stage_uri else Path(storage_path) / name
    # The last step's metrics go beside the checkpoints on the store: rank 0's scratch may be another node's.
    run = dataclasses.replace(run, checkpoint_root=str(local_root),
                              final_metrics_uri=storage.join(stage_uri, FINAL_METRICS_FILE) if stage_uri else "")
    refuse_unresumable(run, stage_uri)  # before anything of the earlier run is removed
    final_metrics = final_metrics_location(run)
    storage.remove(final_metrics)  # an earlier run's ending is not this one's
    input_error = Path(run.checkpoint_root) / INPUT_ERROR_FILE
    input_error.unlink(missing_ok=True)  # nor its input's error
    trainer = TorchTrainer(
        train_stage_worker,
        train_loop_config={"run": run},
        torch_config=TorchConfig(backend="nccl" if parallel.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=parallel.num_workers,
            use_gpu=parallel.use_gpu,
            resources_per_worker={"CPU": parallel.cpus_per_worker,
                                  **({"GPU": parallel.gpu_share} if parallel.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray_checkpoint_config(run.stage.checkpoint),
            failure_config=FailureConfig(max_failures=parallel.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as err:  # Ray Train raises what its workers raised (after max_failures)
        # The user's input: one line, exit code 2 (cli.job_main). Read from the exception Ray carries
        # back from whichever node the worker ran on, not from its input_error.json (input_errors.py).
        input_failure = worker_input_error(err)
        if input_failure is not None:
            raise StageInputError(f"stage {run.stage.name!r}: {input_failure}") from err
        raise RuntimeError(f"stage {run.stage.name!r} failed: {err}") from err
    if result.error is not None:
        raise RuntimeError(f"stage {run.stage.name!r} failed") from result.error
    if result.checkpoint is None and run.stage.checkpoint.save_final:
        raise RuntimeError(f"stage {run.stage.name!r} finished without reporting a checkpoint")
    checkpoint_dir: Path | str | None = None
    if result.checkpoint is not None:
        checkpoint_dir = checkpoint_uri(result.checkpoint) if stage_uri else Path(result.checkpoint.path)
    metrics = dict(result.metrics or {})
    try:  # the last step's, also when no final checkpoint was saved
        metrics.update(json.loads(storage.read_bytes(final_metrics)))
    except StorageNotFound:  # the stage ran no step
        pass
    return StageResult(checkpoint_dir=checkpoint_dir, metrics=metrics, raw=result)


def refuse_unresumable(run: StageRun, stage_uri: str | None = None) -> None:
    """A rerun of a stage continues from the checkpoint Ray Train registered for it: refuse, before any
    worker starts, one that cannot (another model, layout or training settings), naming each difference.
    Ray's record is read from `stage_uri` on an object store, else from `run.checkpoint_root`."""
    if stage_uri is not None:
        recorded = latest_registered_meta(stage_uri, META_FILE)
        if recorded is None:
            return
        meta = CheckpointMeta(**recorded)
    else:
        latest = latest_registered_checkpoint(Path(run.checkpoint_root))
        if latest is None:
            return
        meta = read_meta(latest)
    dims = run.parallel.dims
    try:
        check_resumable(meta, run.identity, tensor_parallel=dims.tp, data_parallel=dims.dp, context_parallel=dims.cp)
    except IncompatibleCheckpointError as err:
        raise StageInputError(f"stage {run.stage.name!r}: {err}") from None
