"""The checkpoint policy of one stage: when to save, how many to keep, which is latest, and whether
a checkpoint may be continued from. Writing the folder itself is `checkpoint_files.py`'s.

- When: every `checkpoint.every_steps` steps, and at the stage's last step if `save_final`.
- How many: Ray Train keeps the last `keep_last` reported checkpoints and deletes older ones
  (`ray_checkpoint_config`, given to the trainer on the driver).
- Which is latest: the one Ray Train hands a (re)started worker group (`ray.train.get_checkpoint`).
- Writing: every rank writes its DeepSpeed shard into one folder under the run's storage, rank 0
  the metadata and consolidated weights, and only then is the folder reported to Ray Train, so an
  interrupted write is never taken as the latest (on an object store: into local scratch, uploaded
  on report; `checkpoint_storage.py`).
- Resuming: the checkpoint must come from the same model, the same training settings
  (`training_settings`: sequence length, steps, batch shape, optimizer; those
  `checkpoint.resume_may_change` lists may differ) and the same data (the loader's dataset hash and
  shuffle seed); anything else is refused naming each difference, on the driver before the workers
  start (`latest_registered_checkpoint`) and again by the workers.
- Resharding: the parallel degrees (tp x cp x dp) and the ZeRO stage may differ from the checkpoint's.
  The same layout and ZeRO stage load DeepSpeed's own shards; anything else loads the optimizer state
  by parameter name (`universal_checkpoint.py`), sliced for its TP ranks and partitioned by its ZeRO,
  which a checkpoint holds unless it was written with `checkpoint.reshardable = false`. The global batch
  in rows (micro_batch_size x grad_accum_steps x dp) must stay the same: the data position and the
  schedule count steps of it. Micro-batch size and accumulation may change with it (the same rows
  make each step: the loader hands out global sample indices); a different global batch is refused
  naming the product, and so is a reshard from a checkpoint without the universal state (written with
  `checkpoint.reshardable = false`, or before it was kept), in one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import ray.train
import torch.distributed as dist
from forge_data import PackedShardLoader
from forge_models import ModelConfig

from forge_platform.config_loader import config_hash
from forge_platform.config_sections import CheckpointConfig, StageConfig, may_change_on_resume
from forge_platform.parallel.parallelize import ParallelModel
from forge_platform.parallel.sharding import gather_state_dict
from forge_platform.training.checkpoint_files import (
    DEEPSPEED_TAG,
    META_FILE,
    UNIVERSAL_DIR,
    CheckpointMeta,
    IncompatibleCheckpointError,
    read_meta,
    save_rank_zero_files,
)
from forge_platform.training.checkpoint_storage import CheckpointTarget, checkpoint_target, prepare_folder
from forge_platform.training.universal_checkpoint import load_universal_state, save_universal_state


IGNORED_ON_RESUME = ("train.recompute", "train.log_every")
"""Settings that change memory, speed or what is printed, never the numbers: a rerun may change them
freely (on another GPU `auto` may resolve the recompute mode differently and still continue)."""
BATCH_SHAPE = ("train.micro_batch_size", "train.grad_accum_steps")
"""May change on resume when the global batch in rows (with the data-parallel degree) stays the same."""
ZERO_STAGE = "train.zero_stage"
"""May change on resume when the checkpoint holds its universal state (or the stage in effect stays)."""


def training_settings(stage: StageConfig) -> dict[str, Any]:
    """What a resumed run is checked against, flat (`seq_len`, `train.steps`, `optim.lr`, ...):
    sequence length, steps, batch shape, precision, ZeRO stage, seed and optimizer."""
    flat = {"seq_len": stage.seq_len,
            **{f"train.{k}": v for k, v in _train_fields(stage).items()},
            **{f"optim.{k}": v for k, v in dataclasses.asdict(stage.optim).items()}}
    return {k: v for k, v in flat.items() if k not in IGNORED_ON_RESUME}


def _train_fields(stage: StageConfig) -> dict[str, Any]:
    """`stage.train` as a dict, without the fields added after checkpoints recorded their settings
    when they hold their defaults: checkpoints written before such a field existed stay resumable."""
    train = dataclasses.asdict(stage.train)
    for name, default in ADDED_TRAIN_FIELDS.items():
        if train.get(name) == default:
            del train[name]
    return train


ADDED_TRAIN_FIELDS = {"document_resets": True}
"""Training fields newer than `CheckpointMeta.training`, with their defaults (the behaviour before them)."""


def training_hash(stage: StageConfig) -> str:
    """Hash of the training settings as checkpoints record it (`CheckpointMeta.config_hash`); checkpoints
    written before `CheckpointMeta.training` existed are checked against it alone. Unchanged since then
    (log_every included), so those checkpoints stay resumable."""
    train = {k: v for k, v in _train_fields(stage).items() if k != "recompute"}
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
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """`training_settings` of this run (empty: compare `training_hash` only)."""
    may_change: tuple[str, ...] = ()
    """`checkpoint.resume_may_change`: settings that may differ from the checkpoint's."""

    def may_differ(self, name: str) -> bool:
        return name in self.may_change or (name.startswith("optim.") and "optim.*" in self.may_change)


def settings_changed(meta: CheckpointMeta, identity: RunIdentity) -> dict[str, tuple[Any, Any]]:
    """{setting: (the checkpoint's value, this run's)} for every training setting that differs."""
    if not meta.training or not identity.training:
        return {}
    names = (set(meta.training) | set(identity.training)) - set(IGNORED_ON_RESUME)
    return {n: (meta.training.get(n), identity.training.get(n)) for n in sorted(names)
            if meta.training.get(n) != identity.training.get(n)}


def layout_name(tensor_parallel: int, context_parallel: int, data_parallel: int) -> str:
    """'tp 2 x dp 2', or 'tp 1 x cp 2 x dp 2' when context parallel."""
    middle = f" x cp {context_parallel}" if context_parallel > 1 else ""
    return f"tp {tensor_parallel}{middle} x dp {data_parallel}"


def _global_batch(training: Mapping[str, Any], data_parallel: int) -> tuple[int, str]:
    """Rows per optimizer step, and how they are made ('4 x 2 x 2 = 16')."""
    micro, accum = training["train.micro_batch_size"], training["train.grad_accum_steps"]
    rows = micro * accum * data_parallel
    return rows, f"{micro} x {accum} x {data_parallel} = {rows}"


def _check_global_batch(meta: CheckpointMeta, identity: RunIdentity, data_parallel: int) -> None:
    """Refuse a resume whose global batch in rows differs from the checkpoint's, naming both products
    and, when one exists, the accumulation that keeps it."""
    old, old_text = _global_batch(meta.training, meta.data_parallel)
    new, new_text = _global_batch(identity.training, data_parallel)
    if old == new:
        return
    micro = identity.training["train.micro_batch_size"]
    hint = (f" (e.g. train.grad_accum_steps {old // (micro * data_parallel)} with micro_batch_size {micro} at dp "
            f"{data_parallel})" if old % (micro * data_parallel) == 0 else "")
    raise IncompatibleCheckpointError(
        f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained with a global batch of {old_text} rows "
        f"(micro_batch_size x grad_accum_steps x data-parallel degree); this run's is {new_text}: the data "
        f"position and the schedule count steps of the global batch, so it must stay {old}{hint}"
    )


def _zero_in_effect(zero_stage: Any, data_parallel: int, context_parallel: int) -> Any:
    """The ZeRO stage an engine runs: the configured one, or 0 with a single replica
    (`parallelize.effective_zero_stage`)."""
    return zero_stage if data_parallel * context_parallel > 1 else 0


def needs_reshard(meta: CheckpointMeta, identity: RunIdentity, *, tensor_parallel: int, data_parallel: int,
                  context_parallel: int = 1) -> bool:
    """Whether the run `identity` on these degrees must load the checkpoint's universal state: DeepSpeed's
    own shards load only into the layout and the ZeRO stage in effect that wrote them."""
    if (meta.tensor_parallel, meta.context_parallel, meta.data_parallel) != (tensor_parallel, context_parallel,
                                                                             data_parallel):
        return True
    if not meta.training or not identity.training:  # before the settings were kept: the hash decides
        return False
    old = _zero_in_effect(meta.training.get(ZERO_STAGE), meta.data_parallel, meta.context_parallel)
    new = _zero_in_effect(identity.training.get(ZERO_STAGE), data_parallel, context_parallel)
    return old != new


NOT_RESHARDABLE = (f"it holds no optimizer state by parameter name ({UNIVERSAL_DIR}/: written with "
                   "checkpoint.reshardable = false, or before checkpoints kept it)")


def _refuse_reshard(meta: CheckpointMeta, identity: RunIdentity, tensor_parallel: int, data_parallel: int,
                    context_parallel: int) -> None:
    """The one line refusing a reshard from a checkpoint without universal state, saying what to do."""
    old_layout = layout_name(meta.tensor_parallel, meta.context_parallel, meta.data_parallel)
    new_layout = layout_name(tensor_parallel, context_parallel, data_parallel)
    if old_layout != new_layout:
        workers = meta.tensor_parallel * meta.context_parallel * meta.data_parallel
        raise IncompatibleCheckpointError(
            f"checkpoint layout {old_layout} differs from this run's {new_layout}, and {NOT_RESHARDABLE}, so it "
            f"cannot be resharded: rerun with its layout (parallel.num_workers {workers}, parallel.tensor_parallel "
            f"{meta.tensor_parallel}, parallel.context_parallel {meta.context_parallel}), or start a new run from "
            "its consolidated weights (model.pt)"
        )
    old_zero = meta.training.get(ZERO_STAGE)
    raise IncompatibleCheckpointError(
        f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained under ZeRO-"
        f"{_zero_in_effect(old_zero, meta.data_parallel, meta.context_parallel)} and this run asks ZeRO-"
        f"{_zero_in_effect(identity.training.get(ZERO_STAGE), data_parallel, context_parallel)}, and "
        f"{NOT_RESHARDABLE}, so its optimizer partitions cannot be rebuilt: rerun with train.zero_stage {old_zero}, "
        "or start a new run from its consolidated weights (model.pt)"
    )


def check_resumable(meta: CheckpointMeta, identity: RunIdentity, *, tensor_parallel: int,
                    data_parallel: int, context_parallel: int = 1) -> dict[str, tuple[Any, Any]]:
    """Refuse, with the reason, a checkpoint the run `identity` cannot continue from; return the
    changed settings it may continue with (empty when nothing changed): those the run's
    `checkpoint.resume_may_change` allows, a batch shape that keeps the global batch, and, from a
    checkpoint with universal state, another ZeRO stage."""
    if meta.model_hash != identity.model_hash:
        raise IncompatibleCheckpointError(
            f"checkpoint of stage {meta.stage!r} was written by another model (model hash {meta.model_hash}, "
            f"this run's is {identity.model_hash}); start a new run or point at the right checkpoint"
        )
    if not meta.universal_state and needs_reshard(meta, identity, tensor_parallel=tensor_parallel,
                                                  data_parallel=data_parallel, context_parallel=context_parallel):
        _refuse_reshard(meta, identity, tensor_parallel, data_parallel, context_parallel)
    if not meta.training or not identity.training:  # a checkpoint from before the settings were kept
        if meta.config_hash != identity.training_hash:
            raise IncompatibleCheckpointError(
                f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained with other settings "
                f"(sequence length, steps, batch shape or optimizer: hash {meta.config_hash}, this run's is "
                f"{identity.training_hash}); resume with the settings it was written with, or start a new run"
            )
        return {}
    changed = settings_changed(meta, identity)
    if meta.data_parallel != data_parallel or any(n in changed for n in BATCH_SHAPE):
        _check_global_batch(meta, identity, data_parallel)
    # The ZeRO stage partitions the same optimizer state: the universal state rebuilds any partitioning,
    # and a change that leaves the stage in effect alone (one replica runs 0) needs nothing rebuilt.
    reshaped = BATCH_SHAPE + (ZERO_STAGE,)
    refused = [n for n in changed if not identity.may_differ(n) and n not in reshaped]
    if refused:
        listed = ", ".join(f"{n} {changed[n][0]!r} -> {changed[n][1]!r}" for n in refused)
        fixable = all(may_change_on_resume(n) for n in refused)
        advice = (f"to continue anyway, list them in checkpoint.resume_may_change (e.g. "
                  f"--stage.checkpoint.resume_may_change {','.join(refused)})" if fixable else
                  "these cannot change on resume (they change what the checkpoint holds or which rows come "
                  "next): rerun with the checkpoint's values, or start a new run (another name or output_dir)")
        raise IncompatibleCheckpointError(
            f"checkpoint of stage {meta.stage!r} at step {meta.step} was trained with other settings: {listed}; "
            f"{advice}"
        )
    return changed


def latest_registered_checkpoint(stage_storage: Path) -> Path | None:
    """The checkpoint Ray Train will hand a rerun of the stage stored at `stage_storage` (its own record,
    `checkpoint_manager_snapshot.json`), or None. Read on the driver, so a rerun that cannot continue is
    refused before any worker starts; the workers check again (`CheckpointManager.restore`)."""
    snapshot = Path(stage_storage) / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return None
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, json.JSONDecodeError):  # Ray's own file: if it cannot be read, Ray decides
        return None
    name = latest.get("checkpoint_dir_name")
    folder = Path(stage_storage) / name if name else None
    return folder if folder is not None and (folder / META_FILE).exists() else None


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
            return self.restore_from(Path(folder), parallel, loader)

    def restore_from(self, folder: Path, parallel: ParallelModel, loader: PackedShardLoader) -> int:
        """Load the checkpoint in `folder` into `parallel` and `loader`, resharding it when this run's
        layout differs from the one that wrote it; return the step to start at."""
        groups = parallel.groups
        meta = read_meta(folder)
        changed = check_resumable(meta, self.identity, tensor_parallel=groups.tp, data_parallel=groups.dp,
                                  context_parallel=groups.cp)
        if changed and groups.rank == 0:
            print(f"[{meta.stage}] resuming from step {meta.step} with settings changed: "
                  + ", ".join(f"{n} {old!r} -> {new!r}" for n, (old, new) in changed.items()), flush=True)
        old_layout = layout_name(meta.tensor_parallel, meta.context_parallel, meta.data_parallel)
        new_layout = layout_name(groups.tp, groups.cp, groups.dp)
        if not needs_reshard(meta, self.identity, tensor_parallel=groups.tp, data_parallel=groups.dp,
                             context_parallel=groups.cp):
            parallel.engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        else:
            if groups.rank == 0:
                old_zero = _zero_in_effect(meta.training.get(ZERO_STAGE, "?"), meta.data_parallel,
                                           meta.context_parallel)
                print(f"[{meta.stage}] resharding the checkpoint of step {meta.step} from {old_layout} (ZeRO-"
                      f"{old_zero}) to {new_layout} (ZeRO-{parallel.zero_stage}): weights and optimizer state",
                      flush=True)
            load_universal_state(folder, parallel, self.model_config)
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
        """Every rank writes its part of the checkpoint (`write`); Ray Train then registers the folder."""
        target, meta = self.write(step, parallel, loader, tokens_per_step)
        report = {**metrics, **{k: v for k, v in dataclasses.asdict(meta).items()
                                if k not in ("data", "training", "universal_state")}}
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(target.folder)),
                         **target.report_options)

    def write(self, step: int, parallel: ParallelModel, loader: PackedShardLoader, tokens_per_step: int,
              target: CheckpointTarget | None = None) -> tuple[CheckpointTarget, CheckpointMeta]:
        """Every rank writes its DeepSpeed shard and (unless `checkpoint.reshardable` is false) its universal
        state into the step's folder (`target`, by default `checkpoint_storage.checkpoint_target`); return
        where, and the metadata.

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
            context_parallel=groups.cp,
            run_id=self.identity.run_id,
            data=loader.state_dict(),
            training=dict(self.identity.training),
            universal_state=self.policy.reshardable,
        )
        if engine.zero_optimization_stage() == 3:
            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                full_weights = gather_state_dict(model, self.model_config, groups)
        else:
            full_weights = gather_state_dict(model, self.model_config, groups)
        # In place under the run's storage (a shared filesystem) and registered without a copy (an 8B
        # model's checkpoint is ~100 GB); on an object store, each rank's scratch folder is uploaded
        # (checkpoint_storage.py). Either way, what an attempt that died left there is cleared first.
        target = target or checkpoint_target(self.root, step, groups.rank)
        prepare_folder(target)
        dist.barrier()
        engine.save_checkpoint(str(target.folder), tag=DEEPSPEED_TAG)
        if self.policy.reshardable:  # what a resume with other degrees or ZeRO stage loads
            save_universal_state(target.folder, parallel)
        if groups.rank == 0:
            save_rank_zero_files(target.folder, meta, self.model_config, full_weights)
        dist.barrier()
        return target, meta
