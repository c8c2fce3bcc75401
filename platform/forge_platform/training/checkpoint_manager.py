"""The checkpoint policy of one stage: when to save, how many to keep, which is latest, and whether
a checkpoint may be continued from. Writing the folder itself is `checkpoint_files.py`'s.

- When: every `checkpoint.every_steps` steps, and at the stage's last step if `save_final`.
- How many: Ray Train keeps the last `keep_last` reported checkpoints and deletes older ones
  (`ray_checkpoint_config`, given to the trainer on the driver).
- Which is latest: the one Ray Train hands a (re)started worker group (`ray.train.get_checkpoint`).
- Writing: every rank writes its DeepSpeed shard into one folder under the run's storage, rank 0
  the metadata and consolidated weights, and only then is the folder reported to Ray Train, so an
  interrupted write is never taken as the latest.
- Resuming: the checkpoint must come from the same model, the same parallel layout, the same
  training settings (sequence length, steps, batch shape, optimizer: `training_hash`) and the
  same data (the loader's dataset hash and shuffle seed); anything else is refused naming it.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import ray.train
import torch.distributed as dist
from forge_data import PackedShardLoader
from forge_models import ModelConfig
from ray.train import CheckpointUploadMode

from forge_platform.config_loader import config_hash
from forge_platform.job_config import CheckpointConfig, StageConfig
from forge_platform.parallel.parallelize import ParallelModel
from forge_platform.parallel.sharding import gather_state_dict
from forge_platform.training.checkpoint_files import (
    DEEPSPEED_TAG,
    CheckpointMeta,
    IncompatibleCheckpointError,
    read_meta,
    save_rank_zero_files,
)


def training_hash(stage: StageConfig) -> str:
    """Hash of what a resumed run must not change: sequence length, steps, batch shape, optimizer.
    Not the recompute mode: it changes memory and speed, never the numbers (a rerun on another GPU
    may resolve `auto` differently and still continue)."""
    train = {k: v for k, v in dataclasses.asdict(stage.train).items() if k != "recompute"}
    return config_hash({"seq_len": stage.seq_len, "train": train,
                        "optim": dataclasses.asdict(stage.optim)})


def ray_checkpoint_config(policy: CheckpointConfig) -> ray.train.CheckpointConfig:
    """How many checkpoints Ray Train keeps (the driver side of the policy)."""
    return ray.train.CheckpointConfig(num_to_keep=policy.keep_last)


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint records about the run that wrote it, and what a resume must match."""

    stage: str
    model_hash: str
    training_hash: str
    run_id: str = ""


def check_resumable(meta: CheckpointMeta, identity: RunIdentity, *, tensor_parallel: int,
                    data_parallel: int) -> None:
    """Refuse, with the reason, a checkpoint the run `identity` cannot continue from."""
    if meta.model_hash != identity.model_hash:
        raise IncompatibleCheckpointError(
            f"checkpoint of stage {meta.stage!r} was written by another model (model hash {meta.model_hash}, "
            f"this run's is {identity.model_hash}); start a new run or point at the right checkpoint"
        )
    if (meta.tensor_parallel, meta.data_parallel) != (tensor_parallel, data_parallel):
        raise IncompatibleCheckpointError(
            f"checkpoint layout tp {meta.tensor_parallel} x dp {meta.data_parallel} differs from this run's "
            f"tp {tensor_parallel} x dp {data_parallel}; resharding is not supported yet: resume with the same "
            "layout, or start the next stage from its consolidated weights (model.pt)"
        )
    if meta.config_hash != identity.training_hash:
        raise IncompatibleCheckpointError(
            f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained with other settings "
            f"(sequence length, steps, batch shape or optimizer: hash {meta.config_hash}, this run's is "
            f"{identity.training_hash}); resume with the settings it was written with, or start a new run"
        )


class CheckpointManager:
    """One stage's checkpoints, on every rank (every call below is collective unless it says not)."""

    def __init__(self, policy: CheckpointConfig, root: Path, identity: RunIdentity, total_steps: int,
                 model_config: ModelConfig) -> None:
        self.policy = policy
        self.root = Path(root)
        self.identity = identity
        self.total_steps = total_steps
        self.model_config = model_config

    def should_save(self, step: int) -> bool:
        """Whether the checkpoint after optimizer step `step` (1-based) is due. Not collective."""
        return step % self.policy.every_steps == 0 or (step == self.total_steps and self.policy.save_final)

    def restore(self, parallel: ParallelModel, loader: PackedShardLoader) -> int:
        """Load the latest checkpoint Ray Train hands this worker group, if any; return the step to start at."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as folder:
            meta = read_meta(Path(folder))
            check_resumable(meta, self.identity, tensor_parallel=parallel.groups.tp,
                            data_parallel=parallel.groups.dp)
            parallel.engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        if meta.data:
            try:
                loader.load_state_dict(meta.data)
            except ValueError as err:
                raise IncompatibleCheckpointError(
                    f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained on other data: {err}; "
                    "start a new run, or point train_manifest at the data it was trained on"
                ) from None
        else:  # written before the loader's state was kept: the offset alone
            loader.samples_consumed = meta.samples_consumed
        return meta.step

    def save(self, step: int, parallel: ParallelModel, loader: PackedShardLoader, tokens_per_step: int,
             metrics: dict[str, float]) -> None:
        """Every rank writes its DeepSpeed shard into one folder; Ray Train collects and registers it.

        Rank 0 also writes the consolidated single-device weights, gathered across tensor-parallel
        ranks (a collective: every rank takes part), so evaluation and the next stage never depend
        on this run's parallel layout.
        """
        groups, engine, model = parallel.groups, parallel.engine, parallel.module
        meta = CheckpointMeta(
            step=step,
            tokens_seen=step * tokens_per_step,
            samples_consumed=loader.samples_consumed,
            stage=self.identity.stage,
            config_hash=self.identity.training_hash,
            model_hash=self.identity.model_hash,
            tensor_parallel=groups.tp,
            data_parallel=groups.dp,
            run_id=self.identity.run_id,
            data=loader.state_dict(),
        )
        if engine.zero_optimization_stage() == 3:
            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                full_weights = gather_state_dict(model, self.model_config, groups)
        else:
            full_weights = gather_state_dict(model, self.model_config, groups)
        # Written in place under the run's storage (a shared filesystem on a cluster) and registered
        # without a copy: an 8B model's checkpoint is ~100 GB.
        folder = self.root / f"step_{step:08d}"
        if groups.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)  # a partial write from an attempt that died
            folder.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        if groups.rank == 0:
            save_rank_zero_files(folder, meta, self.model_config, full_weights)
        dist.barrier()
        report = {**metrics, **{k: v for k, v in dataclasses.asdict(meta).items() if k != "data"}}
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

