"""The platform's call into forge_eval: evaluate a checkpoint folder's consolidated weights where the
GPUs are, and `jobs.evaluate`'s checks and run.

The suites themselves (held-out loss, Phonebook, RULER, perplexity by position, lm-eval tasks) live
in `forge_eval`, which imports neither Ray nor DeepSpeed; this module turns a checkpoint into a
model, picks where it runs, and refuses bad input in one line before anything loads:

- on a process with a GPU: here, on the kernel path under bf16 autocast;
- on a driver without a GPU, joined to a Ray cluster that has one: as a Ray task taking one GPU;
- otherwise: here, on the CPU's reference path in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from forge_data import Manifest, load_tokenizer, storage
from forge_data.tokenizer import Tokenizer
from forge_eval import (EvalConfig, EvalInputs, TextTokenizer, UnencodableTextError, check_suites_build,
                        evaluate_model)
from forge_eval.checkpoint import (CheckpointInputError, checkpoint_step, find_tokenizer, read_checkpoint_file,
                                   weights_size)
from forge_eval.lm_eval_suite import check_lm_eval_tasks
from forge_eval.suite_names import HELD_OUT_SUITES
from forge_models import ModelConfig, build_model

from forge_platform.config_loader import ConfigError, from_dict
from forge_platform.config_sections import StageConfig
from forge_platform.job_config import EvaluateConfig
from forge_platform.run_inputs import log_to_run, run_inputs
from forge_platform.training.checkpoint_files import MODEL_CONFIG_FILE, load_weights

GIB = 1 << 30


def evaluate_checkpoint(checkpoint_dir: Path | str, model_cfg: ModelConfig, eval_cfg: EvalConfig,
                        val_manifest: str | None, tokenizer: TextTokenizer | None,
                        ppl_manifest: str | None = None, gpu_share: float = 1.0) -> dict[str, float]:
    """Run `eval_cfg.suites` on the consolidated weights in `checkpoint_dir` (a local folder or one on
    an object store, s3://...), where the GPU is (see the module docstring); every metric in a flat dict.
    `ppl_manifest`: held-out rows packed longer for the `ppl` suite (None: it reads `val_manifest`).
    `gpu_share`: of a GPU the Ray task reserves (a run that trained on a share evaluates on one)."""
    if not torch.cuda.is_available() and _cluster_gpus() >= 1:
        import ray

        proto = tokenizer.model_proto if isinstance(tokenizer, Tokenizer) else None
        shipped = None if proto is not None else tokenizer  # other tokenizers travel pickled
        task = ray.remote(num_gpus=gpu_share, num_cpus=1)(_evaluate_on_worker)
        metrics, where = ray.get(task.remote(str(checkpoint_dir), model_cfg, eval_cfg, val_manifest, proto, shipped,
                                             ppl_manifest))
        print(f"evaluated in a Ray task: {where}", flush=True)
        return metrics
    return _evaluate_here(checkpoint_dir, model_cfg, eval_cfg, val_manifest, tokenizer, ppl_manifest)


def _cluster_gpus() -> float:
    """GPUs of the Ray cluster this process has joined (0 when it has joined none)."""
    if "ray" not in sys.modules:  # never import (let alone start) Ray just to ask
        return 0.0
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def _evaluate_on_worker(checkpoint_dir: str, model_cfg: ModelConfig, eval_cfg: EvalConfig, val_manifest: str | None,
                        proto: bytes | None, tokenizer: TextTokenizer | None,
                        ppl_manifest: str | None = None) -> tuple[dict[str, float], str]:
    import ray

    if proto is not None:
        tokenizer = Tokenizer(proto)
    metrics = _evaluate_here(checkpoint_dir, model_cfg, eval_cfg, val_manifest, tokenizer, ppl_manifest)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return metrics, f"pid {os.getpid()}, GPU ids {ray.get_gpu_ids()}, device {device}"


def _evaluate_here(checkpoint_dir: Path | str, model_cfg: ModelConfig, eval_cfg: EvalConfig, val_manifest: str | None,
                   tokenizer: TextTokenizer | None, ppl_manifest: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(model_cfg)
    load_weights(model, checkpoint_dir)
    # A long-context stage's held-out rows are too long for the CPU's reference path: the GPU's
    # kernels under bf16 autocast over the fp32 weights (as training runs), fp32 on the CPU.
    autocast = contextlib.nullcontext()
    if torch.cuda.is_available():
        model = model.cuda()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    with autocast:
        return evaluate_model(model, eval_cfg, EvalInputs(val_manifest=val_manifest, tokenizer=tokenizer,
                                                          ppl_manifest=ppl_manifest))


def checkpoint_model_config(checkpoint_dir: Path | str) -> ModelConfig:
    """The model config stored beside a checkpoint's weights: a local folder or one on an object store
    (s3://, gs://; a store that cannot be used, or no config there, is one line naming it)."""
    return from_dict(ModelConfig, json.loads(read_checkpoint_file(checkpoint_dir, MODEL_CONFIG_FILE)))


def eval_memory_bytes(model_cfg: ModelConfig, weights: int, length: int, on_gpu: bool, generates: bool = True) -> int:
    """What one prompt of `length` tokens needs at its peak (batch of one): the `weights` (bytes), the
    prefill's fp32 logits when it `generates` (L x V: the reference generation projects every
    position; teacher forcing and ppl project only what they score) and, on the CPU's reference
    path, one attention layer's fp32 scores (H x L x L; the GPU's kernels never hold them)."""
    logits = 4 * length * model_cfg.vocab_size if generates else 0
    scores = 0 if on_gpu or "*" not in model_cfg.pattern else 4 * model_cfg.attention.num_heads * length * length
    return weights + logits + scores


def available_memory(on_gpu: bool) -> int:
    """Bytes this process can use for evaluation: the GPU's total, or the machine's available memory."""
    if on_gpu:
        return torch.cuda.mem_get_info()[1]
    import psutil

    return psutil.virtual_memory().available


def check_eval_lengths(model_cfg: ModelConfig, weights: int, eval_cfg: EvalConfig, memory: int, on_gpu: bool) -> None:
    """Refuse, in one line, an evaluation whose longest prompt cannot fit in `memory` (bytes) beside
    `weights` (bytes), naming the longest that does."""
    longest = eval_cfg.longest_prompt
    generates = eval_cfg.answer_mode == "generate" or bool(eval_cfg.lm_eval_tasks)
    if not longest or eval_memory_bytes(model_cfg, weights, longest, on_gpu, generates) <= memory:
        return
    fits = 0
    low, high = 1, longest
    while low <= high:  # the largest length that fits (the need grows with the length)
        mid = (low + high) // 2
        if eval_memory_bytes(model_cfg, weights, mid, on_gpu, generates) <= memory:
            fits, low = mid, mid + 1
        else:
            high = mid - 1
    where = "this GPU" if on_gpu else "this machine's CPU (reference path: dense attention scores)"
    raise ConfigError(f"eval lengths up to {longest} tokens: need about "
                      f"{eval_memory_bytes(model_cfg, weights, longest, on_gpu, generates) / GIB:.1f} GiB on {where}, which has "
                      f"{memory / GIB:.1f} GiB; use lengths <= {fits} (eval.phonebook_lengths, eval.ruler_lengths, "
                      "eval.ppl_max_position, eval.lm_eval_max_length) or a GPU")


def check_stage_evaluations(tokenizer: TextTokenizer, stages: Sequence[StageConfig]) -> None:
    """Each stage's evaluation, at the lengths it resolves to (`eval.length_multiples` of its seq_len),
    checked as `jobs.evaluate` checks its own, once the tokenizer exists: a campaign must not train
    a stage and then fail in its evaluation on a length too short for a task."""
    for stage in stages:
        eval_cfg = stage.eval.for_length(stage.seq_len)
        try:
            check_lm_eval_tasks(eval_cfg.lm_eval_tasks)
            check_suites_build(tokenizer, eval_cfg)
        except ValueError as err:  # UnencodableTextError is one
            raise ConfigError(f"stage {stage.name!r}, eval: {err}") from None


def run_evaluate_job(cfg: EvaluateConfig) -> dict[str, float]:
    """`jobs.evaluate`: check everything the inputs allow to check, then evaluate and print JSON (and
    add the metrics to the MLflow run when one was named)."""
    tracking_uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if cfg.run_id:
        if not tracking_uri:
            raise ConfigError("tracking_uri: must be given with run_id (or set MLFLOW_TRACKING_URI)")
        recorded = run_inputs(tracking_uri, cfg.run_id)
        # The run's longer ppl rows are its held-out data packed again: with a --val_manifest naming
        # other data they would measure `ppl` on something else, so they come only with the run's own.
        ppl_manifest = cfg.ppl_manifest or ("" if cfg.val_manifest else recorded.ppl_manifest)
        cfg = dataclasses.replace(cfg, checkpoint=cfg.checkpoint or recorded.checkpoint,
                                  val_manifest=cfg.val_manifest or recorded.val_manifest, ppl_manifest=ppl_manifest)
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: must be given (a checkpoint folder with model.pt and model_config.json), "
                          "or run_id: a stage's MLflow run")
    # A local folder or s3://, gs:// (forge_data.storage): every input is read once here, before
    # anything loads, so a missing object, refused credentials or a missing bucket is one line.
    model_cfg = checkpoint_model_config(cfg.checkpoint)
    suites = cfg.eval.suites
    needs_rows = [s for s in suites if s in HELD_OUT_SUITES and not (s == "ppl" and cfg.ppl_manifest)]
    if needs_rows and not cfg.val_manifest:
        raise ConfigError(f"val_manifest: must be given for suites {', '.join(needs_rows)} (held-out packed shards)")
    held_out = [cfg.val_manifest] if needs_rows else []
    if "ppl" in suites and cfg.ppl_manifest:
        held_out.append(cfg.ppl_manifest)
    for manifest in held_out:
        storage.check_location(manifest)  # unreachable, refused, no bucket: said as such
        Manifest.load(manifest)
    try:
        tokenizer = load_tokenizer(str(find_tokenizer(cfg.checkpoint, cfg.tokenizer))) if cfg.eval.needs_tokenizer \
            else None
        check_lm_eval_tasks(cfg.eval.lm_eval_tasks)
        if tokenizer is not None:
            check_suites_build(tokenizer, cfg.eval)
    except (CheckpointInputError, UnencodableTextError, ValueError) as err:
        raise ConfigError(str(err)) from None
    on_gpu = torch.cuda.is_available()
    weights = weights_size(cfg.checkpoint)
    check_eval_lengths(model_cfg, weights, cfg.eval, available_memory(on_gpu), on_gpu)
    step = checkpoint_step(cfg.checkpoint) if cfg.run_id else 0  # where the metrics go: known before evaluating
    metrics = evaluate_checkpoint(cfg.checkpoint, model_cfg, cfg.eval, cfg.val_manifest or None, tokenizer,
                                  ppl_manifest=cfg.ppl_manifest or None)
    print(json.dumps(metrics, indent=2))
    if cfg.run_id:
        log_to_run(tracking_uri, cfg.run_id, metrics, step)
        print(f"logged {len(metrics)} metrics to run {cfg.run_id} at step {step}", file=sys.stderr)
    return metrics


def evaluate_main(doc: str, argv: Sequence[str] | None = None) -> int:
    """`python -m jobs.evaluate`: the job's main, with `--suites a,b` short for `--eval.suites a,b`."""
    from forge_platform.cli import job_main

    args: list[Any] = list(sys.argv[1:] if argv is None else argv)
    args = [("--eval.suites" if a == "--suites" else a.replace("--suites=", "--eval.suites=", 1)) for a in args]
    return job_main(EvaluateConfig, run_evaluate_job, doc, args)
