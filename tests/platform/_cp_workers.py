"""Worker functions for the context-parallel tests, run in gloo processes started by `_tp_workers.launch`.

Each parity worker writes what it computed (loss, full gradients, global norm) for the test
process to compare with a single-process reference, so that the same comparison can be shown to
fail on a deliberately broken run.

Legend: B batch, L length, Ls = L / cp.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist
from _tp_workers import RunSpec, debug_config, fresh_model, gather_grads, packed_batch
from forge_data import IGNORE_INDEX
from forge_models import ModelConfig, language_model_loss, weight_decay_groups

from forge_platform.config_sections import OptimConfig, TrainConfig
from forge_platform.parallel import (
    ModelParallelUnit,
    ParallelDims,
    ParallelGroups,
    build_loss_fn,
    build_process_groups,
    check_tp_batch,
    global_grad_norm,
    parallelize_model,
)
from forge_platform.parallel import context_parallel, tensor_parallel
from forge_platform.parallel.context_parallel import apply_context_parallel, shard_batch
from forge_platform.training.deepspeed_config import build_deepspeed_config

BATCH, LENGTH = 2, 24  # packed_batch's documents: [0, 9) [9, 19) [19, 24): the middle one crosses L/2


def cp_config() -> ModelConfig:
    """hybrid-debug (Mamba-2, attention, MLP) split 4 ways: 4 Mamba-2 groups, GQA 8 heads / 4 KV
    groups, and RoPE on, so global positions matter."""
    cfg = debug_config("hybrid-debug")
    return dataclasses.replace(
        cfg, mamba2=dataclasses.replace(cfg.mamba2, ngroups=4),
        attention=dataclasses.replace(cfg.attention, num_heads=8, num_kv_groups=4, head_dim=8, rope=True))


def cp_batch() -> dict[str, torch.Tensor]:
    """The packed rows every test uses (the same on every rank)."""
    return packed_batch(cp_config(), BATCH, LENGTH, seed=7)


def reference_result() -> dict[str, torch.Tensor]:
    """One process, the whole rows: loss, every gradient, global gradient norm."""
    model = fresh_model(cp_config())
    batch = cp_batch()
    loss = language_model_loss(model(batch["input_ids"], seq_idx=batch["seq_idx"],
                                     position_ids=batch["position_ids"]), batch["labels"])
    loss.backward()
    grads = {f"grad/{n}": p.grad.detach().clone() for n, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    return {"loss": loss.detach(), "grad_norm": norm, **grads}


def split_edge_at_shards(seq_idx_BLs: torch.Tensor | None, position_ids_BLs: torch.Tensor | None,
                         group: dist.ProcessGroup) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The deliberate break: each shard's documents get ids of their own, so a document crossing a
    shard edge restarts there (state and attention reset at the edge), which is what a
    sequence-sharded scan without state passing computes. Positions stay right."""
    seq_idx, positions = context_parallel._gather_sequence_raw(seq_idx_BLs, group), \
        context_parallel._gather_sequence_raw(position_ids_BLs, group)
    shard = seq_idx_BLs.shape[1]
    offsets = torch.arange(seq_idx.shape[1]) // shard * 1000
    return seq_idx + offsets.to(seq_idx.dtype), positions


def cp_parity_worker(rank: int, world_size: int, layouts: list[tuple[str, int, int, bool]], out_dir: str) -> None:
    """Per layout (label, tp, cp, sequence_parallel), tp x cp ranks on the same rows (dp 1): loss, full
    gradients and norm to out_dir/<label>.pt (rank 0). Deliberate breaks, by label: "broken-cp..."
    runs with `split_edge_at_shards` in place of the CP gather of seq_idx; "broken-sp..." leaves the
    norm weights' gradients unsummed over TP (each rank's holds its tokens' share only)."""
    for label, tp, cp, sequence_parallel in layouts:
        groups = build_process_groups(ParallelDims(tp=tp, cp=cp, dp=1, world_size=world_size))
        gather, sum_hook = context_parallel.gather_row_ids, tensor_parallel._sum_grad_over_tp_hook
        if label.startswith("broken-cp"):
            context_parallel.gather_row_ids = split_edge_at_shards
        if label.startswith("broken-sp"):
            tensor_parallel._sum_grad_over_tp_hook = lambda group: (lambda grad: grad)
        try:
            _parity_run(rank, groups, label, sequence_parallel, out_dir)
        finally:
            context_parallel.gather_row_ids, tensor_parallel._sum_grad_over_tp_hook = gather, sum_hook


def _parity_run(rank: int, groups: ParallelGroups, label: str, sequence_parallel: bool, out_dir: str) -> None:
    """One layout's loss, gradients and norm on cp_batch(), as the reference computes them."""
    cp = groups.cp
    if cp > 1 and not label.startswith("broken"):
        _check_cp_rows_checked(groups)
    cfg = cp_config()
    model = parallelize_model(fresh_model(cfg), groups, sequence_parallel=sequence_parallel)
    assert apply_context_parallel(model, groups) == (4 if cp > 1 else 0)  # M+M*+M+: 3 Mamba-2, 1 attention
    batch = shard_batch(cp_batch(), groups.cp_rank, cp)
    assert batch["input_ids"].shape == (BATCH, LENGTH // cp)
    if sequence_parallel:  # the residual stream really is sharded: 1/tp of the rank's tokens
        with torch.no_grad():
            assert model.embedding(batch["input_ids"]).shape[1] == LENGTH // cp // groups.tp
    count = (batch["labels"] != IGNORE_INDEX).sum()
    total = count.clone()
    if cp > 1:
        dist.all_reduce(total, group=groups.cp_group)
    logits = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
    # The shard's share of the rows' per-token mean: its mean times its share of the labels.
    loss = build_loss_fn(groups)(logits, batch["labels"]) * count / total
    loss.backward()
    # CP ranks hold whole weights: the rows' gradient is the sum of the ranks' (slices for the
    # mixers, shard contributions elsewhere), what the replica all-reduce does in training.
    whole_loss = loss.detach().clone()
    if cp > 1:
        for param in model.parameters():
            dist.all_reduce(param.grad, group=groups.cp_group)
        dist.all_reduce(whole_loss, group=groups.cp_group)
    norm = global_grad_norm(model, groups)
    grads = gather_grads(model, cfg, groups)
    if rank == 0:
        result = {"loss": whole_loss, "grad_norm": norm, **{f"grad/{n}": g for n, g in grads.items()}}
        torch.save(result, Path(out_dir) / f"{label}.pt")


def _check_cp_rows_checked(groups: ParallelGroups) -> None:
    """check_tp_batch passes CP peers holding the same rows and names the key when they do not."""
    batch = cp_batch()
    check_tp_batch(batch, groups)
    if groups.cp_rank == 1:
        batch["labels"] = batch["labels"].roll(1, dims=1)
    try:
        check_tp_batch(batch, groups)
    except RuntimeError as err:
        assert "context-parallel ranks" in str(err) and "labels" in str(err), err
    else:
        raise AssertionError("check_tp_batch accepted different rows on CP peers")


def cp_deepspeed_worker(rank: int, world_size: int, cp: int, zero_stage: int, spec: RunSpec, out_dir: str) -> None:
    """cp x dp ranks under DeepSpeed ZeRO, weighted as the trainer weights micro-batches: per-step
    loss and grad norm, and the final weights (rank 0)."""
    import deepspeed

    from forge_platform.training.trainer import token_weights  # Ray and more: only this worker needs it

    dims = ParallelDims.from_world(world_size, tp=1, cp=cp)
    groups = build_process_groups(dims)
    cfg = debug_config(spec.preset)
    model = fresh_model(cfg)
    apply_context_parallel(model, groups)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.95))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, mpu=ModelParallelUnit(groups), dist_init_required=False,
        config=build_deepspeed_config(TrainConfig(micro_batch_size=spec.micro_batch, zero_stage=zero_stage),
                                      OptimConfig(lr=spec.lr, grad_clip=spec.clip), dims.replicas),
    )
    assert engine.dp_world_size == dims.replicas  # DeepSpeed averages over dp x cp
    losses, norms = [], []
    for step in range(spec.steps):
        rows = slice(groups.dp_rank * spec.micro_batch, (groups.dp_rank + 1) * spec.micro_batch)
        whole_rows = {k: v[rows] for k, v in spec.global_batch(step, dims.dp).items()}
        batch = shard_batch(whole_rows, groups.cp_rank, cp)
        count = int((batch["labels"] != IGNORE_INDEX).sum())
        (weight,), total = token_weights([count], 1, groups, torch.device("cpu"))
        loss = model.loss(batch["input_ids"], batch["labels"], seq_idx=batch["seq_idx"],
                          position_ids=batch["position_ids"])
        engine.backward(loss * weight)
        engine.step()
        loss_sum = loss.detach() * count
        dist.all_reduce(loss_sum, group=groups.replica_group)
        losses.append(float(loss_sum / total))
        norms.append(float(engine.get_global_grad_norm()))
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out_dir) / "weights.pt")
        (Path(out_dir) / "results.json").write_text(json.dumps({"losses": losses, "grad_norms": norms}))
    engine.destroy()

