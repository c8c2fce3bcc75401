"""Worker functions for the resharding tests (gloo processes started by `_tp_workers.launch`).

Each run trains the debug hybrid through the platform's own pieces: `parallelize_hybrid` (TP,
AdamW, the schedule, the DeepSpeed ZeRO engine), the real packed-shard loader, the trainer's
per-token loss weights and stage-0 clipping, and the `CheckpointManager` that writes and restores
the checkpoint. A run writes its step results as JSON and its final weights (rank 0).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from forge_data import IGNORE_INDEX, PackedShardLoader
from forge_models import ModelConfig, build_model

from forge_platform.config_loader import config_hash
from forge_platform.config_sections import CheckpointConfig, OptimConfig, StageConfig, TrainConfig
from forge_platform.parallel import ParallelDims, build_process_groups, gather_state_dict
from forge_platform.parallel.context_parallel import shard_batch
from forge_platform.parallel.groups import ParallelGroups
from forge_platform.parallel.parallelize import ParallelModel, parallelize_hybrid
from forge_platform.training import universal_checkpoint
from forge_platform.training.checkpoint_manager import CheckpointManager, RunIdentity, training_hash, training_settings
from forge_platform.training.checkpoint_storage import CheckpointTarget
from forge_platform.training.trainer import clip_gradients, token_weights

from _tp_workers import debug_config

SEQ_LEN = 64  # the packed_data fixture's rows
SAVE_AT = 2
"""The checkpoint is written after this step; the step after it is compared."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """One run's parallel degrees and batch shape (the global batch micro x accum x dp is the same)."""

    tp: int
    dp: int
    micro: int
    accum: int
    zero_stage: int = 2
    cp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.dp


def model_config(vocab_size: int) -> ModelConfig:
    """The debug hybrid (Mamba-2, attention, MLP) in fp32 on the reference kernels, at the data's vocabulary."""
    return dataclasses.replace(debug_config("hybrid-debug"), vocab_size=vocab_size)


def stage_config(layout: Layout) -> StageConfig:
    """Four steps of warmup then cosine (the schedule moves every step); clipping engages."""
    return StageConfig(
        name="reshard", seq_len=SEQ_LEN,
        train=TrainConfig(steps=4, micro_batch_size=layout.micro, grad_accum_steps=layout.accum,
                          zero_stage=layout.zero_stage, recompute="none", seed=5),
        optim=OptimConfig(lr=2e-3, min_lr=2e-4, warmup_tokens=SEQ_LEN * 4, grad_clip=0.5),
        checkpoint=CheckpointConfig(every_steps=SAVE_AT),
    )


def _build(layout: Layout, cfg: ModelConfig, groups: ParallelGroups, seed: int) -> tuple[ParallelModel, StageConfig]:
    stage = stage_config(layout)
    torch.manual_seed(seed)  # a resumed run starts from other weights: the checkpoint must replace them
    parallel = parallelize_hybrid(build_model(cfg), groups, stage,
                                  tokens_per_step=layout.micro * layout.accum * layout.dp * SEQ_LEN)
    return parallel, stage


def _manager(stage: StageConfig, cfg: ModelConfig, root: Path) -> CheckpointManager:
    identity = RunIdentity(stage=stage.name, model_hash=config_hash(cfg), training_hash=training_hash(stage),
                           training=training_settings(stage))
    return CheckpointManager(stage.checkpoint, root, identity, stage.train.steps, cfg)


def _train_step(parallel: ParallelModel, loader: PackedShardLoader, accum: int) -> dict[str, float]:
    """The trainer's step (`Trainer.train_step`): per-token weights, stage-0 clipping, the step's loss."""
    groups, engine = parallel.groups, parallel.engine
    micro_batches = [loader.next_batch() for _ in range(accum)]
    if groups.cp > 1:  # CP peers read the same rows; each keeps its sequence shard
        micro_batches = [shard_batch(mb, groups.cp_rank, groups.cp) for mb in micro_batches]
    counts = [int((mb["labels"] != IGNORE_INDEX).sum()) for mb in micro_batches]
    weights, labels = token_weights(counts, accum, groups, torch.device("cpu"))
    loss_sum, grad_norm = torch.zeros(()), None
    for batch, count, weight in zip(micro_batches, counts, weights):
        loss = parallel.loss(batch)
        engine.backward(loss * weight)
        if parallel.zero_stage == 0 and engine.is_gradient_accumulation_boundary():
            grad_norm = clip_gradients(parallel.module, groups, 0.5)
        engine.step()
        loss_sum += loss.detach() * count
    if groups.replicas > 1:
        dist.all_reduce(loss_sum, group=groups.replica_group)
    norm = grad_norm if grad_norm is not None else engine.get_global_grad_norm()
    return {"loss": float(loss_sum) / float(labels), "grad_norm": float(norm), "lr": engine.get_lr()[0]}


def _finish(parallel: ParallelModel, cfg: ModelConfig, results: dict[str, Any], out: Path, name: str) -> None:
    if parallel.zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(parallel.module.parameters())):
            weights = gather_state_dict(parallel.module, cfg, parallel.groups)
    else:
        weights = gather_state_dict(parallel.module, cfg, parallel.groups)
    if dist.get_rank() == 0:
        torch.save(weights, out / f"{name}.weights.pt")
        (out / f"{name}.json").write_text(json.dumps(results))
    parallel.engine.destroy()


def _layout_groups(layout: Layout) -> ParallelGroups:
    return build_process_groups(ParallelDims(tp=layout.tp, cp=layout.cp, dp=layout.dp, world_size=layout.world))


def save_then_continue_worker(rank: int, world_size: int, layouts: dict[str, Layout], manifest: str,
                              vocab_size: int, out_dir: str) -> None:
    """The uninterrupted runs, one per {source: layout} (same degrees): SAVE_AT steps, a checkpoint
    (`checkpoint_<source>`), then one more step (the reference, `uninterrupted_<source>`)."""
    cfg, out = model_config(vocab_size), Path(out_dir)
    groups = _layout_groups(next(iter(layouts.values())))
    for source, layout in layouts.items():
        parallel, stage = _build(layout, cfg, groups, seed=stage_config(layout).train.seed)
        loader = PackedShardLoader(manifest, micro_batch_size=layout.micro, dp_rank=groups.dp_rank,
                                   dp_size=groups.dp, shuffle_seed=stage.train.seed)
        steps = [_train_step(parallel, loader, layout.accum) for _ in range(SAVE_AT)]
        target = CheckpointTarget(out / f"checkpoint_{source}", rank == 0, {})
        _manager(stage, cfg, out).write(SAVE_AT, parallel, loader, layout.micro * layout.accum * groups.dp * SEQ_LEN,
                                        target=target)
        steps.append(_train_step(parallel, loader, layout.accum))
        _finish(parallel, cfg, {"steps": steps, "samples_after": loader.samples_consumed}, out,
                f"uninterrupted_{source}")


def resume_worker(rank: int, world_size: int, runs: list[tuple[str, str, Layout, str]], manifest: str,
                  vocab_size: int, out_dir: str) -> None:
    """Per (name, source, layout, break) in `runs`: resume `checkpoint_<source>` and train the next step.

    break "none" is the real resume; "moments" drops the Adam moments while resharding (they stay
    zero), "tp_order" puts the old TP slices together in reverse order: both must fail the comparison.
    """
    cfg, out = model_config(vocab_size), Path(out_dir)
    layouts: dict[tuple[int, int, int], ParallelGroups] = {}  # process groups, made once per layout
    for name, source, layout, broken in runs:
        degrees = (layout.tp, layout.cp, layout.dp)
        groups = layouts[degrees] = layouts.get(degrees) or _layout_groups(layout)
        parallel, stage = _build(layout, cfg, groups, seed=999)
        loader = PackedShardLoader(manifest, micro_batch_size=layout.micro, dp_rank=groups.dp_rank,
                                   dp_size=groups.dp, shuffle_seed=stage.train.seed)
        with _deliberate_break(broken):
            start = _manager(stage, cfg, out).restore_from(out / f"checkpoint_{source}", parallel, loader)
        assert start == SAVE_AT, start
        step = _train_step(parallel, loader, layout.accum)
        _finish(parallel, cfg, {"steps": [step], "samples_after": loader.samples_consumed}, out, name)


class _deliberate_break:
    """Patch the reshard for one restore (a context manager), to show the comparison catches it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        if self.kind == "moments":
            original = universal_checkpoint._set_parameter
            self.saved["_set_parameter"] = original
            universal_checkpoint._set_parameter = lambda parallel, param, base, values: original(
                parallel, param, base, {universal_checkpoint.MASTER: values[universal_checkpoint.MASTER]})
        elif self.kind == "tp_order":
            original = universal_checkpoint._FullState.full
            self.saved["full"] = original

            def reversed_slices(state: Any, name: str, key: str) -> torch.Tensor:
                full = original(state, name, key)
                dim = state.dims[name]
                if dim is None or state.old_tp == 1:
                    return full
                return torch.cat(list(reversed(full.chunk(state.old_tp, dim=dim))), dim=dim)

            universal_checkpoint._FullState.full = reversed_slices
        elif self.kind != "none":
            raise ValueError(f"unknown break {self.kind!r}")

    def __exit__(self, *exc: object) -> None:
        if "_set_parameter" in self.saved:
            universal_checkpoint._set_parameter = self.saved["_set_parameter"]
        if "full" in self.saved:
            universal_checkpoint._FullState.full = self.saved["full"]
