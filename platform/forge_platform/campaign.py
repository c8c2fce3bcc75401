"""A campaign: corpus → tokenizer → tokens (once) → per stage: packed shards → training → evaluation.

The corpus is tokenized once into a token store per split (forge_data.tokenize_corpus); each stage
packs those tokens at its own length under its own long-document policy (forge_data.pack_tokens)
and says how much of its training data sits in documents longer than the previous stage's rows.
When a stage's loss-by-position suite measures past its own length, its held-out data is packed once
more at that length (`pack_stage`, `PPL_SPLIT`).

Each step is a call into the package that owns it; this module only orders them and records them
in MLflow: one parent run for the campaign and one child run per stage, with params, per-step
metrics, the tokenizer and data manifests as artifacts, the checkpoint location as a tag, and a
plot of the loss of every stage.

`output_dir` may be local or on an object store (s3://, gs://): every place below it is named
through `forge_data.storage` (`JobPlaces.join`), and what must pass through local disk (the demo
corpus, plots, artifacts to log) goes through the job's scratch folder and is uploaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge_data import storage
from forge_data import (DataPipelineConfig, LongContextConfig, Manifest, TokenStore, load_tokenizer, pack_tokens,
                        tokenize_corpus, train_tokenizer)
from forge_data.manifest import MANIFEST_FILE
from forge_data.tokenizer import Tokenizer
from forge_models import ModelConfig

from forge_platform.config_loader import ConfigError, config_hash, flatten
from forge_platform.config_sections import CorpusConfig, StageConfig
from forge_platform.demo_corpus import DemoCorpus, prepare_demo_corpus
from forge_platform.evaluation import check_stage_evaluations
from forge_platform.job_config import CampaignConfig
from forge_platform.memory_plan import plan_for_job
from forge_platform.session import JobPlaces, JobSession, banner, job_places, job_session, local_copy
from forge_platform.stage import PPL_SPLIT, StageOutcome, train_and_evaluate
from forge_platform.tracking.mlflow_server import LocalMlflowServer
from forge_platform.tracking.model_registry import register_campaign_model
from forge_platform.tracking.plots import plot_campaign_evaluation, plot_loss_per_stage

@dataclass
class CampaignOutcome:
    """What the whole campaign left behind, for the summary and for tests."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    stages: list[StageOutcome] = field(default_factory=list)
    loss_plot: Path | str | None = None
    server: LocalMlflowServer | None = None
    seconds: float = 0.0


def run_campaign(cfg: CampaignConfig) -> CampaignOutcome:
    """Run every stage of `cfg` in order and return where everything went."""
    started = time.perf_counter()
    check_long_document_settings(cfg)
    # The memory plan: a stage that cannot fit is refused before any tokenizing.
    cfg = dataclasses.replace(cfg, stages=plan_for_job(cfg.planned_model, cfg.stages, cfg.parallel))
    with job_places(cfg.output_dir, cfg.scratch_dir, cfg.tracking) as places:
        banner(f"campaign {cfg.name!r}: starting Ray")
        with job_session(cfg.ray_num_cpus, cfg.tracking, places) as session:
            return _run_campaign(cfg, places, session, started)


def _run_campaign(cfg: CampaignConfig, places: JobPlaces, session: JobSession, started: float) -> CampaignOutcome:
    """The campaign's runs in MLflow around its stages, then its plots and summary."""
    runs = session.runs
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("stages")}
    parent = runs.start(cfg.name, params, tags={"forge.kind": "campaign"}, key=f"{cfg.name}/{config_hash(cfg)}")
    outcome = CampaignOutcome(session.tracking.uri, cfg.tracking.experiment, parent, server=session.server)
    try:
        _run_stages(cfg, places, session, parent, outcome)
    except BaseException:
        runs.finish(parent, ok=False)
        raise
    histories = {s.name: runs.loss_history(s.run_id) for s in outcome.stages}
    if any(histories.values()):
        outcome.loss_plot = plot_loss_per_stage(histories, places.local("loss_per_stage.png"),
                                                f"{cfg.name}: loss per stage")
        runs.log_artifact(parent, str(outcome.loss_plot))
        outcome.loss_plot = places.upload(outcome.loss_plot)
    for plot in plot_campaign_evaluation({s.name: s.eval_metrics for s in outcome.stages}, places.local(), cfg.name):
        runs.log_artifact(parent, str(plot))  # accuracy vs length, NIAH depth x length, loss by position
        places.upload(plot)
    final = {f"{s.name}.{k}": v for s in outcome.stages for k, v in s.eval_metrics.items()}
    runs.log_metrics(parent, final)
    register_campaign_model(cfg, parent, outcome.stages, runs)  # the final weights, with their lineage
    runs.finish(parent)
    outcome.seconds = time.perf_counter() - started
    print_summary(cfg, outcome, session)
    return outcome


def _run_stages(cfg: CampaignConfig, places: JobPlaces, session: JobSession, parent: str,
                outcome: CampaignOutcome) -> None:
    runs = session.runs
    if cfg.data.inputs:
        inputs = {"train": list(cfg.data.inputs), "val": list(cfg.val_inputs)}
    else:
        inputs = demo_inputs(cfg.corpus, places)

    tokens = tokenize_once(cfg.data, inputs, places, session, parent, cfg.stages)
    tokenizer_path, tokenizer, stores = tokens.tokenizer_path, tokens.tokenizer, tokens.stores
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    print(f"vocabulary {tokenizer.vocab_size}; model pattern {model_cfg.pattern!r}", flush=True)

    progress = CampaignProgress(places.join(PROGRESS_FILE))
    keys = stage_progress_keys(cfg, inputs, model_cfg, file_sha256(tokenizer_path))
    previous: Path | str | None = None
    for index, (stage, key) in enumerate(zip(cfg.stages, keys)):
        done = progress.finished(stage.name, key)
        if done is not None:
            banner(f"stage {index + 1}/{len(cfg.stages)} {stage.name!r}: finished in an earlier run of this "
                   f"campaign with the same settings and data; skipped (checkpoint {done.checkpoint_dir})")
            outcome.stages.append(done)
            previous = done.checkpoint_dir
            continue
        previous_seq_len = cfg.stages[index - 1].seq_len if index else 0
        banner(f"stage {index + 1}/{len(cfg.stages)} {stage.name!r}: packing data at {stage.seq_len} tokens")
        stage_data = places.join("data", stage.name)
        packed = pack_stage(cfg.data, stage, previous_seq_len, stores, stage_data)
        print(describe_stage_data(stage, packed), flush=True)
        if previous_seq_len:
            runs.log_metrics(parent, {f"{stage.name}.{split}_long_doc_share": m.long_doc_share
                                      for split, m in packed.items() if m.long_doc_share is not None})
        manifests: dict[str, Path | str] = {split: storage.join(stage_data, split, MANIFEST_FILE) for split in packed}
        outcome.stages.append(
            train_and_evaluate(  # evaluated at the lengths its eval.length_multiples of seq_len name, if any
                dataclasses.replace(stage, eval=stage.eval.for_length(stage.seq_len)), model_cfg, cfg.parallel,
                manifests, tokenizer, session,
                parent_run_id=parent,
                checkpoint_root=places.join("checkpoints"),
                init_weights=str(previous) if stage.init_from_previous and previous else "",
                ray_name=f"{cfg.name}-{stage.name}",
            )
        )
        progress.record(outcome.stages[-1], key)
        previous = outcome.stages[-1].checkpoint_dir


def demo_inputs(corpus_cfg: CorpusConfig, places: JobPlaces,
                add: Callable[[DemoCorpus], DemoCorpus] | None = None) -> dict[str, list[str]]:
    """Write the bundled demo corpus under the job's places (with what `add` writes into its folders,
    returning the corpus with its new counts); the inputs of each split, where every node reads them."""
    banner("preparing the demo corpus")
    corpus = prepare_demo_corpus(corpus_cfg, places.local("corpus"))
    if add is not None:
        corpus = add(corpus)
    print(f"{corpus.num_train_docs} training and {corpus.num_val_docs} held-out documents", flush=True)
    corpus_dir = places.upload(places.local("corpus"))  # on a store, every node reads it there
    return {"train": [storage.join(corpus_dir, "train")], "val": [storage.join(corpus_dir, "val")]}


@dataclass
class CorpusTokens:
    """A job's tokenizer and its corpus tokenized once, per split."""

    tokenizer_path: Path | str
    tokenizer: Tokenizer
    stores: dict[str, TokenStore]


def tokenize_once(data: DataPipelineConfig, inputs: dict[str, list[str]], places: JobPlaces, session: JobSession,
                  parent: str, stages: list[StageConfig]) -> CorpusTokens:
    """Train the tokenizer on the training inputs, check every stage's evaluations can be built with it
    (before anything trains), log it on the parent run, and tokenize each split once."""
    banner("training the SentencePiece tokenizer")
    tokenizer_path = train_tokenizer(
        data.tokenizer, inputs["train"], places.join("tokenizer"), format=data.format,
        text_field=data.text_field, include_suffixes=data.include_suffixes, cleaning=data.cleaning,
    )
    tokenizer = load_tokenizer(tokenizer_path)
    check_stage_evaluations(tokenizer, stages)
    session.runs.log_artifact(parent, local_copy(tokenizer_path, places.scratch), "tokenizer")
    banner("tokenizing the corpus once (every stage packs these tokens)")
    stores = {split: tokenize_split(data, split_inputs, str(tokenizer_path), places.join("data", "tokens", split))
              for split, split_inputs in inputs.items() if split_inputs}
    return CorpusTokens(tokenizer_path, tokenizer, stores)


PROGRESS_FILE = "campaign_progress.json"

LAYOUT_ONLY_TRAIN_FIELDS = {"micro_batch_size": 1, "grad_accum_steps": 1, "recompute": "auto"}
"""`train` fields that follow the parallel layout without changing a stage's result, with the value
the progress key puts in their place: the batch shape regroups the same global batch (its rows,
micro x accum x dp, stand in the key instead), and the memory plan resolves `auto` recompute per layout."""


def stage_progress_keys(cfg: CampaignConfig, inputs: dict[str, list[str]], model_cfg: ModelConfig,
                        tokenizer_sha256: str) -> list[str]:
    """Per stage of `cfg`, the key `CampaignProgress` records it finished under: a hash of everything
    that changes its result, chained (a changed earlier stage re-runs the later ones): the corpus,
    data settings, inputs, model, tokenizer (`tokenizer_sha256`), and each stage up to it with its
    global batch in rows. The parallel layout (tp x cp x dp, and the per-rank batch shape it implies)
    is left out: checkpoints reshard, so a rerun on another layout skips what finished."""
    key = config_hash({"corpus": cfg.corpus, "data": cfg.data, "inputs": inputs, "model": model_cfg,
                       "tokenizer": tokenizer_sha256})
    keys = []
    for stage in cfg.stages:
        key = config_hash({"before": key, **layout_free(stage, cfg.parallel.dims.dp)})
        keys.append(key)
    return keys


def layout_free(stage: StageConfig, data_parallel: int) -> dict[str, Any]:
    """What of `stage` decides its result, for progress keys: the stage with the fields that follow the
    layout (`LAYOUT_ONLY_TRAIN_FIELDS`) set aside, and its global batch in rows in their place."""
    rows = stage.train.micro_batch_size * stage.train.grad_accum_steps * data_parallel
    result = dataclasses.replace(stage, train=dataclasses.replace(stage.train, **LAYOUT_ONLY_TRAIN_FIELDS))
    return {"stage": result, "global_batch_rows": rows}


class CampaignProgress:
    """Which stages of this campaign (its output_dir) finished, under which settings and data: a
    JSON file at `path` (local or on an object store), replaced whole on every record.

    Re-running a campaign's command after its driver died skips the stages that finished, if
    nothing they depend on changed (`stage_progress_keys`: the corpus, data, tokenizer, model and
    every stage up to it, not the parallel layout), and the unfinished stage resumes from its last checkpoint (Ray Train
    hands a rerun of a stage its latest checkpoint; the checkpoint manager checks it).

    Records may come from several threads (a study's concurrent runs): one at a time, so no file
    is written from a half-updated table."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self.stages: dict[str, dict] = json.loads(storage.read_bytes(self.path))["stages"]
        except storage.StorageNotFound:
            self.stages = {}

    def finished(self, name: str, key: str) -> StageOutcome | None:
        record = self.stages.get(name)
        if record is None or record["key"] != key or not storage.is_dir(record["checkpoint_dir"]):
            return None
        where = record["checkpoint_dir"]
        return StageOutcome(name, record["run_id"], where if storage.is_uri(where) else Path(where),
                            record["final_loss"], record["eval_metrics"])

    def record(self, stage: StageOutcome, key: str) -> None:
        if stage.checkpoint_dir is None:  # nothing to start the next stage from: not resumable
            return
        with self._lock:
            self.stages[stage.name] = {"key": key, "checkpoint_dir": str(stage.checkpoint_dir), "run_id": stage.run_id,
                                       "final_loss": stage.final_loss, "eval_metrics": stage.eval_metrics}
            storage.publish(self.path, json.dumps({"stages": self.stages}, indent=2, sort_keys=True,
                                                  default=str).encode())


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file, local or on an object store."""
    return hashlib.sha256(storage.read_bytes(str(path))).hexdigest()


def check_long_document_settings(cfg: CampaignConfig) -> None:
    """A campaign's long-document policy is per stage: refuse settings it would silently ignore."""
    if cfg.data.long_context != LongContextConfig():
        raise ConfigError(f"data.long_context = {cfg.data.long_context}: must be left at its defaults in a campaign "
                          "(each stage has its own: stages.N.long_documents)")
    for index, stage in enumerate(cfg.stages):
        if stage.long_documents.previous_seq_len:
            raise ConfigError(f"stages.{index}.long_documents.previous_seq_len = "
                              f"{stage.long_documents.previous_seq_len}: must be 0 in a campaign "
                              "(it is the previous stage's seq_len, filled in by the campaign)")


def tokenize_split(data: DataPipelineConfig, inputs: list[str], tokenizer_path: str, store_dir: str | Path,
                   use_ray: bool = True) -> TokenStore:
    """Read, clean and tokenize one split's inputs once, into `store_dir`."""
    cfg = dataclasses.replace(data, inputs=inputs, output_dir=str(store_dir),
                              tokenizer=dataclasses.replace(data.tokenizer, model_path=tokenizer_path))
    return tokenize_corpus(cfg, str(store_dir), use_ray=use_ray)


def ppl_seq_len(stage: StageConfig) -> int:
    """The row length the stage's `ppl` suite needs (its `ppl_max_position`, with `length_multiples`
    resolved) when that is longer than the stage's own rows; 0 when the stage's rows suffice or
    the suite does not run."""
    eval_cfg = stage.eval.for_length(stage.seq_len)
    if "ppl" not in eval_cfg.suites or eval_cfg.ppl_max_position <= stage.seq_len:
        return 0
    return eval_cfg.ppl_max_position


def pack_stage(data: DataPipelineConfig, stage: StageConfig, previous_seq_len: int, stores: dict[str, TokenStore],
               out_dir: str | Path) -> dict[str, Manifest]:
    """Pack every split's tokens for one stage into `out_dir/<split>`: rows of the stage's seq_len; the
    training split under the stage's long-document policy, held-out data whole (every stage is
    evaluated on the same documents). Both report their share of tokens in documents longer than
    `previous_seq_len` (the stage before's rows; 0 for the first stage: nothing to report).

    When the stage's `ppl` suite measures positions past its seq_len (`ppl_seq_len`), the held-out
    data is packed a second time, whole, at that length into `out_dir/val_ppl` (`PPL_SPLIT`): rows
    of the stage's own length stop at it, so loss by position could never see past the trained
    length. The `validation` suite keeps reading rows of the stage's own length, so its held-out
    loss means the same across stages."""
    manifests = {}
    for split, store in stores.items():
        policy = stage.long_documents if split == "train" else LongContextConfig()
        cfg = dataclasses.replace(
            data, output_dir=storage.join(str(out_dir), split),
            packing=dataclasses.replace(data.packing, seq_len=stage.seq_len),
            long_context=dataclasses.replace(policy, previous_seq_len=previous_seq_len),
        )
        manifests[split] = pack_tokens(store, cfg)
    longest = ppl_seq_len(stage)
    if longest and "val" in stores:
        cfg = dataclasses.replace(data, output_dir=storage.join(str(out_dir), PPL_SPLIT),
                                  packing=dataclasses.replace(data.packing, seq_len=longest),
                                  long_context=LongContextConfig())
        manifests[PPL_SPLIT] = pack_tokens(stores["val"], cfg)
    return manifests


def describe_stage_data(stage: StageConfig, manifests: dict[str, Manifest]) -> str:
    """What a stage trains on, in a line per split: rows, documents, and the long-document share."""
    lines = []
    for split, m in manifests.items():
        c = m.counts
        line = (f"{stage.name} {split}: {m.num_rows} rows of {m.seq_len} tokens from {c['docs_packed']} documents "
                f"({c['docs_repeated']} extra copies, {m.rejected_by_reason.get('long_context_filtered', 0)} "
                f"filtered, {m.rejected_by_reason.get('long_context_mixed_out', 0)} mixed out)")
        if m.long_doc_share is not None:
            line += (f"; {m.long_doc_share:.1%} of its tokens sit in documents longer than {m.previous_seq_len} "
                     "tokens (the previous stage's rows)")
        lines.append(line)
    return "\n".join(lines)


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
