"""The sections job specs are made of: tracking, corpus, parallel layout, optimizer, training loop,
checkpoints, and a stage (sequence length plus those), each a dataclass that validates its values
where they are born, in one error style: `section.field = value: must be ...`.

`forge_platform.job_config` assembles them into the jobs users submit. Each field carries its
docstring below it (read by `config_loader.describe`, the `--help` of every job); every choice among
fixed values is a `Literal`. Sections reuse the other packages' own config dataclasses
(`forge_data.DataPipelineConfig`'s long-context policy, `forge_eval.EvalConfig`), so a field is
defined, documented and validated once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from forge_data.config import LongContextConfig
from forge_eval import EvalConfig

from forge_platform.parallel.dims import ParallelDims


def require_that(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless `condition`: the one way a section refuses a value."""
    if not condition:
        raise ValueError(message)


# --- Sections ----------------------------------------------------------------------------------
@dataclass
class TrackingConfig:
    """Where metrics, params and artifacts go."""

    backend: Literal["mlflow", "console", "null"] = "mlflow"
    """mlflow (the UI), console (stdout only) or null."""
    uri: str = ""
    """MLflow tracking URI; empty starts a local server (SQLite, 127.0.0.1) for the job's duration."""
    experiment: str = "hybrid-forge"
    """MLflow experiment that holds the runs."""
    system_metrics_interval_s: float = 10.0
    """Seconds between samples of CPU, memory, disk, network and GPU use (GPU needs nvidia-ml-py,
    in the `cuda` extra) that rank 0 logs as MLflow `system/*` metrics during training; 0 turns
    them off."""
    on_unreachable: Literal["continue", "refuse"] = "continue"
    """What a job does when the tracking server does not answer at start: continue (say so in one
    line, keep everything in `spill_dir` and send it when the server answers) or refuse (exit 2)."""
    max_buffered_metrics: int = 10_000
    """Metric points rank 0 holds in memory while the server is slow or down; beyond this they are
    written to a file in `spill_dir` and replayed later (never dropped)."""
    spill_dir: str = ""
    """Folder for what could not be sent yet (JSON lines: rank 0's metrics, the driver's calls);
    empty is `<output_dir>/tracking` (set by the job's session; `<scratch_dir>/tracking` when
    output_dir is on an object store). Workers write there too, so on a cluster it must be a
    filesystem the driver can read, like the checkpoints'."""
    registered_model: str = ""
    """The MLflow registered model a campaign's final weights become a new version of (logged as the
    artifact `model/` of its parent run, with the stages' runs, checkpoints, data and config hash
    as version tags); empty is the campaign's name ('/' and ':', which MLflow refuses, become '-')."""

    def __post_init__(self) -> None:
        require_that(not any(c in self.registered_model for c in "/:"),
                 f"tracking.registered_model = {self.registered_model!r}: MLflow model names cannot contain '/' or ':'")
        require_that(self.system_metrics_interval_s >= 0,
                 f"tracking.system_metrics_interval_s = {self.system_metrics_interval_s}: must be >= 0")
        require_that(self.on_unreachable in ("continue", "refuse"),
                 f"tracking.on_unreachable = {self.on_unreachable!r}: must be 'continue' or 'refuse'")
        require_that(self.max_buffered_metrics >= 1,
                 f"tracking.max_buffered_metrics = {self.max_buffered_metrics}: must be >= 1")


@dataclass
class CorpusConfig:
    """The raw text of the demo: the bundled Shakespeare and the interpreter's standard library."""

    shakespeare: str = "datasets/tinyshakespeare/input.txt"
    """Bundled tiny Shakespeare (relative to the working directory); empty leaves it out."""
    stdlib_files: int = 300
    """Standard-library source files used as documents (sorted by path); 0 leaves them out, -1 takes all."""
    val_fraction: float = 0.1
    """Held-out share: the last 10% of Shakespeare (the published split) and of the stdlib files."""

    def __post_init__(self) -> None:
        require_that(0 < self.val_fraction < 1, f"corpus.val_fraction = {self.val_fraction}: must be in (0, 1)")
        require_that(self.stdlib_files >= -1,
                 f"corpus.stdlib_files = {self.stdlib_files}: must be -1 (all), 0 or positive")


@dataclass
class ParallelConfig:
    """How many Ray Train workers, and how they split the model and the data."""

    num_workers: int = 2
    """Ray Train workers (one process, one GPU each on GPU pools)."""
    tensor_parallel: int = 1
    """Tensor-parallel degree; the data-parallel degree is num_workers / (tensor_parallel x context_parallel)."""
    context_parallel: int = 1
    """Context-parallel degree: workers that share the same rows, each holding 1/cp of every row's
    tokens; the Mamba-2 and attention mixers see whole rows for 1/(tp x cp) of their heads
    (docs/architecture.md). Heads and groups must divide by tensor_parallel x context_parallel."""
    sequence_parallel: bool = False
    """Megatron's sequence parallelism inside the TP group: outside the mixers the residual stream
    and norms run on 1/tensor_parallel of the sequence, so block inputs shrink tensor_parallel-fold
    (same number of collectives). Needs tensor_parallel > 1 and seq_len divisible by tp x cp."""
    use_gpu: bool = False
    """Give each worker a GPU."""
    gpu_share: float = 1.0
    """The share of one GPU each worker reserves, in (0, 1]. Below 1 several small runs share a GPU
    (a study's `concurrent_runs` sets it); it needs num_workers = 1: ranks of one run on one GPU are
    not something NCCL does."""
    cpus_per_worker: float = 1.0
    """Logical CPUs Ray reserves per worker (keep Ray's CPU count above workers x this: see docs)."""
    max_failures: int = 0
    """Worker-group restarts Ray allows; each resumes from the last checkpoint. A failure on the
    user's input (a checkpoint or data that does not fit the spec) is not worth a restart: the
    restarts stop at once and the job exits 2 with that error's line."""
    placement_timeout_s: float = 600.0
    """On a cluster, how long a stage waits for the autoscaler to bring the workers' resources
    before it fails naming what it asked and what the cluster has (a local Ray is checked at once)."""
    gpu_memory_gib: float = 0.0
    """Memory of one GPU for the memory plan; 0 reads it from this machine's GPU (on a cluster
    whose driver has none, set it: e.g. 79.1 for an H100 80GB), and leaves it unchecked if there is none."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one device for MFU; 0 measures a dense matmul on the device at start."""

    def __post_init__(self) -> None:
        require_that(self.num_workers >= 1, f"parallel.num_workers = {self.num_workers}: must be >= 1")
        require_that(self.tensor_parallel >= 1, f"parallel.tensor_parallel = {self.tensor_parallel}: must be >= 1")
        require_that(self.context_parallel >= 1, f"parallel.context_parallel = {self.context_parallel}: must be >= 1")
        require_that(not self.sequence_parallel or self.tensor_parallel > 1,
                 "parallel.sequence_parallel = true: needs parallel.tensor_parallel > 1 (it shards over the TP group)")
        try:
            self.dims  # noqa: B018 - the one validation of the layout lives in ParallelDims
        except ValueError as err:
            raise ValueError(f"parallel.tensor_parallel x parallel.context_parallel = {self.tensor_parallel} x "
                             f"{self.context_parallel}: must divide parallel.num_workers = {self.num_workers} "
                             f"({err})") from None
        require_that(self.cpus_per_worker > 0, f"parallel.cpus_per_worker = {self.cpus_per_worker}: must be > 0")
        require_that(0 < self.gpu_share <= 1, f"parallel.gpu_share = {self.gpu_share}: must be in (0, 1]")
        require_that(self.gpu_share == 1 or self.num_workers == 1,
                 f"parallel.gpu_share = {self.gpu_share} with num_workers = {self.num_workers}: a share of a GPU "
                 "needs num_workers = 1 (ranks of one run on one GPU are not something NCCL does)")
        require_that(self.max_failures >= 0, f"parallel.max_failures = {self.max_failures}: must be >= 0")
        require_that(self.placement_timeout_s >= 0,
                 f"parallel.placement_timeout_s = {self.placement_timeout_s}: must be >= 0")
        require_that(self.gpu_memory_gib >= 0, f"parallel.gpu_memory_gib = {self.gpu_memory_gib}: must be >= 0")
        require_that(self.peak_tflops >= 0, f"parallel.peak_tflops = {self.peak_tflops}: must be >= 0")

    @property
    def dims(self) -> ParallelDims:
        """The validated degrees of this layout (tp x cp x dp = num_workers)."""
        return ParallelDims.from_world(self.num_workers, self.tensor_parallel, self.context_parallel)


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
        require_that(self.lr > 0, f"optim.lr = {self.lr}: must be > 0")
        require_that(0 <= self.min_lr <= self.lr, f"optim.min_lr = {self.min_lr}: must be in [0, lr={self.lr}]")
        require_that(self.warmup_tokens >= 0, f"optim.warmup_tokens = {self.warmup_tokens}: must be >= 0")
        require_that(self.decay_tokens >= 0, f"optim.decay_tokens = {self.decay_tokens}: must be >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require_that(0 <= value < 1, f"optim.{name} = {value}: must be in [0, 1)")
        require_that(self.eps > 0, f"optim.eps = {self.eps}: must be > 0")
        require_that(self.weight_decay >= 0, f"optim.weight_decay = {self.weight_decay}: must be >= 0")
        require_that(self.grad_clip >= 0, f"optim.grad_clip = {self.grad_clip}: must be >= 0")


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
    """DeepSpeed ZeRO stage over the data-parallel group; with one data-parallel rank it runs as 0.
    Every stage is tested through the trainer against one worker, stage 3 also under tensor parallelism."""
    recompute: Literal["auto", "none", "selective", "full"] = "auto"
    """Activation recompute in the backward pass: none (fastest, most memory), selective (every
    layer but attention, whose recompute would redo the quadratic scores while what it keeps is
    small), full (every layer from its input), or auto: the fastest mode the memory plan says fits
    the GPU (none on CPU workers). `python -m jobs.plan` prints the plan."""
    log_every: int = 1
    """Log metrics every this many steps."""
    seed: int = 0
    """Seed of model initialisation and of the data order."""
    document_resets: bool = True
    """Reset the SSM and conv state, attention and positions at every document boundary inside a
    packed row (exact per-document training). false trains as plain packing does: each row one
    stream, state flowing from one document into the next (as the paper's context extension did);
    the reproduction study (jobs/specs/reproduce_resets.toml) compares the two."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "log_every"):
            value = getattr(self, name)
            require_that(value >= 1, f"train.{name} = {value}: must be >= 1")


RESUMABLE_CHANGES = ("train.steps", "train.precision", "optim.*")
"""What `checkpoint.resume_may_change` may list: changes a checkpoint's state can continue under."""
OPTIM_FIELDS = tuple(f.name for f in dataclasses.fields(OptimConfig))


def may_change_on_resume(name: str) -> bool:
    """Whether training setting `name` (`train.steps`, `optim.lr`, ...) may differ from a checkpoint's
    when `checkpoint.resume_may_change` lists it: the one rule the config check and the resume use."""
    return name in RESUMABLE_CHANGES or (name.startswith("optim.") and name[6:] in OPTIM_FIELDS)


@dataclass
class CheckpointConfig:
    """When checkpoints are taken and how many are kept."""

    every_steps: int = 50
    """Save (every rank its DeepSpeed shard) and report to Ray Train every this many steps."""
    keep_last: int = 2
    """Checkpoints Ray keeps; older ones are deleted."""
    save_final: bool = True
    """Also save at the stage's last step (the next stage starts from it); benchmarks turn it off."""
    resume_may_change: list[str] = field(default_factory=list)
    """Training settings a rerun may change and still continue from this stage's last checkpoint, e.g.
    `["train.steps"]` to train longer (the schedule is then recomputed for the new length). Only
    `train.steps`, `train.precision` and `optim.*` (or one `optim.<field>`) may be listed: the sequence
    length, global batch and seed change what a checkpoint holds or which rows come next.
    Without it a rerun whose settings differ from its checkpoint's is refused, naming each change.
    Not listed here because always allowed: other parallel degrees (the checkpoint is resharded) with
    micro_batch_size and grad_accum_steps regrouping the same global batch (micro x accum x dp), and
    the ZeRO stage when the checkpoint is `reshardable`."""
    reshardable: bool = True
    """Also write the optimizer state by parameter name (`universal/`), so a rerun may resume with other
    parallel degrees or another ZeRO stage. It costs disk: the fp32 masters and Adam's two moments a
    second time (12 bytes per parameter, ~96 GB per checkpoint of an 8B model); false saves it, and a
    resume from such a checkpoint must then keep its layout and ZeRO stage (its model.pt still starts
    any layout)."""

    def __post_init__(self) -> None:
        require_that(self.every_steps >= 1, f"checkpoint.every_steps = {self.every_steps}: must be >= 1")
        require_that(self.keep_last >= 1, f"checkpoint.keep_last = {self.keep_last}: must be >= 1")
        for name in self.resume_may_change:
            require_that(may_change_on_resume(name),
                     f"checkpoint.resume_may_change: {name!r} cannot change on resume; the settings that can "
                     f"are {', '.join(RESUMABLE_CHANGES)} and optim.<field>")


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
    """Evaluation after the stage (forge_eval's suites)."""
    long_documents: LongContextConfig = field(default_factory=LongContextConfig)
    """Which training documents a campaign packs for this stage, by length in tokens: select
    (`min_doc_tokens`), up-weight (`upweight_min_tokens`, `upweight_factor`) or mix
    (`mix_min_tokens`, `mix_long_share`); held-out data is packed whole. The campaign fills in
    `previous_seq_len` from the stage before, and the manifest reports the share of tokens in
    documents longer than it. The defaults pack every document once."""

    def __post_init__(self) -> None:
        require_that(bool(self.name) and "/" not in self.name,
                 f"stage.name = {self.name!r}: must be a non-empty folder name")
        require_that(self.seq_len >= 8, f"stage.seq_len = {self.seq_len}: must be >= 8")
