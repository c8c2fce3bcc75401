"""A checkpoint folder on disk: its layout, its metadata, the consolidated weights, atomic writes.

Storage only; when to save, how many to keep and whether a checkpoint may be resumed is the
checkpoint manager's (`checkpoint_manager.py`). Layout of one folder (every rank writes its own
files into it before Ray Train's `report` gathers them):

    state/...            DeepSpeed's engine: model, optimizer and schedule shards, one per rank
    universal/rank_*.pt  the optimizer state by parameter name, one file per rank: a resume with other
                         parallel degrees reads it (`universal_checkpoint.py`)
    meta.json            CheckpointMeta: where training stood, and what produced it
    model_config.json    the model's full config
    model.pt             the consolidated model weights (rank 0), for evaluation and the next stage
    model.bf16.pt        the same in bf16 (fp32 where the model keeps fp32), for evaluation and hand-off

Old checkpoints stay loadable on purpose: fields added to the metadata have defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from forge_models import build_model, keep_fp32_names
from torch import nn

DEEPSPEED_TAG = "state"
UNIVERSAL_DIR = "universal"
META_FILE = "meta.json"
MODEL_CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
BF16_WEIGHTS_FILE = "model.bf16.pt"


class IncompatibleCheckpointError(ValueError):
    """A checkpoint that belongs to another model, stage layout or parallel layout."""


@dataclass
class CheckpointMeta:
    """Where training stood when the checkpoint was taken."""

    step: int
    """Optimizer steps completed."""
    tokens_seen: int
    """Tokens consumed by all data-parallel ranks together."""
    samples_consumed: int
    """Packed sequences read by all data-parallel ranks together: the data loader resumes here."""
    stage: str
    """Name of the stage that wrote it."""
    config_hash: str
    """Hash of the stage's job config."""
    model_hash: str
    """Hash of the model config: a checkpoint only loads into the same architecture."""
    tensor_parallel: int
    """Tensor-parallel degree of the writer; DeepSpeed's shards depend on it."""
    data_parallel: int
    """Data-parallel degree of the writer; ZeRO's optimizer shards depend on it."""
    context_parallel: int = 1
    """Context-parallel degree of the writer (1 before context parallelism existed)."""
    run_id: str = ""
    """The MLflow run it logs to, so a restarted job continues that run."""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The loader's state (`PackedShardLoader.state_dict()`: samples consumed, shuffle seed and the
    dataset's hash), checked on resume; empty in checkpoints written before it was kept."""
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The training settings it was written with (`checkpoint_manager.training_settings`), so a resume
    with other settings is refused naming each one; empty in checkpoints written before it was kept."""
    universal_state: bool = False
    """Whether `universal/` holds the optimizer state by parameter name, so a run may resume from it
    with other tensor- and data-parallel degrees; False in checkpoints written before it was kept."""


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` then rename `tmp` over `path`, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def save_rank_zero_files(folder: Path, meta: CheckpointMeta, model_config: Any,
                         weights: Mapping[str, torch.Tensor], export_bf16: bool = True) -> None:
    """Rank 0's part of a checkpoint: metadata, model config and the consolidated (single-device)
    weights: `model.pt` as trained (fp32; the next stage starts from it) and, for evaluation and
    hand-off, `model.bf16.pt` at half the size with the parameters the model keeps in fp32 (Mamba's
    A_log, D, dt_bias) left in fp32. Either loads with `load_weights`."""
    write_json(folder / META_FILE, dataclasses.asdict(meta))
    write_json(folder / MODEL_CONFIG_FILE, dataclasses.asdict(model_config))
    cpu_weights = {k: v.detach().cpu() for k, v in weights.items()}
    replace_atomically(folder / WEIGHTS_FILE, lambda tmp: torch.save(cpu_weights, tmp))
    if export_bf16:
        keep = keep_fp32_names(build_model(model_config, device="meta"))
        bf16 = {k: v if k in keep or not v.is_floating_point() else v.to(torch.bfloat16) for k, v in cpu_weights.items()}
        replace_atomically(folder / BF16_WEIGHTS_FILE, lambda tmp: torch.save(bf16, tmp))


def read_meta(folder: Path) -> CheckpointMeta:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise IncompatibleCheckpointError(f"{folder} is not a Hybrid Forge checkpoint: {META_FILE} is missing")
    return CheckpointMeta(**json.loads(path.read_text()))


def check_weights_fit(model: nn.Module, path: str | Path) -> None:
    """`load_weights`'s checks without reading the tensors' data (memory-mapped; `model` may be on
    the meta device): a job refuses weights of another model before anything starts."""
    path, state = _read_weights(path, mmap=True)
    _check_same_tensors(model, state, path)


def _read_weights(path: str | Path, mmap: bool) -> tuple[Path | str, dict[str, torch.Tensor]]:
    if "://" in str(path):  # on an object store: read whole (checkpoint_storage.py)
        from forge_platform.training.checkpoint_storage import load_remote_weights

        return load_remote_weights(str(path), WEIGHTS_FILE)
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise IncompatibleCheckpointError(f"no model weights at {path}")
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, OSError) as err:
        raise IncompatibleCheckpointError(f"weights at {path} cannot be read: {err}") from None


def _check_same_tensors(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if misshapen:
            shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in misshapen[:5]]
            details.append(f"shape mismatch {shapes}")
        raise IncompatibleCheckpointError(f"weights at {path} belong to another model: {'; '.join(details)}")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load consolidated weights into `model`, naming every missing, unexpected or misshapen tensor."""
    path, state = _read_weights(path, mmap=False)
    _check_same_tensors(model, state, path)
    model.load_state_dict(state)
