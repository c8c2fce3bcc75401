"""Shared by the evaluation tests: a checkpoint folder laid out as a campaign leaves it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from forge_data.tokenizer import Tokenizer
from torch import nn


def campaign_checkpoint(root: Path, model: nn.Module, tokenizer: Tokenizer, name: str) -> Path:
    """<root>/tokenizer and <root>/checkpoints/stage/<name> holding the model's weights and config;
    returns the checkpoint folder."""
    tokenizer.save(str(root / "tokenizer"))
    checkpoint = root / "checkpoints" / "stage" / name
    checkpoint.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint / "model.pt")
    (checkpoint / "model_config.json").write_text(json.dumps(dataclasses.asdict(model.config)))
    return checkpoint
