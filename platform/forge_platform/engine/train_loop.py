"""The per-worker training loop that Ray Train runs on every rank.

Ray Train has already made the process group (gloo on CPU, NCCL on GPU); DeepSpeed reuses it.
Every rank builds the same model from the same seed, reads its data-parallel share of the packed
shards, and at each checkpoint writes its own DeepSpeed shard before `ray.train.report` gathers
the folder. Rank 0 alone logs to the tracking backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointUploadMode
from forge_data import IGNORE_INDEX, PackedShardLoader
from forge_models import ModelConfig, build_model
from forge_models.flops import training_flops_per_token

from forge_platform.config import config_hash
from forge_platform.engine.checkpoint import (
    DEEPSPEED_TAG,
    CheckpointMeta,
    check_resumable,
    load_weights,
    read_meta,
    save_rank_zero_files,
)
from forge_platform.engine.deepspeed_config import build_deepspeed_config
from forge_platform.engine.optimizer import build_optimizer, build_schedule
from forge_platform.engine.throughput import measure_matmul_flops
from forge_platform.parallel import (
    ModelParallelUnit,
    ParallelDims,
    ParallelGroups,
    build_loss_fn,
    build_process_groups,
    gather_state_dict,
    global_grad_norm,
    parallelize_model,
)
from forge_platform.parallel.activation_checkpointing import apply_activation_checkpointing
from forge_platform.tracking.loggers import build_logger
from forge_platform.training_config import ParallelConfig, StageConfig


@dataclass
class StageRun:
    """Everything a worker needs to run one stage; pickled to every rank by Ray."""

    stage: StageConfig
    model: ModelConfig
    parallel: ParallelConfig
    train_manifest: str
    """manifest.json of the packed training shards."""
    tracking_backend: str = "console"
    tracking_uri: str = ""
    run_id: str = ""
    system_metrics_interval_s: float = 0.0
    """Rank 0 samples system metrics into the MLflow run this often (0: never)."""
    init_weights: str = ""
    """Consolidated weights (model.pt or its folder) to start from; empty for a fresh model."""
    checkpoint_root: str = ""
    """Folder the checkpoints are written into (set by `run_stage`: the Ray run's storage folder,
    which must be a filesystem every node shares)."""
    crash_after_step: int = 0
    """Failure drill: the last rank exits abruptly once, after this step and before its checkpoint
    (a marker file in `crash_marker_dir` records that it happened); 0 never crashes."""
    crash_marker_dir: str = ""
    """Where the failure drill leaves its marker; it must outlive the worker (shared storage)."""

    @property
    def config_hash(self) -> str:
        return config_hash(self.stage)

    @property
    def model_hash(self) -> str:
        return config_hash(self.model)


def train_stage_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `config["run"]` is a `StageRun`."""
    run: StageRun = config["run"]
    stage, train = run.stage, run.stage.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if run.parallel.use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(run.parallel.cpus_per_worker)))
    # Every rank makes every group, in the same order; tensor-parallel groups are consecutive ranks.
    groups = build_process_groups(ParallelDims.from_world(world, run.parallel.tensor_parallel))
    tp, dp = groups.tp, groups.dp

    # The fixed order: build (same seed everywhere) -> full weights -> tensor parallelism ->
    # activation checkpointing -> optimizer over the local slices -> the ZeRO engine.
    torch.manual_seed(train.seed)
    model = build_model(run.model, device=device)
    if run.init_weights:
        load_weights(model, run.init_weights)
    if tp > 1:
        parallelize_model(model, groups)
    if train.activation_checkpointing:
        apply_activation_checkpointing(model)
    optimizer = build_optimizer(model, stage.optim)
    tokens_per_step = train.micro_batch_size * train.grad_accum_steps * dp * stage.seq_len
    schedule = build_schedule(optimizer, stage.optim, tokens_per_step, train.steps)
    zero_stage = train.zero_stage if dp > 1 else 0
    if zero_stage != train.zero_stage and rank == 0:
        # ZeRO shards over data-parallel ranks: with one there is nothing to shard, and its
        # buffers cost 22% of step time and 11 GiB on one H100 (benchmarks/platform/RESULTS.md).
        print(f"[{stage.name}] one data-parallel rank: ZeRO-{train.zero_stage} runs as stage 0", flush=True)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=build_deepspeed_config(dataclasses.replace(train, zero_stage=zero_stage), stage.optim, dp),
        mpu=ModelParallelUnit(groups),
        dist_init_required=False,
    )
    if dp == 1:
        # DeepSpeed's stage-0 backward all-reduces over the data-parallel group even when it has
        # one rank: it flattens every gradient into 2 GB buckets, scales, and copies them back
        # (about 3% of a step on one H100). With one data-parallel rank there is nothing to reduce.
        if not hasattr(engine, "enable_backward_allreduce"):
            raise RuntimeError("this DeepSpeed has no engine.enable_backward_allreduce; check the pin in pyproject.toml")
        engine.enable_backward_allreduce = False
    loss_fn = build_loss_fn(groups)  # full cross-entropy at tp 1, vocab-parallel above

    def compute_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, seq_idx, positions = batch["input_ids"], batch["seq_idx"], batch["position_ids"]
        if tp == 1 and zero_stage < 3:
            # Chunked LM head + cross-entropy: the (B, L, V) logits are never materialised. (Not
            # under ZeRO-3, whose partitioned LM head is only gathered by a module call.)
            return model.loss(ids, batch["labels"], seq_idx=seq_idx, position_ids=positions)
        # The module itself, not `engine(...)`: DeepSpeed's forward turns our bf16 autocast off
        # (its own mixed precision is off, see deepspeed_config.py), which ran TP=2 in fp32.
        return loss_fn(model(ids, seq_idx=seq_idx, position_ids=positions), batch["labels"])

    start_step, samples_consumed = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            meta = read_meta(Path(folder))
            check_resumable(meta, model_hash=run.model_hash, tensor_parallel=tp, data_parallel=dp)
            engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
            start_step, samples_consumed = meta.step, meta.samples_consumed

    loader = PackedShardLoader(
        run.train_manifest,
        micro_batch_size=train.micro_batch_size,
        dp_rank=groups.dp_rank,
        dp_size=dp,
        start_sample=samples_consumed,
        shuffle_seed=train.seed,
    )
    batches = iter(loader)
    logger = build_logger(run.tracking_backend, rank, run.tracking_uri, run.run_id, prefix=f"[{stage.name}] ",
                          system_metrics_interval_s=run.system_metrics_interval_s)
    flops_per_step = training_flops_per_token(run.model, stage.seq_len) * tokens_per_step
    peak_flops = run.parallel.peak_tflops * 1e12 or measure_matmul_flops(device)

    for step in range(start_step, train.steps):
        started = time.perf_counter()
        micro_batches = [next(batches) for _ in range(train.grad_accum_steps)]
        counts = [int((mb["labels"] != IGNORE_INDEX).sum()) for mb in micro_batches]  # on the host
        weights, step_labels = token_weights(counts, train.grad_accum_steps, groups, device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per micro-batch
        grad_norm = None
        for micro_batch, count, weight in zip(micro_batches, counts, weights):
            batch = {k: _to_device(v, device) for k, v in micro_batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16"):
                loss = compute_loss(batch)  # mean over this micro-batch's counted labels
            engine.backward(loss * weight)
            if zero_stage == 0 and engine.is_gradient_accumulation_boundary():
                grad_norm = clip_gradients(model, groups, stage.optim.grad_clip)
            engine.step()
            loss_sum += loss.detach() * count
        if dp > 1:  # each data-parallel rank saw its own rows
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM, group=groups.dp_group)
        step_loss = loss_sum.item() / max(float(step_labels), 1.0)  # the one sync of the step
        elapsed = time.perf_counter() - started
        done = step + 1
        if done % train.log_every == 0 or done == train.steps:
            metrics = {
                "loss": step_loss,
                "lr": engine.get_lr()[0],
                "grad_norm": float(grad_norm if grad_norm is not None else engine.get_global_grad_norm()),
                "tokens_per_s": tokens_per_step / elapsed,
                "memory_gib": _memory_gib(device),
            }
            metrics["mfu"] = flops_per_step / elapsed / (peak_flops * world)
            logger.log(metrics, step=done)
        if done == train.steps and rank == 0:
            # Ray Train's result only carries metrics reported with a checkpoint; a stage run
            # without a final checkpoint (benchmarks, smoke runs) still tells the driver how it ended.
            write_final_metrics(Path(run.checkpoint_root), {"loss": step_loss, "step": done})
        if done == run.crash_after_step and rank == world - 1:
            _crash_once(Path(run.crash_marker_dir))
        if done % stage.checkpoint.every_steps == 0 or (done == train.steps and stage.checkpoint.save_final):
            meta = CheckpointMeta(
                step=done,
                tokens_seen=done * tokens_per_step,
                samples_consumed=loader.samples_consumed,
                stage=stage.name,
                config_hash=run.config_hash,
                model_hash=run.model_hash,
                tensor_parallel=tp,
                data_parallel=dp,
                run_id=run.run_id,
            )
            _save_and_report(engine, model, groups, run, meta, rank, {"loss": step_loss})
    logger.close()


def _save_and_report(engine: Any, model: torch.nn.Module, groups: ParallelGroups, run: StageRun,
                     meta: CheckpointMeta, rank: int, metrics: dict[str, float]) -> None:
    """Every rank writes its DeepSpeed shard into one folder; Ray Train collects and registers it.

    Rank 0 also writes the consolidated single-device weights, gathered across tensor-parallel
    ranks (a collective: every rank takes part), so evaluation and the next stage never depend on
    this run's parallel layout.
    """
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            full_weights = gather_state_dict(model, run.model, groups)
    else:
        full_weights = gather_state_dict(model, run.model, groups)
    # Written in place under the run's storage (a shared filesystem on a cluster) and registered
    # without a copy: an 8B model's checkpoint is ~100 GB. Ray only knows a checkpoint once every
    # rank has reported it, so a folder interrupted mid-write is never taken as the latest.
    folder = Path(run.checkpoint_root) / f"step_{meta.step:08d}"
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)  # a partial write from an attempt that died
        folder.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)
    if rank == 0:
        save_rank_zero_files(folder, meta, run.model, full_weights)
    dist.barrier()
    ray.train.report(
        {**metrics, **dataclasses.asdict(meta)},
        checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
        checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
    )


FINAL_METRICS_FILE = "final_metrics.json"


def write_final_metrics(folder: Path, metrics: dict[str, float]) -> None:
    """Atomically write the stage's last metrics beside its checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (FINAL_METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics))
    tmp.replace(folder / FINAL_METRICS_FILE)


def token_weights(counts: list[int], accum: int, groups: ParallelGroups, device: torch.device
                  ) -> tuple[list[float] | list[torch.Tensor], int | torch.Tensor]:
    """Multipliers that make a step's gradient the gradient of its per-token mean loss, whatever
    the layout; and the step's number of counted labels N over all data-parallel ranks.

    Each micro-batch's loss is the mean over its own c_i counted labels (documents end with an
    ignored label, so rows count differently). DeepSpeed divides every backward by the
    accumulation steps and averages gradients over the data-parallel ranks, so a mean of means
    would weight tokens by how the rows happened to be grouped: 2 rows x 2 accumulation steps on
    one GPU and 2 rows on each of 2 GPUs group the same 4 rows differently. Weighting micro-batch
    i by c_i * accum * dp / N makes every layout compute sum(token losses) / N. With dp > 1, N
    is one all-reduce of a scalar, kept on the device (no sync)."""
    total: int | torch.Tensor = sum(counts)
    denominator: int | torch.Tensor = max(total, 1)
    if groups.dp > 1:
        total = torch.tensor(float(total), device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=groups.dp_group)
        denominator = total.clamp(min=1.0)
    return [c * accum * groups.dp / denominator for c in counts], total


def clip_gradients(model: torch.nn.Module, groups: ParallelGroups, max_norm: float) -> torch.Tensor:
    """Scale gradients so their global norm (tensor-parallel aware) is at most `max_norm`; return the norm."""
    norm = global_grad_norm(model, groups)
    if max_norm > 0:
        # Multi-tensor scaling, and no `if norm > max_norm`: that would sync with the device.
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm


def _crash_once(marker_dir: Path) -> None:
    """Die like a preempted node would: no exception, no cleanup, no checkpoint."""
    marker = marker_dir / "crashed"
    if marker.exists():
        return
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    print(f"failure drill: rank exits now (marker {marker})", flush=True)
    os._exit(1)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a batch tensor without stalling: a copy from pageable memory waits for the GPU's queue
    to drain; one from pinned memory is queued behind it like a kernel."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is KiB on Linux: the worker process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

