"""The job specs users submit: one dataclass per job, and every section they are made of.

`forge_platform.config_loader` builds these from TOML and `--section.field value` overrides.
Sections reuse the other packages' own config dataclasses (`forge_models.ModelConfig`,
`forge_data.DataPipelineConfig`, `forge_eval.EvalConfig`), so a field is defined, documented and
validated once. Each field carries its docstring below it (read by `config_loader.describe`, the
`--help` of every job); each dataclass validates its values where they are born, with one error
style: `section.field = value: must be ...`. Every choice among fixed values is a `Literal`.

The jobs share their common fields through two base sections: `JobBase` (name, output folder,
local Ray size, tracking) and `TrainingJobBase` (adds the model and the parallel layout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forge_data.config import DataPipelineConfig, LongContextConfig
from forge_eval import EvalConfig
from forge_eval.practice import PracticeMix
from forge_models import ModelConfig, get_preset
from forge_models.tp_plan import check_context_parallel, check_tensor_parallel

from forge_platform.config_loader import ConfigError, load_config
from forge_platform.parallel.dims import ParallelDims

# `[model] preset = "..."` starts the model section from a named preset.
PRESETS = {ModelConfig: get_preset}


def _require(condition: bool, message: str) -> None:
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
        _require(not any(c in self.registered_model for c in "/:"),
                 f"tracking.registered_model = {self.registered_model!r}: MLflow model names cannot contain '/' or ':'")
        _require(self.system_metrics_interval_s >= 0,
                 f"tracking.system_metrics_interval_s = {self.system_metrics_interval_s}: must be >= 0")
        _require(self.on_unreachable in ("continue", "refuse"),
                 f"tracking.on_unreachable = {self.on_unreachable!r}: must be 'continue' or 'refuse'")
        _require(self.max_buffered_metrics >= 1,
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
        _require(0 < self.val_fraction < 1, f"corpus.val_fraction = {self.val_fraction}: must be in (0, 1)")
        _require(self.stdlib_files >= -1,
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
        _require(self.num_workers >= 1, f"parallel.num_workers = {self.num_workers}: must be >= 1")
        _require(self.tensor_parallel >= 1, f"parallel.tensor_parallel = {self.tensor_parallel}: must be >= 1")
        _require(self.context_parallel >= 1, f"parallel.context_parallel = {self.context_parallel}: must be >= 1")
        _require(not self.sequence_parallel or self.tensor_parallel > 1,
                 "parallel.sequence_parallel = true: needs parallel.tensor_parallel > 1 (it shards over the TP group)")
        try:
            self.dims  # noqa: B018 - the one validation of the layout lives in ParallelDims
        except ValueError as err:
            raise ValueError(f"parallel.tensor_parallel x parallel.context_parallel = {self.tensor_parallel} x "
                             f"{self.context_parallel}: must divide parallel.num_workers = {self.num_workers} "
                             f"({err})") from None
        _require(self.cpus_per_worker > 0, f"parallel.cpus_per_worker = {self.cpus_per_worker}: must be > 0")
        _require(0 < self.gpu_share <= 1, f"parallel.gpu_share = {self.gpu_share}: must be in (0, 1]")
        _require(self.gpu_share == 1 or self.num_workers == 1,
                 f"parallel.gpu_share = {self.gpu_share} with num_workers = {self.num_workers}: a share of a GPU "
                 "needs num_workers = 1 (ranks of one run on one GPU are not something NCCL does)")
        _require(self.max_failures >= 0, f"parallel.max_failures = {self.max_failures}: must be >= 0")
        _require(self.placement_timeout_s >= 0,
                 f"parallel.placement_timeout_s = {self.placement_timeout_s}: must be >= 0")
        _require(self.gpu_memory_gib >= 0, f"parallel.gpu_memory_gib = {self.gpu_memory_gib}: must be >= 0")
        _require(self.peak_tflops >= 0, f"parallel.peak_tflops = {self.peak_tflops}: must be >= 0")

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
            _require(value >= 1, f"train.{name} = {value}: must be >= 1")


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
        _require(self.every_steps >= 1, f"checkpoint.every_steps = {self.every_steps}: must be >= 1")
        _require(self.keep_last >= 1, f"checkpoint.keep_last = {self.keep_last}: must be >= 1")
        for name in self.resume_may_change:
            _require(may_change_on_resume(name),
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
        _require(bool(self.name) and "/" not in self.name,
                 f"stage.name = {self.name!r}: must be a non-empty folder name")
        _require(self.seq_len >= 8, f"stage.seq_len = {self.seq_len}: must be >= 8")


# --- The fields jobs share ------------------------------------------------------------------------
@dataclass
class JobBase:
    """What every job that starts Ray and tracks its runs has."""

    name: str = "job"
    """Run name in MLflow and Ray Train."""
    output_dir: str = "runs/job"
    """Everything the job writes (checkpoints, plots, a local MLflow server's files): a local folder
    (shared by every node on a cluster) or an object store, `s3://bucket/prefix` or `gs://...`
    (credentials and endpoint from the environment; `tracking.uri` must then name a server)."""
    scratch_dir: str = ""
    """Local folder for what passes through local disk on its way to an object-store `output_dir`
    (checkpoint files before their upload, plots, the demo corpus, tracking's spill files); empty:
    a temporary folder, removed when the job ends. Not used with a local `output_dir`."""
    ray_num_cpus: int = 4
    """Logical CPUs of a local Ray (ignored on a cluster); keep it above the workers' CPUs."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking."""

    def __post_init__(self) -> None:
        _require(self.ray_num_cpus >= 1, f"ray_num_cpus = {self.ray_num_cpus}: must be >= 1")


@dataclass
class TrainingJobBase(JobBase):
    """A job that trains: the model and how the workers split it."""

    model: ModelConfig = field(default_factory=lambda: get_preset("hybrid-debug"))
    """The model (start from a preset with `preset = "..."`); its vocab_size must cover the tokenizer's
    (a campaign takes it from the tokenizer it trains)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Workers and parallel layout."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layout(self.model, self.parallel)


def check_layout(model: ModelConfig, parallel: ParallelConfig) -> None:
    """Refuse, when the spec loads, a model the tensor- and context-parallel degrees cannot split
    (it would otherwise fail inside every worker, once per retry)."""
    try:
        check_tensor_parallel(model, parallel.tensor_parallel)
    except ValueError as err:
        raise ValueError(f"parallel.tensor_parallel = {parallel.tensor_parallel}: {err}") from None
    try:
        check_context_parallel(model, parallel.tensor_parallel, parallel.context_parallel)
    except ValueError as err:
        raise ValueError(f"parallel.context_parallel = {parallel.context_parallel}: {err}") from None


# --- The jobs ---------------------------------------------------------------------------------------
@dataclass
class CampaignConfig(TrainingJobBase):
    """A whole campaign: tokenizer, packed data, then stages (pretrain, context extensions), each evaluated."""

    name: str = "campaign"
    """Campaign name: the MLflow parent run's name."""
    output_dir: str = "runs/campaign"
    """Everything the campaign writes: corpus, tokenizer, shards, checkpoints, plots, local MLflow."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The bundled demo corpus, used when `data.inputs` is empty."""
    data: DataPipelineConfig = field(default_factory=DataPipelineConfig)
    """Tokenizer training, tokenizing and packing of `data.inputs` (training text). The corpus is
    tokenized once; each stage packs those tokens at its own seq_len under its own
    `long_documents` policy (so `data.packing.seq_len` and `data.long_context` are not used)."""
    val_inputs: list[str] = field(default_factory=list)
    """Held-out text for evaluation when `data.inputs` is given (the demo corpus brings its own)."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The stages in order; a stage with init_from_previous starts from the one before."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data.tokenizer.model_path:
            check_layout(self.planned_model, self.parallel)
        _require(bool(self.stages), "stages = []: must hold at least one stage")
        _require(not self.stages[0].init_from_previous,
                 f"stages.0.init_from_previous = true ({self.stages[0].name}): must be false, "
                 "the first stage has no previous stage")
        names = [s.name for s in self.stages]
        _require(len(set(names)) == len(names), f"stages.*.name = {names}: must be unique")

    @property
    def planned_model(self) -> ModelConfig:
        """The model as the campaign will build it: with the vocabulary of the tokenizer it trains
        (before the tokenizer exists, for checks and the memory plan)."""
        if self.data.tokenizer.model_path:
            return self.model
        return dataclasses.replace(self.model, vocab_size=self.data.tokenizer.vocab_size)


@dataclass
class PretrainConfig(TrainingJobBase):
    """One stage on already packed data: pretraining, or a context extension from given weights."""

    name: str = "pretrain"
    """Run name in MLflow and Ray Train."""
    output_dir: str = "runs/pretrain"
    """Where checkpoints (and a local MLflow server's files) go."""
    train_manifest: str = ""
    """manifest.json of the packed training shards (`python -m jobs.tokenize` writes it)."""
    val_manifest: str = ""
    """manifest.json of held-out shards; empty skips evaluation."""
    tokenizer: str = ""
    """The tokenizer model the shards were made with; needed for Phonebook, else optional."""
    init_weights: str = ""
    """Consolidated weights (a checkpoint folder or model.pt) to start from; required to extend context."""
    stage: StageConfig = field(default_factory=StageConfig)
    """The stage: sequence length, steps, optimizer, checkpoints, evaluation."""


@dataclass
class TokenizeConfig:
    """Raw text to packed shards: train (or load) the tokenizer, tokenize, pack, write, account."""

    ray_num_cpus: int = 4
    """Logical CPUs of a local Ray (ignored on a cluster)."""
    data: DataPipelineConfig = field(default_factory=DataPipelineConfig)
    """Inputs, tokenizer, packing, cleaning policies and output folder."""

    def __post_init__(self) -> None:
        _require(self.ray_num_cpus >= 1, f"ray_num_cpus = {self.ray_num_cpus}: must be >= 1")


@dataclass
class EvaluateConfig:
    """Evaluate a checkpoint with forge_eval's suites (held-out loss, Phonebook, ...)."""

    checkpoint: str = ""
    """A checkpoint folder (with model.pt and model_config.json), local or on an object store (s3://...,
    gs://...; credentials from the environment); empty with `run_id`: the run's."""
    run_id: str = ""
    """An MLflow stage run to evaluate instead: its checkpoint and held-out manifests come from its tags
    (forge.checkpoint, forge.val_manifest, forge.ppl_manifest), and the metrics are added to it at the
    checkpoint's step."""
    tracking_uri: str = ""
    """The MLflow server holding `run_id`; empty: the MLFLOW_TRACKING_URI environment variable."""
    val_manifest: str = ""
    """manifest.json of held-out packed shards; empty with `run_id`: the one the run was evaluated on."""
    ppl_manifest: str = ""
    """manifest.json of held-out shards packed at (at least) `eval.ppl_max_position` tokens, read by the
    `ppl` suite instead of `val_manifest`; empty: `ppl` reads `val_manifest`, or, with `run_id` and no
    `val_manifest` given, the longer rows the run's `ppl` suite read (forge.ppl_manifest) if it had any."""
    tokenizer: str = ""
    """The SentencePiece model file the data was tokenized with."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """What to measure."""


@dataclass
class StudyArm:
    """One model of a study: a name, the model, and how it trains on packed documents."""

    name: str = "hybrid"
    """The arm's name: its MLflow child runs are `<name>-seed<seed>`, its rows and lines in the results."""
    model: ModelConfig = field(default_factory=lambda: get_preset("hybrid-debug"))
    """The model (start from a preset with `preset = "..."`); the study sets its vocab_size."""
    document_resets: bool = True
    """Train with document resets (exact per-document state), or as plain packing (false)."""

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name and "-seed" not in self.name,
                 f"arms.name = {self.name!r}: must be a non-empty folder name without '-seed'")


@dataclass
class StudyConfig(JobBase):
    """A controlled comparison: several models trained on the same data, tokenizer, token budget and
    seeds, each evaluated by the same suites; one MLflow parent run with a child per model and seed,
    a results page with the table, the plots and paired confidence intervals."""

    name: str = "study"
    """The study's name: the MLflow parent run's name."""
    output_dir: str = "runs/study"
    """Everything the study writes: corpus, tokenizer, shards, checkpoints, plots, results page, local MLflow."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The bundled real text (tiny Shakespeare, standard-library sources)."""
    practice_documents: int = 2000
    """Synthetic recall documents (forge_eval.practice) added to the training text; 0 adds none."""
    practice_seed: int = 1000
    """Seed of the practice documents (their random stream differs from every suite's)."""
    practice: PracticeMix = field(default_factory=PracticeMix)
    """Which practice documents, and how big."""
    data: DataPipelineConfig = field(default_factory=DataPipelineConfig)
    """Tokenizer training, tokenizing and packing (packed once, at `stage.seq_len`, for every arm)."""
    stage: StageConfig = field(default_factory=StageConfig)
    """What every arm and seed runs: sequence length, steps, batch, optimizer, evaluation
    (`stage.train.seed` and `stage.train.document_resets` are set per run)."""
    arms: list[StudyArm] = field(default_factory=lambda: [StudyArm()])
    """The models compared."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Every arm trains once per seed (initialisation and data order); the same seeds for every arm,
    so differences are paired."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Workers of each run."""
    concurrent_runs: int = 1
    """Runs trained and evaluated at once. Small models leave a GPU mostly idle (a 6M-parameter model
    ran at ~1% MFU on an H200, its time in kernel launches and start-up), so on GPUs each run then
    reserves 1/concurrent_runs of one (parallel.gpu_share; needs parallel.num_workers = 1). Ray places
    what fits and queues the rest; results are the same whatever the number."""
    comparisons: list[str] = field(default_factory=list)
    """Headline comparisons, `"<arm> vs <arm>"` (on `headline_metric`) or `"<arm> vs <arm> on <metric>"`:
    the results give the paired difference over the seeds with its 95% confidence interval."""
    headline_metric: str = "phonebook_accuracy_mean"
    """The metric compared: any evaluation metric, or the study's means over lengths and formats
    (`phonebook_accuracy_mean`, `niah_score_mean`)."""
    results_page: str = ""
    """Also write the results page (Markdown) and its plots here, e.g. docs/results/reproduction.md
    (a local path); it is always written to `output_dir/results/`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.practice_documents >= 0, f"practice_documents = {self.practice_documents}: must be >= 0")
        _require(bool(self.arms), "arms = []: must hold at least one arm")
        names = [arm.name for arm in self.arms]
        _require(len(set(names)) == len(names), f"arms.*.name = {names}: must be unique")
        _require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                 f"seeds = {self.seeds}: must be distinct and at least one")
        for comparison in self.comparisons:
            first, second, metric = self.comparison(comparison)
            _require(first in names and second in names and first != second and bool(metric),
                     f"comparisons: {comparison!r} must be '<arm> vs <arm>' or '<arm> vs <arm> on <metric>' "
                     f"with two of {names}")
        for arm in self.arms:
            check_layout(arm.model, self.parallel)
        _require(not self.stage.init_from_previous, "stage.init_from_previous = true: a study trains from scratch")
        _require(self.concurrent_runs >= 1, f"concurrent_runs = {self.concurrent_runs}: must be >= 1")
        _require(self.concurrent_runs == 1 or not self.parallel.use_gpu or self.parallel.num_workers == 1,
                 f"concurrent_runs = {self.concurrent_runs} on GPUs with parallel.num_workers = "
                 f"{self.parallel.num_workers}: runs that share a GPU need parallel.num_workers = 1")

    def run_parallel(self) -> ParallelConfig:
        """The workers of one run: on GPUs with concurrent runs, each reserves its share of one GPU."""
        if self.concurrent_runs == 1 or not self.parallel.use_gpu:
            return self.parallel
        return dataclasses.replace(self.parallel, gpu_share=min(self.parallel.gpu_share, 1.0 / self.concurrent_runs))

    def comparison(self, text: str) -> tuple[str, str, str]:
        """('<arm>', '<arm>', metric) of one `comparisons` entry."""
        pair, _, metric = text.partition(" on ")
        first, _, second = pair.partition(" vs ")
        return first.strip(), second.strip(), metric.strip() or self.headline_metric


# Every job's config class, by job module name (`python -m jobs.<name>`).
JOB_CONFIGS: dict[str, type] = {
    "campaign": CampaignConfig,
    "pretrain": PretrainConfig,
    "extend_context": PretrainConfig,
    "tokenize": TokenizeConfig,
    "evaluate": EvaluateConfig,
    "reproduce": StudyConfig,
}


def require(cfg: Any, *names: str) -> None:
    """Fields a job cannot run without (checked when it starts, so specs can leave them to the CLI)."""
    missing = [name for name in names if not getattr(cfg, name)]
    if missing:
        flags = " ".join(f"--{name} PATH" for name in missing)
        raise ConfigError(f"{', '.join(f'{name} = {getattr(cfg, name)!r}' for name in missing)}: "
                          f"must be given (pass {flags})")


def load_job_config(cls: type, path: str | Path | None, overrides: list[str]) -> Any:
    """Load one job's spec with the model presets available."""
    return load_config(cls, path, overrides, presets=PRESETS)
