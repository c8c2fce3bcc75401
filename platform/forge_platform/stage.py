"""One tracked stage: train on Ray Train, tag the checkpoint, evaluate, record it all in MLflow.

Shared by the campaign (a child run of the campaign's run) and the single-stage jobs (pretrain,
extend_context: a run of their own).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from forge_eval import TextTokenizer
from forge_models import ModelConfig

from forge_platform.config_loader import config_hash, flatten
from forge_platform.config_sections import ParallelConfig, StageConfig
from forge_platform.evaluation import evaluate_checkpoint
from forge_platform.run_inputs import CHECKPOINT_TAG, PPL_MANIFEST_TAG, VAL_MANIFEST_TAG
from forge_platform.session import JobSession, banner, local_copy
from forge_platform.training.stage_runner import run_stage
from forge_platform.training.trainer import StageRun


PPL_SPLIT = "val_ppl"
"""The manifests' key of held-out data packed at the `ppl` suite's longest position, when that is
past the stage's seq_len (the campaign packs it: `campaign.pack_stage`)."""


@dataclass
class StageOutcome:
    """What one stage left behind."""

    name: str
    run_id: str
    checkpoint_dir: Path | str | None
    """The last checkpoint: a local folder, or a URI on an object store."""
    final_loss: float
    eval_metrics: dict[str, float]


def stage_run_tags(model_cfg: ModelConfig, manifests: dict[str, Path | str]) -> dict[str, str]:
    """The tags a stage's MLflow run starts with: what it is and, so that `jobs.evaluate --run_id` reads
    the data the stage was evaluated on, its held-out manifests (the `ppl` suite's longer rows too)."""
    tags = {"forge.kind": "stage", "forge.model": model_cfg.pattern}
    if "val" in manifests:
        tags[VAL_MANIFEST_TAG] = str(manifests["val"])
        if PPL_SPLIT in manifests:
            tags[PPL_MANIFEST_TAG] = str(manifests[PPL_SPLIT])
    return tags


def train_and_evaluate(
    stage: StageConfig,
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    manifests: dict[str, Path | str],
    tokenizer: TextTokenizer | None,
    session: JobSession,
    *,
    parent_run_id: str | None,
    checkpoint_root: Path | str,
    init_weights: str,
    ray_name: str,
    evaluation_lock: AbstractContextManager | None = None,
) -> StageOutcome:
    """Train `stage` from `manifests["train"]`, then evaluate on `manifests["val"]` if present (the `ppl`
    suite on `manifests[PPL_SPLIT]` when present: held-out data packed at its longest position).
    `evaluation_lock`: held while evaluating, when several stages run at once in this process."""
    runs = session.runs
    tags = stage_run_tags(model_cfg, manifests)
    key = f"{ray_name}/{config_hash(stage)}/{config_hash(model_cfg)}"
    run_id = runs.start(stage.name, flatten(stage), parent_run_id=parent_run_id, tags=tags, key=key)
    try:
        for split, manifest in manifests.items():
            runs.log_artifact(run_id, local_copy(manifest, session.scratch_dir), f"data/{split}")
        banner(f"stage {stage.name!r}: training {stage.train.steps} steps on {parallel.num_workers} workers")
        run = StageRun(stage=stage, model=model_cfg, parallel=parallel, train_manifest=str(manifests["train"]),
                       tracking=session.tracking, run_id=run_id, init_weights=init_weights)
        started = time.perf_counter()
        result = run_stage(run, checkpoint_root, ray_name, session.scratch_dir)
        trained_s = time.perf_counter() - started
        metrics: dict[str, float] = {}
        print(f"stage {stage.name!r}: training took {trained_s:.0f} s on Ray Train (worker start-up included)",
              flush=True)
        if result.checkpoint_dir is not None:
            runs.set_tag(run_id, CHECKPOINT_TAG, str(result.checkpoint_dir))
        if "val" in manifests and result.checkpoint_dir is not None:
            banner(f"stage {stage.name!r}: evaluating")
            evaluating = time.perf_counter()
            ppl_manifest = str(manifests[PPL_SPLIT]) if PPL_SPLIT in manifests else None
            with evaluation_lock or nullcontext():
                metrics = evaluate_checkpoint(result.checkpoint_dir, model_cfg, stage.eval, str(manifests["val"]),
                                              tokenizer, ppl_manifest=ppl_manifest, gpu_share=parallel.gpu_share)
            print(f"stage {stage.name!r}: evaluation took {time.perf_counter() - evaluating:.0f} s", flush=True)
            runs.log_metrics(run_id, metrics, step=stage.train.steps)
            print("  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    except BaseException:
        runs.send_spilled(run_id)
        runs.finish(run_id, ok=False)
        raise
    # Every tracking call here is absorbed by `runs` when the server is down (queued, sent later):
    # an outage never fails a stage that trained.
    runs.send_spilled(run_id)  # rank 0's metrics the server did not take while the stage ran
    runs.finish(run_id)
    final_loss = float(result.metrics.get("loss", float("nan")))
    return StageOutcome(stage.name, run_id, result.checkpoint_dir, final_loss, metrics)
