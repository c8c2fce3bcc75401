"""The function behind each single-purpose job: tokenize, pretrain, extend_context, evaluate.

(The campaign, which chains them, is `forge_platform.campaign`; both start their work through
`forge_platform.session`.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from forge_data import Manifest, load_tokenizer, run_pipeline, storage
from forge_models import build_model

from forge_platform.cluster import ensure_ray
from forge_platform.config_loader import ConfigError
from forge_platform.job_config import PretrainConfig, TokenizeConfig, require
from forge_platform.memory_plan import plan_for_job
from forge_platform.session import banner, job_places, job_session
from forge_platform.stage import StageOutcome, train_and_evaluate
from forge_platform.training.checkpoint_files import IncompatibleCheckpointError, check_weights_fit


def run_tokenize(cfg: TokenizeConfig) -> Any:
    """Train or load the tokenizer, then tokenize and pack `cfg.data.inputs` into shards."""
    if not cfg.data.inputs or not cfg.data.output_dir:
        raise ConfigError("data.inputs and data.output_dir: must be given (pass --data.inputs PATH "
                          "--data.output_dir DIR)")
    ensure_ray(cfg.ray_num_cpus, workspace=Path.cwd())
    manifest = run_pipeline(cfg.data)
    print(f"manifest: {Path(cfg.data.output_dir) / 'manifest.json'}")
    return manifest


def check_packed_length(seq_len: int, manifest_path: str, model_vocab: int | None = None) -> None:
    """Refuse, before anything starts, training rows packed at another length than the stage's, or
    with token ids the model's embedding cannot hold."""
    try:
        manifest = Manifest.load(manifest_path)
    except FileNotFoundError:
        raise ConfigError(f"train_manifest = {manifest_path!r}: must exist (python -m jobs.tokenize writes it)") from None
    if manifest.seq_len != seq_len:
        raise ConfigError(
            f"stage.seq_len = {seq_len}: must be the length the training data was packed at ({manifest.seq_len} in "
            f"{manifest_path}); pass --stage.seq_len {manifest.seq_len}, or pack the data again with "
            f"--data.packing.seq_len {seq_len}"
        )
    data_vocab = int(manifest.tokenizer.get("vocab_size") or 0)
    if model_vocab is not None and data_vocab > model_vocab:
        raise ConfigError(
            f"model.vocab_size = {model_vocab}: must be at least the training data's vocabulary ({data_vocab}, "
            f"the tokenizer recorded in {manifest_path}); pass --model.vocab_size {data_vocab}")


def check_inputs_exist(cfg: PretrainConfig) -> None:
    """Refuse, before Ray starts, a tokenizer that is not there and weights of another model
    (inside the workers each would fail once per retry, reloading everything each time)."""
    if cfg.tokenizer and not storage.is_uri(cfg.tokenizer) and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"tokenizer = {cfg.tokenizer!r}: must be an existing SentencePiece model file")
    if cfg.init_weights:
        try:
            check_weights_fit(build_model(cfg.model, device="meta"), cfg.init_weights)
        except IncompatibleCheckpointError as err:
            raise ConfigError(f"init_weights = {cfg.init_weights!r}: {err}") from None


def run_pretrain(cfg: PretrainConfig) -> StageOutcome:
    """Train one stage on packed shards and evaluate it; a run of its own in MLflow."""
    require(cfg, "train_manifest")
    check_packed_length(cfg.stage.seq_len, cfg.train_manifest, cfg.model.vocab_size)
    check_inputs_exist(cfg)
    cfg = dataclasses.replace(cfg, stage=plan_for_job(cfg.model, [cfg.stage], cfg.parallel)[0])
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.model.vocab_size}: must be at least the tokenizer's "
                          f"{tokenizer.vocab_size}")
    manifests: dict[str, Path | str] = {"train": cfg.train_manifest}
    if cfg.val_manifest:
        manifests["val"] = cfg.val_manifest
    # output_dir local or on an object store (s3://, gs://: checked for a write here, before Ray starts)
    with job_places(cfg.output_dir, cfg.scratch_dir, cfg.tracking) as places, \
            job_session(cfg.ray_num_cpus, cfg.tracking, places) as session:
        outcome = train_and_evaluate(
            cfg.stage, cfg.model, cfg.parallel, manifests, tokenizer, session,
            parent_run_id=None,
            checkpoint_root=places.join("checkpoints"),
            init_weights=cfg.init_weights,
            ray_name=cfg.name,
        )
    banner(f"{cfg.name}: final loss {outcome.final_loss:.4f}; checkpoint {outcome.checkpoint_dir}")
    return outcome


def run_extend_context(cfg: PretrainConfig) -> StageOutcome:
    """A context-extension stage: pretraining that must start from given weights."""
    require(cfg, "init_weights")
    return run_pretrain(cfg)


__all__ = ["run_extend_context", "run_pretrain", "run_tokenize"]
