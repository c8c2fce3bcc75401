"""Shared by the evaluation tests: the standard library as a corpus, a folder of documents packed
into held-out rows, and a checkpoint folder laid out as a campaign leaves it."""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path

import torch
from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline
from forge_data.tokenizer import Tokenizer
from torch import nn

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def pack_folder(corpus: Path, tokenizer_model: str, output_dir: Path, seq_len: int, rows_per_shard: int) -> str:
    """Every document in `corpus` tokenized with `tokenizer_model` and packed into rows of `seq_len`
    (no Ray); returns the manifest's path."""
    run_pipeline(DataPipelineConfig(inputs=[str(corpus)], output_dir=str(output_dir),
                                    tokenizer=TokenizerConfig(model_path=tokenizer_model),
                                    packing=PackingConfig(seq_len=seq_len), shard_tokens=seq_len * rows_per_shard),
                 use_ray=False)
    return str(output_dir / "manifest.json")


def campaign_checkpoint(root: Path, model: nn.Module, tokenizer: Tokenizer, name: str) -> Path:
    """<root>/tokenizer and <root>/checkpoints/stage/<name> holding the model's weights and config;
    returns the checkpoint folder."""
    tokenizer.save(str(root / "tokenizer"))
    checkpoint = root / "checkpoints" / "stage" / name
    checkpoint.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint / "model.pt")
    (checkpoint / "model_config.json").write_text(json.dumps(dataclasses.asdict(model.config)))
    return checkpoint
