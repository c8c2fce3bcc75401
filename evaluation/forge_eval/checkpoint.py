"""Read a Hybrid Forge checkpoint folder without the platform: its model config, consolidated
weights and the tokenizer the run trained with (for the lm-eval adapter and `jobs.evaluate`).

Layout (written by forge_platform's checkpoint files): `model_config.json`, `model.pt` (fp32 as
trained) and `model.bf16.pt`. A campaign keeps its tokenizer at `<output_dir>/tokenizer/` and its
checkpoints at `<output_dir>/checkpoints/<stage>/checkpoint_*`: `find_tokenizer` looks there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from forge_models import ModelConfig, build_model
from forge_models.model import LanguageModel

MODEL_CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
TOKENIZER_FILE = "tokenizer.model"


class CheckpointInputError(ValueError):
    """A checkpoint (or its tokenizer) that cannot be evaluated, said in one line."""


def read_model_config(checkpoint: str | Path) -> ModelConfig:
    """The model config stored beside a checkpoint's weights."""
    path = Path(checkpoint) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: must be a Hybrid Forge checkpoint folder "
                                   f"(no {MODEL_CONFIG_FILE} there)")
    return ModelConfig(**json.loads(path.read_text()))


def find_tokenizer(checkpoint: str | Path, tokenizer: str | Path = "") -> Path:
    """`tokenizer` if given, else the campaign's tokenizer found above the checkpoint folder."""
    if tokenizer:
        path = Path(tokenizer)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        if not path.is_file():
            raise CheckpointInputError(f"tokenizer = {str(tokenizer)!r}: must be a SentencePiece model file "
                                       f"(or a folder holding {TOKENIZER_FILE})")
        return path
    folder = Path(checkpoint).resolve()
    for parent in [folder, *folder.parents][:5]:
        for candidate in (parent / TOKENIZER_FILE, parent / "tokenizer" / TOKENIZER_FILE):
            if candidate.is_file():
                return candidate
    raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r} has no tokenizer beside it or in a campaign folder "
                               "above it: pass --tokenizer PATH/tokenizer.model")


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """The checkpoint's model with its consolidated fp32 weights, on `device` (run it under bf16
    autocast for speed: casting the weights would also cast those the model keeps in fp32)."""
    cfg = read_model_config(checkpoint)
    path = Path(checkpoint) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: has no {WEIGHTS_FILE}")
    torch.manual_seed(0)  # no randomness should survive loading; keep it reproducible if any does
    model = build_model(cfg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: {path.name} cannot be read: {err}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: weights do not match its model config "
                                   f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.to(device)
