"""The job specs users submit: one dataclass per job, built from TOML by `forge_platform.config`.

Sections reuse the packages' own config dataclasses (`forge_models.ModelConfig`,
`forge_data.DataPipelineConfig`) and the stage sections of
`forge_platform.training_config`, so a field is defined, documented and validated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forge_data.config import DataPipelineConfig
from forge_models import ModelConfig, get_preset

from forge_platform.config import ConfigError, load_config
from forge_platform.training_config import EvalConfig, ParallelConfig, StageConfig

# `[model] preset = "..."` starts the model section from a named preset.
PRESETS = {ModelConfig: get_preset}


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

    def __post_init__(self) -> None:
        if self.system_metrics_interval_s < 0:
            raise ValueError(f"tracking.system_metrics_interval_s = {self.system_metrics_interval_s}: must be >= 0")


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
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"corpus.val_fraction = {self.val_fraction}: must be in (0, 1)")
        if self.stdlib_files < -1:
            raise ValueError(f"corpus.stdlib_files = {self.stdlib_files}: must be -1 (all), 0 or positive")


@dataclass
class CampaignConfig:
    """A whole campaign: tokenizer, packed data, then stages (pretrain, context extensions), each evaluated."""

    name: str = "campaign"
    """Campaign name: the MLflow parent run's name."""
    output_dir: str = "runs/campaign"
    """Everything the campaign writes: corpus, tokenizer, shards, checkpoints, plots, local MLflow."""
    ray_num_cpus: int = 4
    """Logical CPUs of a local Ray (ignored on a cluster); keep it above the workers' CPUs."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The bundled demo corpus, used when `data.inputs` is empty."""
    data: DataPipelineConfig = field(default_factory=DataPipelineConfig)
    """Tokenizer training, tokenizing and packing of `data.inputs` (training text); each stage packs
    at its own seq_len, under the campaign's output_dir."""
    val_inputs: list[str] = field(default_factory=list)
    """Held-out text for evaluation when `data.inputs` is given (the demo corpus brings its own)."""
    model: ModelConfig = field(default_factory=lambda: get_preset("hybrid-debug"))
    """The model (start from a preset with `preset = "..."`); vocab_size is taken from the tokenizer."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Workers and parallel layout."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The stages in order; a stage with init_from_previous starts from the one before."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: a campaign needs at least one stage")
        if self.stages[0].init_from_previous:
            raise ValueError(f"stages[0] ({self.stages[0].name}): the first stage has no previous stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")
        if self.ray_num_cpus < 1:
            raise ValueError(f"ray_num_cpus = {self.ray_num_cpus}: must be >= 1")


@dataclass
class PretrainConfig:
    """One stage on already packed data: pretraining, or a context extension from given weights."""

    name: str = "pretrain"
    """Run name in MLflow and Ray Train."""
    output_dir: str = "runs/pretrain"
    """Where checkpoints (and a local MLflow server's files) go."""
    ray_num_cpus: int = 4
    """Logical CPUs of a local Ray (ignored on a cluster)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking."""
    model: ModelConfig = field(default_factory=lambda: get_preset("hybrid-debug"))
    """The model; its vocab_size must cover the tokenizer's."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Workers and parallel layout."""
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


@dataclass
class EvaluateConfig:
    """Evaluate a checkpoint: held-out loss and Phonebook accuracy."""

    checkpoint: str = ""
    """A checkpoint folder (with model.pt and model_config.json)."""
    val_manifest: str = ""
    """manifest.json of held-out packed shards."""
    tokenizer: str = ""
    """The SentencePiece model file the data was tokenized with."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """What to measure."""


# Every job's config class, by job module name (`python -m jobs.<name>`).
JOB_CONFIGS: dict[str, type] = {
    "campaign": CampaignConfig,
    "pretrain": PretrainConfig,
    "extend_context": PretrainConfig,
    "tokenize": TokenizeConfig,
    "evaluate": EvaluateConfig,
}


def require(cfg: Any, *names: str) -> None:
    """Fields a job cannot run without (checked when it starts, so specs can leave them to the CLI)."""
    missing = [name for name in names if not getattr(cfg, name)]
    if missing:
        flags = " ".join(f"--{name} PATH" for name in missing)
        raise ConfigError(f"{type(cfg).__name__}: {', '.join(missing)} required (pass {flags})")


def load_job_config(cls: type, path: str | Path | None, overrides: list[str]) -> Any:
    """Load one job's spec with the model presets available."""
    return load_config(cls, path, overrides, presets=PRESETS)
