"""The sections of a job spec that describe how one training stage runs.

Each field carries its docstring below it (read by `forge_platform.config.describe`, the `--help` of
every job) and each dataclass validates its values where they are born.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay, set explicitly (DeepSpeed's defaults drift)."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay (the paper decays to a tenth of the peak)."""
    warmup_tokens: int = 0
    """Tokens of linear warmup from zero (the paper: 122K samples of 4096 tokens)."""
    decay_tokens: int = 0
    """Tokens over which the cosine runs after warmup; 0 means until the last step of the stage."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2 (the paper's 0.95)."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay; never applied to norms, biases, A_log, D or dt_bias."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr = {self.lr}: must be > 0")
        _require(0 <= self.min_lr <= self.lr, f"optim.min_lr = {self.min_lr}: must be in [0, lr={self.lr}]")
        _require(self.warmup_tokens >= 0, f"optim.warmup_tokens = {self.warmup_tokens}: must be >= 0")
        _require(self.decay_tokens >= 0, f"optim.decay_tokens = {self.decay_tokens}: must be >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"optim.{name} = {value}: must be in [0, 1)")
        _require(self.eps > 0, f"optim.eps = {self.eps}: must be > 0")
        _require(self.weight_decay >= 0, f"optim.weight_decay = {self.weight_decay}: must be >= 0")
        _require(self.grad_clip >= 0, f"optim.grad_clip = {self.grad_clip}: must be >= 0")


@dataclass
class TrainConfig:
    """How long and how wide one stage trains."""

    steps: int = 100
    """Optimizer steps in this stage."""
    micro_batch_size: int = 4
    """Packed sequences per worker per forward pass."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision: "bf16" autocasts matmuls and kernels over fp32 master weights (GPU);
    "fp32" everywhere (CPU)."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage over the data-parallel group (3 is not combined with tensor parallelism)."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass to save memory."""
    log_every: int = 1
    """Log metrics every this many steps."""
    seed: int = 0
    """Seed of model initialisation and of the data order."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "log_every"):
            value = getattr(self, name)
            _require(value >= 1, f"train.{name} = {value}: must be >= 1")


@dataclass
class ParallelConfig:
    """How many Ray Train workers, and how they split the model and the data."""

    num_workers: int = 2
    """Ray Train workers (one process, one GPU each on GPU pools)."""
    tensor_parallel: int = 1
    """Tensor-parallel degree; the data-parallel degree is num_workers / tensor_parallel."""
    use_gpu: bool = False
    """Give each worker a GPU."""
    cpus_per_worker: float = 1.0
    """Logical CPUs Ray reserves per worker (keep Ray's CPU count above workers x this: see docs)."""
    max_failures: int = 0
    """Worker-group restarts Ray allows; each resumes from the last checkpoint."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one device for MFU; 0 measures a dense matmul on the device at start."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, f"parallel.num_workers = {self.num_workers}: must be >= 1")
        _require(self.tensor_parallel >= 1, f"parallel.tensor_parallel = {self.tensor_parallel}: must be >= 1")
        _require(
            self.num_workers % self.tensor_parallel == 0,
            f"parallel.tensor_parallel = {self.tensor_parallel} does not divide num_workers = {self.num_workers}",
        )
        _require(self.cpus_per_worker > 0, f"parallel.cpus_per_worker = {self.cpus_per_worker}: must be > 0")
        _require(self.max_failures >= 0, f"parallel.max_failures = {self.max_failures}: must be >= 0")
        _require(self.peak_tflops >= 0, f"parallel.peak_tflops = {self.peak_tflops}: must be >= 0")

    @property
    def data_parallel(self) -> int:
        return self.num_workers // self.tensor_parallel


@dataclass
class CheckpointConfig:
    """When checkpoints are taken and how many are kept."""

    every_steps: int = 50
    """Save (every rank its DeepSpeed shard) and report to Ray Train every this many steps."""
    keep_last: int = 2
    """Checkpoints Ray keeps; older ones are deleted."""
    save_final: bool = True
    """Also save at the stage's last step (the next stage starts from it); benchmarks turn it off."""

    def __post_init__(self) -> None:
        _require(self.every_steps >= 1, f"checkpoint.every_steps = {self.every_steps}: must be >= 1")
        _require(self.keep_last >= 1, f"checkpoint.keep_last = {self.keep_last}: must be >= 1")


@dataclass
class EvalConfig:
    """What is measured after a stage."""

    val_batches: int = 8
    """Held-out packed sequences (batches of one) averaged into the validation loss."""
    phonebook_entries: list[int] = field(default_factory=lambda: [4, 16])
    """Phonebook sizes (names in the book) at which lookup accuracy is measured by greedy generation."""
    phonebook_queries: int = 8
    """Lookups per book size."""

    def __post_init__(self) -> None:
        _require(self.val_batches >= 1, f"eval.val_batches = {self.val_batches}: must be >= 1")
        _require(
            all(n >= 1 for n in self.phonebook_entries),
            f"eval.phonebook_entries = {self.phonebook_entries}: every size must be >= 1",
        )
        _require(self.phonebook_queries >= 0, f"eval.phonebook_queries = {self.phonebook_queries}: must be >= 0")


@dataclass
class StageConfig:
    """One training stage: pretraining, or a context extension starting from the previous stage."""

    name: str = "pretrain"
    """Stage name: the MLflow child run's name and the checkpoint folder's."""
    seq_len: int = 256
    """Packed sequence length of this stage's data."""
    init_from_previous: bool = False
    """Start from the previous stage's final weights (context extension) instead of from scratch."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps and batch shape."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation after the stage."""

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, f"stage.name = {self.name!r}: must be a non-empty folder name")
        _require(self.seq_len >= 8, f"stage.seq_len = {self.seq_len}: must be >= 8")
