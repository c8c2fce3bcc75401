"""The export job: a checkpoint folder -> a folder Hugging Face transformers loads (`python -m jobs.export`).

The conversion itself is forge_models.export's (which class reproduces a model, the renamed and
fused tensors, the folder); this module only reads a checkpoint with the platform's loaders and
turns a refusal into the one-line input error every job gives (cli.py: exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from forge_models import build_model
from forge_models.export import describe_model, hf_target, unsupported_reason, write_hf_folder

from forge_platform.config_loader import ConfigError
from forge_platform.evaluation import checkpoint_model_config
from forge_platform.job_config import require
from forge_platform.training.checkpoint_files import (
    WEIGHTS_FILE,
    IncompatibleCheckpointError,
    check_weights_fit,
    read_meta,
)


@dataclass
class ExportConfig:
    """Export a checkpoint to a Hugging Face transformers folder."""

    checkpoint: str = ""
    """A checkpoint folder (meta.json, model_config.json, model.pt)."""
    out: str = ""
    """The folder to write config.json, model.safetensors (and tokenizer.model) into; created."""
    tokenizer: str = ""
    """The SentencePiece model the checkpoint's data was tokenized with; copied beside the weights, and
    written as a transformers tokenizer too where that is exact (BPE, identity normalization)."""


def run_export(cfg: ExportConfig) -> Path:
    """Check the checkpoint, refuse a model no transformers class reproduces, write the folder."""
    require(cfg, "checkpoint", "out")
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"tokenizer = {cfg.tokenizer!r}: no such file")
    folder = Path(cfg.checkpoint)
    if not folder.is_dir():
        raise IncompatibleCheckpointError(f"checkpoint = {cfg.checkpoint!r}: no such folder")
    read_meta(folder)  # a folder without meta.json is not ours: one line, before anything is read
    model_cfg = checkpoint_model_config(folder)
    reason = unsupported_reason(model_cfg)
    if reason is not None:
        raise IncompatibleCheckpointError(f"{describe_model(model_cfg)} cannot be exported to transformers: {reason}")
    # Names and shapes checked without reading the data; then memory-mapped, not copied twice.
    check_weights_fit(build_model(model_cfg, device="meta"), folder)
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True, mmap=True)
    out = write_hf_folder(model_cfg, state, cfg.out, tokenizer_model=cfg.tokenizer or None)
    print(f"exported {describe_model(model_cfg)} from {folder} as {hf_target(model_cfg).architecture} to {out}")
    return out
