"""The platform's call into forge_eval: evaluate a checkpoint folder's consolidated weights.

The suites themselves (held-out loss, Phonebook, ...) live in `forge_eval`, which imports neither
Ray nor DeepSpeed; this module only turns a checkpoint into a model and hands it over.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from forge_eval import EvalConfig, EvalInputs, TextTokenizer, evaluate_model
from forge_models import ModelConfig, build_model

from forge_platform.config_loader import from_dict
from forge_platform.training.checkpoint_files import MODEL_CONFIG_FILE, IncompatibleCheckpointError, load_weights


def evaluate_checkpoint(checkpoint_dir: Path, model_cfg: ModelConfig, eval_cfg: EvalConfig,
                        val_manifest: str | None, tokenizer: TextTokenizer | None) -> dict[str, float]:
    """Run `eval_cfg.suites` on the consolidated weights in `checkpoint_dir`, in fp32, on this
    process's GPU when it has one (a long-context stage's held-out rows are too long for the CPU's
    reference path), else on its CPU."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    load_weights(model, checkpoint_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    return evaluate_model(model, eval_cfg, EvalInputs(val_manifest=val_manifest, tokenizer=tokenizer))


def checkpoint_model_config(checkpoint_dir: Path) -> ModelConfig:
    """The model config stored beside a checkpoint's weights."""
    path = Path(checkpoint_dir) / MODEL_CONFIG_FILE
    if not path.exists():
        raise IncompatibleCheckpointError(f"{checkpoint_dir} has no {MODEL_CONFIG_FILE}: is it a Hybrid Forge checkpoint?")
    return from_dict(ModelConfig, json.loads(path.read_text()))
