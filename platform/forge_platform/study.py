"""A study: several models trained on the same data, tokenizer, token budget and seeds, each run
evaluated by the same suites, compared with paired confidence intervals (forge_platform.study_report).

Order: the demo corpus plus recall practice documents (forge_eval.practice) -> one tokenizer ->
tokens once -> packed once at the study's sequence length (every arm reads the same rows in the same
order for a seed) -> per arm and seed: a tracked stage (train, checkpoint, evaluate) as a child of
the study's MLflow run -> the results page, its plots and the per-arm means on the parent run.

A study re-run with the same settings skips the runs that finished (their checkpoints and metrics
are recorded in `study_progress.json`, as a campaign's stages are), so a driver that died costs only
the run it was in.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from forge_data import storage
from forge_data.manifest import MANIFEST_FILE
from forge_eval.practice import practice_documents
from forge_models import ModelConfig, build_model, use_fixed_kernel_configs

from forge_platform.campaign import (CampaignProgress, demo_inputs, describe_stage_data, file_sha256, layout_free,
                                    pack_stage, tokenize_once)
from forge_platform.config_loader import config_hash, flatten
from forge_platform.config_sections import StageConfig
from forge_platform.demo_corpus import DemoCorpus
from forge_platform.job_config import StudyArm, StudyConfig
from forge_platform.memory_plan import plan_for_job
from forge_platform.session import JobPlaces, JobSession, banner, job_places, job_session
from forge_platform.stage import StageOutcome, train_and_evaluate
from forge_platform.study_report import RunResult, StudyResults, write_results

PROGRESS_FILE = "study_progress.json"


@dataclass
class StudyOutcome:
    """What a study left behind, for the summary and for tests."""

    tracking_uri: str
    parent_run_id: str
    runs: list[RunResult] = field(default_factory=list)
    results: StudyResults | None = None
    seconds: float = 0.0
    runs_seconds: float = 0.0
    """Wall time of the runs (training and evaluation) in this invocation."""


def run_study(cfg: StudyConfig) -> StudyOutcome:
    """Train and evaluate every arm of `cfg` once per seed, then write the results page."""
    started = time.perf_counter()
    # The memory plan per arm: a run that cannot fit is refused before any tokenizing, and `auto`
    # recompute is resolved for each model.
    planned = {arm.name: plan_for_job(arm.model, [cfg.stage], cfg.parallel)[0] for arm in cfg.arms}
    if not cfg.autotune_kernels:  # before Ray starts, so its workers inherit it (cluster.worker_env)
        use_fixed_kernel_configs()
    with job_places(cfg.output_dir, cfg.scratch_dir, cfg.tracking) as places:
        banner(f"study {cfg.name!r}: {len(cfg.arms)} arms x {len(cfg.seeds)} seeds; starting Ray")
        with job_session(cfg.ray_num_cpus, cfg.tracking, places) as session:
            return _run_study(cfg, planned, places, session, started)


def _run_study(cfg: StudyConfig, planned: dict[str, StageConfig], places: JobPlaces, session: JobSession,
               started: float) -> StudyOutcome:
    runs = session.runs
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("arms")}
    params["arms"] = ", ".join(f"{a.name}={a.model.pattern}{'' if a.document_resets else ' (no resets)'}"
                               for a in cfg.arms)
    parent = runs.start(cfg.name, params, tags={"forge.kind": "study"}, key=f"{cfg.name}/{config_hash(cfg)}")
    outcome = StudyOutcome(session.tracking.uri, parent)
    try:
        outcome.runs, outcome.runs_seconds = _train_every_run(cfg, planned, places, session, parent)
        outcome.results = write_results(cfg, outcome.runs, places, outcome.runs_seconds, parent)
        for path in outcome.results.files:
            runs.log_artifact(parent, str(path), "results")
        runs.log_metrics(parent, outcome.results.parent_metrics)
    except BaseException:
        runs.finish(parent, ok=False)
        raise
    runs.finish(parent)
    outcome.seconds = time.perf_counter() - started
    banner(f"study {cfg.name!r} finished in {outcome.seconds:.0f} s")
    print(outcome.results.summary, flush=True)
    if cfg.tracking.backend == "mlflow":
        print(f"\nMLflow: parent run {cfg.name!r} {runs.ui_url(parent)} (a child run per arm and seed)", flush=True)
    return outcome


def _train_every_run(cfg: StudyConfig, planned: dict[str, StageConfig], places: JobPlaces, session: JobSession,
                     parent: str) -> tuple[list[RunResult], float]:
    """Every arm and seed trained and evaluated (or found finished); also the wall time the runs took."""
    inputs = demo_inputs(cfg.corpus, places, lambda corpus: write_practice(cfg, corpus))
    stage = cfg.stage
    tokens = tokenize_once(cfg.data, inputs, places, session, parent, [stage])
    banner(f"packing the data once at {stage.seq_len} tokens (every arm and seed trains on these rows)")
    data_dir = places.join("data", "packed")
    packed = pack_stage(cfg.data, stage, 0, tokens.stores, data_dir)
    print(describe_stage_data(stage, packed), flush=True)
    manifests: dict[str, Path | str] = {split: storage.join(data_dir, split, MANIFEST_FILE) for split in packed}

    progress = CampaignProgress(places.join(PROGRESS_FILE))
    base_key = config_hash({"corpus": cfg.corpus, "practice": [cfg.practice_documents, cfg.practice_seed,
                                                               cfg.practice], "data": cfg.data,
                            "tokenizer": file_sha256(tokens.tokenizer_path)})
    parallel = cfg.run_parallel()
    plan = [(arm, seed) for arm in cfg.arms for seed in cfg.seeds]
    # Evaluations run in this process, one at a time: Triton's autotuner keeps per-call state on the
    # kernel object, and two threads evaluating Mamba-2 models at once failed inside it on an H200
    # (TypeError in autotuner._bench). They are short next to training, which runs in Ray's workers.
    evaluating = threading.Lock()

    def one_run(number: int, arm: StudyArm, seed: int) -> RunResult:
        model_cfg = dataclasses.replace(arm.model, vocab_size=tokens.tokenizer.vocab_size)
        run_stage = arm_stage(planned[arm.name], arm, seed)
        key = progress_key(base_key, arm_stage(cfg.stage, arm, seed), model_cfg, cfg.parallel.dims.dp)
        done = progress.finished(run_stage.name, key)
        if done is not None:
            banner(f"run {number}/{len(plan)}: {run_stage.name} finished in an earlier run of this study "
                   "with the same settings; skipped")
            return run_result(arm, seed, model_cfg, done, ran_now=False)
        banner(f"run {number}/{len(plan)}: {arm.name} (pattern {model_cfg.pattern!r}, document resets "
               f"{'on' if arm.document_resets else 'off'}), seed {seed}")
        started = time.perf_counter()
        done = train_and_evaluate(
            dataclasses.replace(run_stage, eval=run_stage.eval.for_length(stage.seq_len)), model_cfg,
            parallel, manifests, tokens.tokenizer, session,
            parent_run_id=parent, checkpoint_root=places.join("checkpoints"), init_weights="",
            ray_name=f"{cfg.name}-{run_stage.name}", evaluation_lock=evaluating,
        )
        done.eval_metrics["run_seconds"] = time.perf_counter() - started
        for tag, value in (("forge.arm", arm.name), ("forge.seed", str(seed)),
                           ("forge.document_resets", str(arm.document_resets).lower())):
            session.runs.set_tag(done.run_id, tag, value)
        progress.record(done, key)  # thread-safe: runs finish in any order when several train at once
        return run_result(arm, seed, model_cfg, done, ran_now=True)

    started = time.perf_counter()
    if cfg.concurrent_runs == 1:
        return [one_run(number, arm, seed) for number, (arm, seed) in enumerate(plan, 1)], time.perf_counter() - started
    banner(f"{len(plan)} runs, {cfg.concurrent_runs} at a time"
           + (f", each on {parallel.gpu_share:.2g} of a GPU" if parallel.use_gpu else ""))
    with ThreadPoolExecutor(cfg.concurrent_runs, thread_name_prefix="study-run") as pool:
        futures = [pool.submit(one_run, number, arm, seed) for number, (arm, seed) in enumerate(plan, 1)]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            # Runs not started yet are dropped; those training finish (and are recorded, so a rerun
            # skips them) before the first failure is raised.
            for future in futures:
                future.cancel()
            raise failed[0].exception()
        return [future.result() for future in futures], time.perf_counter() - started


def progress_key(base_key: str, stage: StageConfig, model_cfg: ModelConfig, data_parallel: int) -> str:
    """What a run is recorded as finished under: the data (`base_key`), the model and the stage as
    specified, with its global batch in rows instead of the layout's batch shape and recompute mode
    (as a campaign's stages: a rerun on another layout or GPU skips what finished)."""
    return config_hash({"base": base_key, **layout_free(stage, data_parallel), "model": model_cfg})


def arm_stage(stage: StageConfig, arm: StudyArm, seed: int) -> StageConfig:
    """The stage one arm runs with one seed: its own name, seed and document resets."""
    train = dataclasses.replace(stage.train, seed=seed, document_resets=arm.document_resets)
    return dataclasses.replace(stage, name=f"{arm.name}-seed{seed}", train=train)


def run_result(arm: StudyArm, seed: int, model_cfg: ModelConfig, done: StageOutcome, ran_now: bool) -> RunResult:
    """One run's row of the results (`ran_now`: trained by this invocation, not skipped as finished)."""
    num_params = build_model(model_cfg, device="meta").num_parameters()  # no memory, no init
    return RunResult(arm=arm.name, seed=seed, pattern=model_cfg.pattern, document_resets=arm.document_resets,
                     num_params=num_params, final_loss=done.final_loss, run_id=done.run_id,
                     seconds=float(done.eval_metrics.get("run_seconds", 0.0)), ran_now=ran_now,
                     metrics={k: v for k, v in done.eval_metrics.items() if k != "run_seconds"})


def write_practice(cfg: StudyConfig, corpus: DemoCorpus) -> DemoCorpus:
    """Add the study's practice documents to the corpus, one file each: `practice_documents` to the
    training folder and a tenth as many (another seed) to the held-out folder, so held-out rows hold
    several short documents and the resets question is measured on document boundaries."""
    counts = {}
    for folder, count, seed in ((corpus.train_dir, cfg.practice_documents, cfg.practice_seed),
                                (corpus.val_dir, -(-cfg.practice_documents // 10), cfg.practice_seed + 1)):
        counts[folder] = 0
        for counts[folder], text in enumerate(practice_documents(count, seed, cfg.practice), 1):
            (folder / f"practice-{counts[folder]:06d}.txt").write_text(text, encoding="utf-8")
    return dataclasses.replace(corpus, num_train_docs=corpus.num_train_docs + counts[corpus.train_dir],
                               num_val_docs=corpus.num_val_docs + counts[corpus.val_dir])
