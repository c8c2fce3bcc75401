"""One tracked stage: train on Ray Train, tag the checkpoint, evaluate, record it all in MLflow.

Shared by the campaign (a child run of the campaign's run) and the single-stage jobs (pretrain,
extend_context: a run of their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from forge_models import ModelConfig, build_model

from forge_platform.config import config_hash, flatten
from forge_platform.engine.checkpoint import load_weights
from forge_platform.engine.stage_runner import run_stage
from forge_platform.engine.train_loop import StageRun
from forge_platform.evaluation.phonebook import TextTokenizer, phonebook_accuracy
from forge_platform.evaluation.validation import validation_loss
from forge_platform.tracking.runs import CampaignRuns, NullRuns
from forge_platform.training_config import ParallelConfig, StageConfig

CHECKPOINT_TAG = "forge.checkpoint"


@dataclass
class StageOutcome:
    """What one stage left behind."""

    name: str
    run_id: str
    checkpoint_dir: Path | None
    final_loss: float
    eval_metrics: dict[str, float]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def train_and_evaluate(
    stage: StageConfig,
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    manifests: dict[str, Path],
    tokenizer: TextTokenizer | None,
    runs: CampaignRuns | NullRuns,
    *,
    parent_run_id: str | None,
    checkpoint_root: Path,
    init_weights: str,
    tracking_backend: str,
    ray_name: str,
    system_metrics_interval_s: float = 0.0,
) -> StageOutcome:
    """Train `stage` from `manifests["train"]`, then evaluate on `manifests["val"]` if present."""
    tags = {"forge.kind": "stage", "forge.model": model_cfg.pattern}
    key = f"{ray_name}/{config_hash(stage)}/{config_hash(model_cfg)}"
    run_id = runs.start(stage.name, flatten(stage), parent_run_id=parent_run_id, tags=tags, key=key)
    try:
        for split, manifest in manifests.items():
            runs.log_artifact(run_id, str(manifest), f"data/{split}")
        banner(f"stage {stage.name!r}: training {stage.train.steps} steps on {parallel.num_workers} workers")
        run = StageRun(
            stage=stage,
            model=model_cfg,
            parallel=parallel,
            train_manifest=str(manifests["train"]),
            tracking_backend=tracking_backend,
            tracking_uri=runs.tracking_uri,
            run_id=run_id,
            system_metrics_interval_s=system_metrics_interval_s,
            init_weights=init_weights,
        )
        result = run_stage(run, checkpoint_root, ray_name)
        metrics: dict[str, float] = {}
        if result.checkpoint_dir is not None:
            runs.set_tag(run_id, CHECKPOINT_TAG, str(result.checkpoint_dir))
        if "val" in manifests and result.checkpoint_dir is not None:
            banner(f"stage {stage.name!r}: evaluating")
            metrics = evaluate_checkpoint(model_cfg, result.checkpoint_dir, str(manifests["val"]), tokenizer, stage)
            runs.log_metrics(run_id, metrics, step=stage.train.steps)
            print("  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    except BaseException:
        runs.finish(run_id, ok=False)
        raise
    runs.finish(run_id)
    final_loss = float(result.metrics.get("loss", float("nan")))
    return StageOutcome(stage.name, run_id, result.checkpoint_dir, final_loss, metrics)


def evaluate_checkpoint(model_cfg: ModelConfig, checkpoint_dir: Path, val_manifest: str,
                        tokenizer: TextTokenizer | None, stage: StageConfig) -> dict[str, float]:
    """Held-out loss, and Phonebook accuracy when a tokenizer is given, of a stage's consolidated weights."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    load_weights(model, checkpoint_dir)
    metrics = validation_loss(model, val_manifest, stage.eval.val_batches)
    if tokenizer is not None and stage.eval.phonebook_queries:
        for entries in stage.eval.phonebook_entries:
            metrics.update(phonebook_accuracy(model, tokenizer, entries, stage.eval.phonebook_queries))
    return metrics
