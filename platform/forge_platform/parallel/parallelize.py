"""The one place where a single-device model is made ready to train in parallel.

`parallelize_hybrid` applies, on every rank and in this order (each step needs the one before):

1. Tensor parallelism: slice the full weights in place and hook the TP collectives around every
   mixer (`tensor_parallel.parallelize_model`). Needs the full weights already loaded, identical
   on every TP rank. With sequence parallelism the residual stream between the mixers is
   sharded along the sequence over the TP group too (the same hooks, other collectives).
2. Context parallelism (cp > 1): every Mamba-2 and attention mixer runs whole rows for its
   share of heads between an all-gather and a reduce-scatter along the sequence over the CP
   group (`context_parallel.apply_context_parallel`); everything else runs on the rank's
   sequence shard. After TP (it slices the TP slice) and before recompute (the recomputed
   forward must run the CP collectives again). The trainer cuts each rank's shard of the rows
   (`context_parallel.shard_batch`). At cp 1 nothing is installed.
3. Activation recompute: the blocks the stage's mode recomputes (every block, or every block but
   attention) are wrapped so their activations are recomputed in the backward pass. After TP,
   so the recomputed forward runs the TP hooks again. The mode is concrete here: `auto` is
   resolved by the memory plan before (memory_plan.py).
4. Compilation: nothing to apply here. forge_models compiles its own pointwise kernels inside
   each module (`ModelConfig.compile_pointwise`), and a module that carries TP hooks calls its
   submodules instead of a fused kernel, so compiling never skips a collective.
5. The optimizer over the local slices (after TP: it must see the sliced parameters) and its
   schedule, then the DeepSpeed ZeRO engine over the data-parallel group.

Nothing else in the platform slices, wraps or wraps-into-an-engine a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
from forge_models import LanguageModel
from torch import nn

from forge_platform.config_sections import StageConfig
from forge_platform.parallel.context_parallel import apply_context_parallel
from forge_platform.parallel.recompute import apply_recompute
from forge_platform.parallel.cross_entropy import build_loss_fn
from forge_platform.parallel.groups import ParallelGroups
from forge_platform.parallel.mpu import ModelParallelUnit
from forge_platform.parallel.tensor_parallel import parallelize_model
from forge_platform.training.deepspeed_config import build_deepspeed_config
from forge_platform.training.optimizer import build_optimizer, build_schedule

Batch = dict[str, torch.Tensor]


@dataclass
class ParallelModel:
    """A model after `parallelize_hybrid`: the module, its engine, and how to take its loss."""

    module: nn.Module
    """The (sliced, recompute-wrapped) model itself: call it, not `engine(...)` (see `loss`)."""
    engine: Any
    """DeepSpeed's engine: backward, step, checkpoints, learning rate."""
    groups: ParallelGroups
    zero_stage: int
    """The ZeRO stage in effect (0 when there is a single data-parallel rank)."""
    loss: Callable[[Batch], torch.Tensor]
    """Mean next-token loss of one packed micro-batch over its counted labels."""


def effective_zero_stage(stage: StageConfig, groups: ParallelGroups) -> int:
    """ZeRO shards over the replica ranks (dp x cp, DeepSpeed's data-parallel group): with one there
    is nothing to shard, and its buffers cost time and memory (benchmarks/platform/RESULTS.md), so
    it runs as stage 0."""
    return stage.train.zero_stage if groups.replicas > 1 else 0


def parallelize_hybrid(model: LanguageModel, groups: ParallelGroups, stage: StageConfig, *,
                       tokens_per_step: int, sequence_parallel: bool = False) -> ParallelModel:
    """Apply TP (with sequence parallelism if asked), CP, recompute and the ZeRO engine to `model`
    (full weights loaded) for one stage."""
    train = stage.train
    # 1. Tensor parallelism (a tagged no-op at tp 1), sequence-parallel outside the mixers if asked.
    if groups.tp > 1:
        if sequence_parallel and (stage.seq_len // groups.cp) % groups.tp:
            raise ValueError(f"stage {stage.name!r}: seq_len = {stage.seq_len} / context_parallel {groups.cp} is not "
                             f"divisible by parallel.tensor_parallel = {groups.tp} (sequence parallelism)")
        parallelize_model(model, groups, sequence_parallel=sequence_parallel)
    # 2. Context parallelism (nothing installed at cp 1).
    if groups.cp > 1:
        if train.zero_stage == 3:
            # ZeRO-3 gathers each weight in its module's pre-forward hook; the CP mixer slices the
            # weights before its submodules run, so it would slice the empty partitions.
            raise ValueError(f"train.zero_stage = 3 with parallel.context_parallel = {groups.cp}: "
                             "context parallelism supports ZeRO stages 0-2")
        if stage.seq_len % groups.cp:
            raise ValueError(f"stage {stage.name!r}: seq_len = {stage.seq_len} is not divisible by "
                             f"parallel.context_parallel = {groups.cp}")
        apply_context_parallel(model, groups)
    # 3. Activation recompute.
    apply_recompute(model, train.recompute)
    # 4. Compilation: inside forge_models (see the module docstring).
    # 5. Optimizer over the local slices, then the ZeRO engine.
    optimizer = build_optimizer(model, stage.optim)
    schedule = build_schedule(optimizer, stage.optim, tokens_per_step, train.steps)
    zero_stage = effective_zero_stage(stage, groups)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=build_deepspeed_config(dataclasses.replace(train, zero_stage=zero_stage), stage.optim,
                                      groups.replicas),
        mpu=ModelParallelUnit(groups),
        dist_init_required=False,
    )
    if groups.replicas == 1:
        # DeepSpeed's stage-0 backward all-reduces over the data-parallel group even when it has
        # one rank: it flattens every gradient into buckets, scales, and copies them back (its cost is
        # in benchmarks/platform/RESULTS.md). With one data-parallel rank there is nothing to reduce.
        if not hasattr(engine, "enable_backward_allreduce"):
            raise RuntimeError("this DeepSpeed has no engine.enable_backward_allreduce; check the pin in pyproject.toml")
        engine.enable_backward_allreduce = False
    return ParallelModel(model, engine, groups, zero_stage, _build_batch_loss(model, engine, groups, zero_stage))


def _build_batch_loss(model: nn.Module, engine: Any, groups: ParallelGroups,
                      zero_stage: int) -> Callable[[Batch], torch.Tensor]:
    """The loss of one packed micro-batch, by the cheapest path the layout allows."""
    token_loss = build_loss_fn(groups)  # full cross-entropy at tp 1, vocab-parallel above

    def batch_loss(batch: Batch) -> torch.Tensor:
        ids, seq_idx, positions = batch["input_ids"], batch["seq_idx"], batch["position_ids"]
        if zero_stage == 3:
            # What DeepSpeed's engine.forward does first and a direct module call skips: at stage 3
            # it advances the optimizer's micro-step, without which every micro-batch's gradient
            # partition replaced the previous one (accumulation kept only the last micro-batch).
            engine.optimizer.clear_backward_seen_flag()
        if groups.tp == 1 and zero_stage < 3:
            # Chunked LM head + cross-entropy: the (B, L, V) logits are never materialised. (Not
            # under ZeRO-3, whose partitioned LM head is only gathered by a module call.)
            return model.loss(ids, batch["labels"], seq_idx=seq_idx, position_ids=positions)
        # The module itself, not `engine(...)`: DeepSpeed's forward turns our bf16 autocast off
        # (its own mixed precision is off, see deepspeed_config.py), which ran TP=2 in fp32.
        return token_loss(model(ids, seq_idx=seq_idx, position_ids=positions), batch["labels"])

    return batch_loss
