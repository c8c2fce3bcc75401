"""The job specs users submit: one dataclass per job, built from TOML by `forge_platform.config`.

Sections reuse the packages' own config dataclasses (`forge_models.ModelConfig`,
`forge_data.DataPipelineConfig`) and the stage sections of
`forge_platform.training_config`, so a field is defined, documented and validated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forge_data import DataPipelineConfig
from forge_models import ModelConfig, get_preset

from forge_platform.config import load_config
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
    """Raw text."""
    data: DataPipelineConfig = field(default_factory=DataPipelineConfig)
    """Tokenizer training, tokenizing and packing; `inputs` and `output_dir` are the campaign's, and
    each stage packs at its own seq_len."""
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

    def __post_init__(self) -> None:
        for name in ("checkpoint", "val_manifest", "tokenizer"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required (pass --{name} PATH)")


JOB_CONFIGS: dict[str, type] = {"campaign": CampaignConfig, "evaluate": EvaluateConfig}


def load_job_config(cls: type, path: str | Path | None, overrides: list[str]) -> Any:
    """Load one job's spec with the model presets available."""
    return load_config(cls, path, overrides, presets=PRESETS)
