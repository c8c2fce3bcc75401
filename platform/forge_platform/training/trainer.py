"""The per-worker trainer that Ray Train runs on every rank: setup, then one small method per step.

Ray Train has already made the process group (gloo on CPU, NCCL on GPU); DeepSpeed reuses it.
Every rank builds the same model from the same seed, `parallelize_hybrid` applies the layout,
each rank reads its data-parallel share of the packed shards, and the checkpoint manager decides
when to save and whether a checkpoint handed over on a restart may be continued. Rank 0 alone
logs to the tracking backend.

    Trainer(run)            setup: groups, model, parallelize, data, resume, logger
      .fit()                the loop: train_step, log, step hooks, checkpoint
      .train_step(mbs)      one optimizer step over its micro-batches -> StepResult
      .forward_backward_step(mb, weight)   one micro-batch's loss and backward
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from forge_data import IGNORE_INDEX, PackedShardLoader, storage
from forge_data.loader import without_document_resets
from forge_models import ModelConfig, build_model, kernel_path
from forge_models.flops import attention_context, training_flops_per_token

from forge_platform.config_loader import config_hash
from forge_platform.config_sections import ParallelConfig, StageConfig, TrackingConfig
from forge_platform.input_errors import INPUT_ERRORS, TRANSIENT_ERRORS, InputError
from forge_platform.memory_plan import choose_recompute, gpu_capacity, resolve_recompute
from forge_platform.parallel.batch import check_tp_batch
from forge_platform.parallel.context_parallel import shard_batch
from forge_platform.parallel.grad_norm import global_grad_norm
from forge_platform.parallel.groups import ParallelGroups, build_process_groups
from forge_platform.parallel.parallelize import ParallelModel, parallelize_hybrid
from forge_platform.tracking.loggers import build_logger
from forge_platform.training.checkpoint_files import load_weights, write_json
from forge_platform.training.checkpoint_manager import CheckpointManager, RunIdentity, training_hash, training_settings
from forge_platform.training.device_peak import measure_matmul_flops
from forge_platform.training.drills import FailureDrill

Batch = dict[str, torch.Tensor]


@dataclass
class StageRun:
    """Everything a worker needs to run one stage; pickled to every rank by Ray."""

    stage: StageConfig
    model: ModelConfig
    parallel: ParallelConfig
    train_manifest: str
    """manifest.json of the packed training shards."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(backend="console"))
    """Where rank 0 logs (the URI already resolved: a job's local server is started by its session)."""
    run_id: str = ""
    """The MLflow run rank 0 logs into."""
    init_weights: str = ""
    """Consolidated weights (model.pt or its folder) to start from; empty for a fresh model."""
    checkpoint_root: str = ""
    """Folder the checkpoints are written into (set by `run_stage`): the Ray run's storage folder when
    that is a local filesystem (on a cluster, one every node shares), else, when checkpoints go to an
    object store, this node's local scratch folder, from which each rank's checkpoint files are
    uploaded (checkpoint_storage.py)."""
    final_metrics_uri: str = ""
    """Where rank 0 publishes the stage's last metrics (`final_metrics.json`) when checkpoints go to an
    object store (set by `run_stage`: beside them on the store, which the driver reads whatever node rank 0
    ran on); empty: into `checkpoint_root`."""
    drill: FailureDrill | None = None
    """A failure drill to run after each step (tests of fault tolerance); None in real runs."""

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(stage=self.stage.name, model_hash=config_hash(self.model),
                           training_hash=training_hash(self.stage), run_id=self.run_id,
                           training=training_settings(self.stage),
                           may_change=tuple(self.stage.checkpoint.resume_may_change))


@dataclass
class StageTimings:
    """Where a worker's time went, said at the end of the stage: a short stage is mostly set-up and its
    first step (compilation, autotuning), which tokens/s alone does not show."""

    created: float
    ready: float = 0.0
    """When the model was built, parallelized and restored, and the loop began."""
    first_step_s: float = 0.0
    """The first step of this worker: compilation and kernel autotuning happen there."""
    steps_s: float = 0.0
    """Every later step."""
    num_steps: int = 0
    checkpoints_s: float = 0.0

    def step_done(self, seconds: float) -> None:
        if self.num_steps == 0:
            self.first_step_s = seconds
        else:
            self.steps_s += seconds
        self.num_steps += 1

    def describe(self) -> str:
        return (f"set-up {self.ready - self.created:.1f} s, first step {self.first_step_s:.1f} s (compilation, "
                f"autotuning), {self.num_steps - 1} more steps {self.steps_s:.1f} s, checkpoints "
                f"{self.checkpoints_s:.1f} s")


@dataclass
class StepResult:
    """What one optimizer step produced (the loss is the per-token mean over every rank's rows)."""

    loss: float
    grad_norm: torch.Tensor | None
    """The norm this loop clipped with (ZeRO-0); None when DeepSpeed clipped (read from the engine)."""
    seconds: float


FINAL_METRICS_FILE = "final_metrics.json"

KERNEL_PATH_TAG = "forge.kernel_path"
"""The run tag naming the path the Mamba layers took on the workers (CUDA kernels or reference)."""


INPUT_ERROR_FILE = "input_error.json"


def train_stage_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `config["run"]` is a `StageRun`.

    Ray Train retries every worker failure up to `max_failures` times (its failure policy has no
    hook for the kind of error). A failure on the user's input is recorded in the stage's folder
    (this node's: local scratch when checkpoints go to an object store); the retries Ray then makes
    there stop at once, before loading anything. The driver reports the error as one line from the
    exception Ray carries back, wherever the worker ran (`stage_runner.run_stage`, `input_errors`)."""
    run: StageRun = config["run"]
    marker = Path(run.checkpoint_root) / INPUT_ERROR_FILE
    if marker.exists():
        record = json.loads(marker.read_text())
        record["retries_refused"] = record.get("retries_refused", 0) + 1
        write_json(marker, record)
        raise InputError(record["message"])
    try:
        Trainer(run).fit()
    except INPUT_ERRORS as err:
        if not isinstance(err, TRANSIENT_ERRORS):  # a store that did not answer may answer the retry
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_json(marker, {"message": str(err)})
        raise


class Trainer:
    """One stage on one rank."""

    def __init__(self, run: StageRun) -> None:
        self.timings = StageTimings(created=time.perf_counter())
        if run.stage.train.recompute == "auto":  # jobs resolve it on the driver; a direct caller may not
            plan = choose_recompute(run.model, run.stage, run.parallel, capacity=gpu_capacity(run.parallel))
            run = dataclasses.replace(run, stage=resolve_recompute(run.stage, plan))
        self.run = run
        stage, train = run.stage, run.stage.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = torch.device("cuda", ctx.get_local_rank()) if run.parallel.use_gpu else torch.device("cpu")
        torch.set_num_threads(max(1, int(run.parallel.cpus_per_worker)))
        # Every rank makes every group, in the same order; tensor-parallel groups are consecutive ranks.
        self.groups: ParallelGroups = build_process_groups(run.parallel.dims)
        self.tokens_per_step = train.micro_batch_size * train.grad_accum_steps * self.groups.dp * stage.seq_len

        torch.manual_seed(train.seed)  # same weights on every rank
        model = build_model(run.model, device=self.device)
        if run.init_weights:
            load_weights(model, run.init_weights)
        self.parallel: ParallelModel = parallelize_hybrid(model, self.groups, stage,
                                                          tokens_per_step=self.tokens_per_step,
                                                          sequence_parallel=run.parallel.sequence_parallel)
        if self.parallel.zero_stage != train.zero_stage and self.rank == 0:
            print(f"[{stage.name}] one data-parallel rank: ZeRO-{train.zero_stage} runs as stage 0", flush=True)

        self.loader = PackedShardLoader(run.train_manifest, micro_batch_size=train.micro_batch_size,
                                        dp_rank=self.groups.dp_rank, dp_size=self.groups.dp,
                                        shuffle_seed=train.seed)
        self.checkpoints = CheckpointManager(stage.checkpoint, Path(run.checkpoint_root), run.identity,
                                             train.steps, run.model)
        self.start_step = self.checkpoints.restore(self.parallel, self.loader)
        if self.start_step and self.rank == 0:
            print(f"[{stage.name}] resumed at step {self.start_step} from its last checkpoint", flush=True)
        self.logger = build_logger(run.tracking, self.rank, run.run_id, prefix=f"[{stage.name}] ")
        self.record_kernel_path()
        # A restarted worker group trains again the steps after its checkpoint; those an earlier
        # attempt already logged stay as they were (on CPU resume is bitwise: the values are equal).
        self.logged_before = self.logger.logged_steps() if self.start_step else set()
        if self.logged_before and self.rank == 0:
            again = sorted(s for s in self.logged_before if s > self.start_step)
            if again:
                print(f"[{stage.name}] steps {again[0]}-{again[-1]} were logged before the restart: "
                      "trained again, not logged again", flush=True)
        self.peak_flops = run.parallel.peak_tflops * 1e12 or measure_matmul_flops(self.device)
        self.step_hooks: list[Callable[[int], None]] = []
        if run.drill is not None:
            self.step_hooks.append(lambda step: run.drill(step, self.rank, self.world))

    def record_kernel_path(self) -> None:
        """Say which path the Mamba layers take here and record it in the run (`forge.kernel_path`):
        a GPU worker whose kernels fail to import trains correctly on the reference path, several
        times slower, and that must not go unnoticed."""
        if self.rank != 0:
            return
        path, warn = kernel_path(self.run.model.kernels, self.device)
        self.logger.set_tag(KERNEL_PATH_TAG, path)
        if warn:
            print(f"WARNING [{self.run.stage.name}] model.kernels = 'auto' on a GPU, but the Mamba layers run on "
                  f"the slow {path}; install the 'cuda' extra that matches this torch, or set "
                  "model.kernels = 'cuda' to make this an error", file=sys.stderr, flush=True)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the resume point to the last step; log, run hooks and checkpoint after each."""
        train = self.run.stage.train
        batches = iter(self.loader)
        last: StepResult | None = None
        self.timings.ready = time.perf_counter()
        for step in range(self.start_step, train.steps):
            started = time.perf_counter()  # the step's time includes reading its rows
            micro_batches = [next(batches) for _ in range(train.grad_accum_steps)]
            if not train.document_resets:  # plain packing: one stream per row (before the CP cut)
                micro_batches = [without_document_resets(mb) for mb in micro_batches]
            seq_idx = [mb["seq_idx"] for mb in micro_batches if "seq_idx" in mb]  # whole rows, before any CP cut
            if step == self.start_step and self.groups.tp * self.groups.cp > 1:  # TP and CP peers: the same rows
                check_tp_batch({k: _to_device(v, self.device) for k, v in micro_batches[0].items()}, self.groups)
            if self.groups.cp > 1:  # CP peers read the same rows; each keeps its sequence shard
                micro_batches = [shard_batch(mb, self.groups.cp_rank, self.groups.cp) for mb in micro_batches]
            last = self.train_step(micro_batches, started)
            self.timings.step_done(last.seconds)
            done = step + 1
            if (done % train.log_every == 0 or done == train.steps) and done not in self.logged_before:
                # Attention runs within each packed document: MFU counts it per document, not per row.
                context = attention_context(torch.cat(seq_idx)) if seq_idx else float(self.run.stage.seq_len)
                self.logger.log(self.step_metrics(last, context), step=done)
            for hook in self.step_hooks:
                hook(done)
            if self.checkpoints.should_save(done):
                saving = time.perf_counter()
                self.checkpoints.save(done, self.parallel, self.loader, self.tokens_per_step, {"loss": last.loss})
                self.timings.checkpoints_s += time.perf_counter() - saving
        if last is not None and self.rank == 0:
            # Ray Train's result only carries metrics reported with a checkpoint; a stage run
            # without a final checkpoint (benchmarks, smoke runs) still tells the driver how it ended.
            write_final_metrics(final_metrics_location(self.run), {"loss": last.loss, "step": train.steps})
            print(f"[{self.run.stage.name}] time: {self.timings.describe()}", flush=True)
        self.logger.close()

    def train_step(self, micro_batches: list[Batch], started: float) -> StepResult:
        """One optimizer step (begun at `started`): every micro-batch's forward and backward, then the update."""
        train, engine = self.run.stage.train, self.parallel.engine
        counts = [int((mb["labels"] != IGNORE_INDEX).sum()) for mb in micro_batches]  # on the host
        weights, step_labels = token_weights(counts, train.grad_accum_steps, self.groups, self.device)
        loss_sum = torch.zeros((), device=self.device)  # summed on the device: no sync per micro-batch
        grad_norm = None
        for micro_batch, count, weight in zip(micro_batches, counts, weights):
            loss = self.forward_backward_step(micro_batch, weight)
            if self.parallel.zero_stage == 0 and engine.is_gradient_accumulation_boundary():
                grad_norm = clip_gradients(self.parallel.module, self.groups, self.run.stage.optim.grad_clip)
            engine.step()
            loss_sum += loss.detach() * count
        if self.groups.replicas > 1:  # each data-parallel rank saw its own rows, each CP rank its shard
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM, group=self.groups.replica_group)
        step_loss = loss_sum.item() / max(float(step_labels), 1.0)  # the one sync of the step
        return StepResult(loss=step_loss, grad_norm=grad_norm, seconds=time.perf_counter() - started)

    def forward_backward_step(self, micro_batch: Batch, weight: float | torch.Tensor) -> torch.Tensor:
        """The micro-batch's mean loss over its counted labels; its backward is scaled by `weight`."""
        batch = {k: _to_device(v, self.device) for k, v in micro_batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.run.stage.train.precision == "bf16"):
            loss = self.parallel.loss(batch)
        self.parallel.engine.backward(loss * weight)
        return loss

    def step_metrics(self, result: StepResult, context: float) -> dict[str, float]:
        """What is logged for a step: loss, lr, grad norm, throughput, memory, MFU (its attention
        FLOPs at `context`, the step's `attention_context`: packed documents attend only within
        themselves)."""
        flops_per_step = training_flops_per_token(self.run.model, round(context)) * self.tokens_per_step
        return {
            "loss": result.loss,
            "lr": self.parallel.engine.get_lr()[0],
            "grad_norm": float(result.grad_norm if result.grad_norm is not None
                               else self.parallel.engine.get_global_grad_norm()),
            "tokens_per_s": self.tokens_per_step / result.seconds,
            "memory_gib": _memory_gib(self.device),
            "mfu": flops_per_step / result.seconds / (self.peak_flops * self.world),
        }


def final_metrics_location(run: StageRun) -> str:
    """Where the stage's last metrics go and the driver reads them: a local path, or a URI on the store."""
    return run.final_metrics_uri or str(Path(run.checkpoint_root) / FINAL_METRICS_FILE)


def write_final_metrics(location: str, metrics: dict[str, float]) -> None:
    """Atomically write the stage's last metrics at `location` (a local path or an object-store URI)."""
    # Not carried in Ray Train's result: it keeps only metrics reported with a checkpoint, and a
    # report with one would register a checkpoint the stage was told not to save. Nor in the node's
    # scratch when checkpoints go to a store: the driver may run on another node. The store is the
    # one place every node and the driver share.
    if not storage.is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    storage.publish(location, json.dumps(metrics, indent=2, sort_keys=True).encode())


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
    is one all-reduce of a scalar, kept on the device (no sync). Under context parallelism a
    micro-batch is the rank's sequence shard and the average runs over the replica group
    (dp x cp): the same formula with dp x cp in place of dp."""
    total: int | torch.Tensor = sum(counts)
    denominator: int | torch.Tensor = max(total, 1)
    if groups.replicas > 1:
        total = torch.tensor(float(total), device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=groups.replica_group)
        denominator = total.clamp(min=1.0)
    return [c * accum * groups.replicas / denominator for c in counts], total


def clip_gradients(model: torch.nn.Module, groups: ParallelGroups, max_norm: float) -> torch.Tensor:
    """Scale gradients so their global norm (tensor-parallel aware) is at most `max_norm`; return the norm."""
    norm = global_grad_norm(model, groups)
    if max_norm > 0:
        # Multi-tensor scaling, and no `if norm > max_norm`: that would sync with the device.
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm


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
