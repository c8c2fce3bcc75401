"""A campaign: corpus → tokenizer → packed shards → stages (pretrain, context extensions) → evaluation.

Each step is a call into the package that owns it; this module only orders them and records them
in MLflow: one parent run for the campaign and one child run per stage, with params, per-step
metrics, the tokenizer and data manifests as artifacts, the checkpoint location as a tag, and a
plot of the loss of every stage.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from forge_data import load_tokenizer, run_pipeline, train_tokenizer
from forge_data.manifest import MANIFEST_FILE

from forge_platform.config_loader import config_hash, flatten
from forge_platform.demo_corpus import prepare_demo_corpus
from forge_platform.job_config import CampaignConfig
from forge_platform.session import JobSession, banner, job_session
from forge_platform.stage import StageOutcome, train_and_evaluate
from forge_platform.tracking.mlflow_server import LocalMlflowServer
from forge_platform.tracking.plots import plot_loss_per_stage

@dataclass
class CampaignOutcome:
    """What the whole campaign left behind, for the summary and for tests."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    stages: list[StageOutcome] = field(default_factory=list)
    loss_plot: Path | None = None
    server: LocalMlflowServer | None = None
    seconds: float = 0.0


def run_campaign(cfg: CampaignConfig) -> CampaignOutcome:
    """Run every stage of `cfg` in order and return where everything went."""
    started = time.perf_counter()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    banner(f"campaign {cfg.name!r}: starting Ray")
    with job_session(cfg.ray_num_cpus, cfg.tracking, out) as session:
        runs = session.runs
        params = {k: v for k, v in flatten(cfg).items() if not k.startswith("stages")}
        parent = runs.start(cfg.name, params, tags={"forge.kind": "campaign"}, key=f"{cfg.name}/{config_hash(cfg)}")
        outcome = CampaignOutcome(session.tracking.uri, cfg.tracking.experiment, parent, server=session.server)
        try:
            _run_stages(cfg, out, session, parent, outcome)
        except BaseException:
            runs.finish(parent, ok=False)
            raise
        histories = {s.name: runs.loss_history(s.run_id) for s in outcome.stages}
        if any(histories.values()):
            outcome.loss_plot = plot_loss_per_stage(histories, out / "loss_per_stage.png", f"{cfg.name}: loss per stage")
            runs.log_artifact(parent, str(outcome.loss_plot))
        final = {f"{s.name}.{k}": v for s in outcome.stages for k, v in s.eval_metrics.items()}
        runs.log_metrics(parent, final)
        runs.finish(parent)
        outcome.seconds = time.perf_counter() - started
        print_summary(cfg, outcome, session)
    return outcome


def _run_stages(cfg: CampaignConfig, out: Path, session: JobSession, parent: str,
                outcome: CampaignOutcome) -> None:
    runs = session.runs
    if cfg.data.inputs:
        inputs = {"train": list(cfg.data.inputs), "val": list(cfg.val_inputs)}
    else:
        banner("preparing the demo corpus")
        corpus = prepare_demo_corpus(cfg.corpus, out / "corpus")
        print(f"{corpus.num_train_docs} training and {corpus.num_val_docs} held-out documents", flush=True)
        inputs = {"train": [str(corpus.train_dir)], "val": [str(corpus.val_dir)]}

    banner("training the SentencePiece tokenizer")
    tokenizer_path = train_tokenizer(
        cfg.data.tokenizer, inputs["train"], str(out / "tokenizer"), format=cfg.data.format,
        text_field=cfg.data.text_field, include_suffixes=cfg.data.include_suffixes, cleaning=cfg.data.cleaning,
    )
    tokenizer = load_tokenizer(tokenizer_path)
    runs.log_artifact(parent, str(tokenizer_path), "tokenizer")
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    print(f"vocabulary {tokenizer.vocab_size}; model pattern {model_cfg.pattern!r}", flush=True)

    previous: Path | None = None
    for index, stage in enumerate(cfg.stages):
        banner(f"stage {index + 1}/{len(cfg.stages)} {stage.name!r}: packing data at {stage.seq_len} tokens")
        manifests = {}
        for split, split_inputs in inputs.items():
            if not split_inputs:
                continue
            data_cfg = dataclasses.replace(
                cfg.data,
                inputs=split_inputs,
                output_dir=str(out / "data" / stage.name / split),
                tokenizer=dataclasses.replace(cfg.data.tokenizer, model_path=str(tokenizer_path)),
                packing=dataclasses.replace(cfg.data.packing, seq_len=stage.seq_len),
            )
            run_pipeline(data_cfg)
            manifests[split] = Path(data_cfg.output_dir) / MANIFEST_FILE
        outcome.stages.append(
            train_and_evaluate(
                stage, model_cfg, cfg.parallel, manifests, tokenizer, session,
                parent_run_id=parent,
                checkpoint_root=out / "checkpoints",
                init_weights=str(previous) if stage.init_from_previous and previous else "",
                ray_name=f"{cfg.name}-{stage.name}",
            )
        )
        previous = outcome.stages[-1].checkpoint_dir


def print_summary(cfg: CampaignConfig, outcome: CampaignOutcome, session: JobSession) -> None:
    runs = session.runs
    banner(f"campaign {cfg.name!r} finished in {outcome.seconds:.0f} s")
    for stage in outcome.stages:
        evals = ", ".join(f"{k}={v:.3g}" for k, v in stage.eval_metrics.items() if not k.endswith("_tokens"))
        print(f"- {stage.name}: final train loss {stage.final_loss:.4f}; {evals}")
        print(f"  checkpoint: {stage.checkpoint_dir}")
    if outcome.loss_plot:
        print(f"loss plot: {outcome.loss_plot}")
    if cfg.tracking.backend != "mlflow":
        return
    print(f"\nMLflow experiment {outcome.experiment!r}: parent run {cfg.name!r} {runs.ui_url(outcome.parent_run_id)}")
    print("  child runs (one per stage): loss, lr, grad_norm, tokens_per_s per step; val_loss and phonebook accuracy;")
    print("  artifacts: the tokenizer, the data manifests, loss_per_stage.png; tag forge.checkpoint = checkpoint folder")
    if outcome.server is not None:
        print(f"The job's own server has stopped. Browse the runs again with:\n  {outcome.server.ui_command}")
        print("  then open http://127.0.0.1:5000")
