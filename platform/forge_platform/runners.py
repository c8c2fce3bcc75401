"""The function behind each single-purpose job: tokenize, pretrain, extend_context, evaluate.

(The campaign, which chains them, is `forge_platform.campaign`.)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from forge_data import load_tokenizer, run_pipeline
from forge_models import ModelConfig

from forge_platform.campaign import tracking_session
from forge_platform.cluster import ensure_ray
from forge_platform.config import from_dict
from forge_platform.engine.checkpoint import MODEL_CONFIG_FILE
from forge_platform.job_config import EvaluateConfig, PretrainConfig, TokenizeConfig, require
from forge_platform.stage import StageOutcome, banner, evaluate_checkpoint, train_and_evaluate
from forge_platform.tracking.runs import CampaignRuns, NullRuns
from forge_platform.training_config import StageConfig


def run_tokenize(cfg: TokenizeConfig) -> Any:
    """Train or load the tokenizer, then tokenize and pack `cfg.data.inputs` into shards."""
    if not cfg.data.inputs or not cfg.data.output_dir:
        raise ValueError("data.inputs and data.output_dir are required (pass --data.inputs PATH --data.output_dir DIR)")
    ensure_ray(cfg.ray_num_cpus, workspace=Path.cwd())
    manifest = run_pipeline(cfg.data)
    print(f"manifest: {Path(cfg.data.output_dir) / 'manifest.json'}")
    return manifest


def run_pretrain(cfg: PretrainConfig) -> StageOutcome:
    """Train one stage on packed shards and evaluate it; a run of its own in MLflow."""
    require(cfg, "train_manifest")
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"model.vocab_size = {cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    out = Path(cfg.output_dir).resolve()
    ensure_ray(cfg.ray_num_cpus, workspace=Path.cwd())
    manifests = {"train": Path(cfg.train_manifest)}
    if cfg.val_manifest:
        manifests["val"] = Path(cfg.val_manifest)
    with tracking_session(cfg.tracking, out / "mlflow") as (uri, _server):
        runs = CampaignRuns(uri, cfg.tracking.experiment) if cfg.tracking.backend == "mlflow" else NullRuns()
        outcome = train_and_evaluate(
            cfg.stage, cfg.model, cfg.parallel, manifests, tokenizer, runs,
            parent_run_id=None,
            checkpoint_root=out / "checkpoints",
            init_weights=cfg.init_weights,
            tracking_backend=cfg.tracking.backend,
            system_metrics_interval_s=cfg.tracking.system_metrics_interval_s,
            ray_name=cfg.name,
        )
    banner(f"{cfg.name}: final loss {outcome.final_loss:.4f}; checkpoint {outcome.checkpoint_dir}")
    return outcome


def run_extend_context(cfg: PretrainConfig) -> StageOutcome:
    """A context-extension stage: pretraining that must start from given weights."""
    require(cfg, "init_weights")
    return run_pretrain(cfg)


def run_evaluate(cfg: EvaluateConfig) -> dict[str, float]:
    """Evaluate a checkpoint with the model config stored beside its weights."""
    require(cfg, "checkpoint", "val_manifest")
    config_path = Path(cfg.checkpoint) / MODEL_CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{cfg.checkpoint} has no {MODEL_CONFIG_FILE}: is it a Hybrid Forge checkpoint?")
    model_cfg = from_dict(ModelConfig, json.loads(config_path.read_text()))
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    stage = dataclasses.replace(StageConfig(), eval=cfg.eval)
    metrics = evaluate_checkpoint(model_cfg, Path(cfg.checkpoint), cfg.val_manifest, tokenizer, stage)
    print(json.dumps(metrics, indent=2))
    return metrics


__all__ = ["run_evaluate", "run_extend_context", "run_pretrain", "run_tokenize"]
