"""Read a Hybrid Forge checkpoint folder without the platform: its model config, consolidated
weights and the tokenizer the run trained with (for the lm-eval adapter and `jobs.evaluate`).

Layout (written by forge_platform's checkpoint files): `model_config.json`, `model.pt` (fp32 as
trained), `model.bf16.pt` and `meta.json` (where training stood). A campaign keeps its tokenizer at
`<output_dir>/tokenizer/` and its checkpoints at `<output_dir>/checkpoints/<stage>/checkpoint_*`:
`find_tokenizer` looks there.

Every path may be a local folder or an object-store URI (s3://, gs://), read through
`forge_data.storage` (credentials and endpoint from the environment). A place that cannot be used
is one line naming it: the store's own (`StorageError`: unreachable, credentials refused, no such
bucket), or ours (`CheckpointInputError`: no such checkpoint or tokenizer there).
"""

from __future__ import annotations

import io
import json
import posixpath
from pathlib import Path

import torch
from forge_data import storage
from forge_models import ModelConfig, build_model
from forge_models.model import LanguageModel

MODEL_CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_SEARCH_DEPTH = 5
"""How many folders up from a checkpoint `find_tokenizer` looks (the checkpoint's own included)."""


class CheckpointInputError(ValueError):
    """A checkpoint (or its tokenizer) that cannot be evaluated, said in one line."""


def read_checkpoint_file(checkpoint: str | Path, name: str) -> bytes:
    """The file `name` of a checkpoint folder (local or a URI); CheckpointInputError naming the
    checkpoint when it has none (a missing bucket is the store's error, naming the bucket)."""
    if not storage.is_uri(str(checkpoint)):
        path = Path(checkpoint) / name
        if not path.is_file():
            raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: must be a Hybrid Forge checkpoint folder "
                                       f"(no {name} there)")
        return path.read_bytes()
    try:
        return storage.read_bytes(storage.join(str(checkpoint), name))
    except storage.StorageNotFound:
        storage.check_location(str(checkpoint))  # a bucket that does not exist: said as such
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: must be a Hybrid Forge checkpoint folder "
                                   f"(no {name} there, on {storage.where(str(checkpoint))})") from None


def read_model_config(checkpoint: str | Path) -> ModelConfig:
    """The model config stored beside a checkpoint's weights."""
    return ModelConfig(**json.loads(read_checkpoint_file(checkpoint, MODEL_CONFIG_FILE)))


def weights_size(checkpoint: str | Path) -> int:
    """Bytes of the checkpoint's consolidated weights (`model.pt`); CheckpointInputError when it has none."""
    size = storage.file_size(storage.join(str(checkpoint), WEIGHTS_FILE))
    if size is None:
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: has no {WEIGHTS_FILE}")
    return size


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer steps completed when the checkpoint was taken (from its `meta.json`)."""
    return int(json.loads(read_checkpoint_file(checkpoint, META_FILE))["step"])


def find_tokenizer(checkpoint: str | Path, tokenizer: str | Path = "") -> str | Path:
    """`tokenizer` if given (a model file or a folder holding one), else the campaign's tokenizer found
    above the checkpoint folder: a local Path, or a URI when the place is an object store."""
    if tokenizer:
        path = _tokenizer_file(str(tokenizer))
        if path is None:
            raise CheckpointInputError(f"tokenizer = {str(tokenizer)!r}: must be a SentencePiece model file "
                                       f"(or a folder holding {TOKENIZER_FILE})")
        return path
    for folder in _folders_up(checkpoint)[:TOKENIZER_SEARCH_DEPTH]:
        for candidate in (storage.join(folder, TOKENIZER_FILE), storage.join(folder, "tokenizer", TOKENIZER_FILE)):
            if storage.file_size(candidate) is not None:
                return candidate if storage.is_uri(candidate) else Path(candidate)
    raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r} has no tokenizer beside it or in a campaign folder "
                               "above it: pass --tokenizer PATH/tokenizer.model")


def _tokenizer_file(tokenizer: str) -> str | Path | None:
    if not storage.is_uri(tokenizer):
        path = Path(tokenizer)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        return path if path.is_file() else None
    storage.check_location(tokenizer)  # unreachable, refused or no bucket: the store's one line first
    path = storage.join(tokenizer, TOKENIZER_FILE) if storage.is_dir(tokenizer) else tokenizer
    return path if storage.file_size(path) is not None else None


def _folders_up(checkpoint: str | Path) -> list[str]:
    """The checkpoint folder and those above it, nearest first (on a store: up to the bucket)."""
    if not storage.is_uri(str(checkpoint)):
        folder = Path(checkpoint).resolve()
        return [str(p) for p in (folder, *folder.parents)]
    scheme, rest = str(checkpoint).rstrip("/").split("://", 1)
    folders = []
    while rest:
        folders.append(f"{scheme}://{rest}")
        rest = posixpath.dirname(rest)
    return folders


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """The checkpoint's model with its consolidated fp32 weights, on `device` (run it under bf16
    autocast for speed: casting the weights would also cast those the model keeps in fp32)."""
    cfg = read_model_config(checkpoint)
    torch.manual_seed(0)  # no randomness should survive loading; keep it reproducible if any does
    model = build_model(cfg)
    weights_size(checkpoint)  # none there: one line naming the checkpoint
    path = storage.join(str(checkpoint), WEIGHTS_FILE)
    # On an object store the file is read whole (no memory map there).
    source = io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: {WEIGHTS_FILE} cannot be read: {err}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointInputError(f"checkpoint = {str(checkpoint)!r}: weights do not match its model config "
                                   f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.to(device)
