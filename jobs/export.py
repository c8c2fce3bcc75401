"""Export a checkpoint's consolidated weights to a folder Hugging Face transformers loads.

    python -m jobs.export --checkpoint runs/demo/checkpoints/demo-extend-1024/step_00000030 \
        --out runs/demo/hf/demo-extend-1024 --tokenizer runs/demo/tokenizer/tokenizer.model

    # then, anywhere with transformers installed (CPU is enough):
    python -c "from transformers import AutoModelForCausalLM as A; print(A.from_pretrained('runs/demo/hf/demo-extend-1024'))"

The same command on one node or a cluster's head node: export reads one folder and writes one, on
CPU, in the checkpoint's fp32 (`model.pt`). The model is exported to the transformers class that
computes exactly what it computes (NemotronH for our GELU hybrids, Mamba2, Mamba, Llama for the
Transformers; the table is in models/forge_models/README.md). A model no class reproduces
(hybrid-2b-anchor: a SwiGLU MLP in a hybrid) exits 2 with one line naming the preset and the
value; so does a folder that is not a Hybrid Forge checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from forge_models import build_model
from forge_models.export import describe_model, hf_target, unsupported_reason, write_hf_folder
from forge_platform.cli import job_main
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
    """The SentencePiece model the checkpoint's data was tokenized with; copied beside the weights."""


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


if __name__ == "__main__":
    sys.exit(job_main(ExportConfig, run_export, __doc__))
