"""The job specs users submit: one dataclass per job, assembled from the sections in
`forge_platform.config_sections`.

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
from typing import Any

from forge_data.config import DataPipelineConfig
from forge_eval import EvalConfig
from forge_eval.practice import PracticeMix
from forge_models import ModelConfig, get_preset
from forge_models.tp_plan import check_context_parallel, check_tensor_parallel

from forge_platform.config_loader import ConfigError, load_config
from forge_platform.config_sections import CorpusConfig, ParallelConfig, StageConfig, TrackingConfig, require_that

# `[model] preset = "..."` starts the model section from a named preset.
PRESETS = {ModelConfig: get_preset}


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
        require_that(self.ray_num_cpus >= 1, f"ray_num_cpus = {self.ray_num_cpus}: must be >= 1")


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
        require_that(bool(self.stages), "stages = []: must hold at least one stage")
        require_that(not self.stages[0].init_from_previous,
                 f"stages.0.init_from_previous = true ({self.stages[0].name}): must be false, "
                 "the first stage has no previous stage")
        names = [s.name for s in self.stages]
        require_that(len(set(names)) == len(names), f"stages.*.name = {names}: must be unique")

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
        require_that(self.ray_num_cpus >= 1, f"ray_num_cpus = {self.ray_num_cpus}: must be >= 1")


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
        require_that(bool(self.name) and "/" not in self.name and "-seed" not in self.name,
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
    autotune_kernels: bool = True
    """Let mamba_ssm autotune its Triton kernels in every run (false: one config each, set for the
    driver and every worker before anything imports them; forge_models.ops.kernels.FIXED_CONFIG_ENV).
    Autotuning took ~2 minutes of each small run's first step; false also makes mamba_ssm's SSD
    backward deterministic. CPU runs never use these kernels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_that(self.practice_documents >= 0, f"practice_documents = {self.practice_documents}: must be >= 0")
        require_that(bool(self.arms), "arms = []: must hold at least one arm")
        names = [arm.name for arm in self.arms]
        require_that(len(set(names)) == len(names), f"arms.*.name = {names}: must be unique")
        require_that(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                 f"seeds = {self.seeds}: must be distinct and at least one")
        for comparison in self.comparisons:
            first, second, metric = self.comparison(comparison)
            require_that(first in names and second in names and first != second and bool(metric),
                     f"comparisons: {comparison!r} must be '<arm> vs <arm>' or '<arm> vs <arm> on <metric>' "
                     f"with two of {names}")
        for arm in self.arms:
            check_layout(arm.model, self.parallel)
        require_that(not self.stage.init_from_previous, "stage.init_from_previous = true: a study trains from scratch")
        require_that(self.concurrent_runs >= 1, f"concurrent_runs = {self.concurrent_runs}: must be >= 1")
        require_that(self.concurrent_runs == 1 or not self.parallel.use_gpu or self.parallel.num_workers == 1,
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
