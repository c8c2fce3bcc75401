"""What a checkpoint holds besides DeepSpeed's shards, and the checks made before one is loaded.

Layout of one checkpoint folder (every rank writes its own files into it before Ray Train's
`report` gathers them):

    state/...            DeepSpeed's engine: model, optimizer and schedule shards, one per rank
    meta.json            CheckpointMeta: where training stood, and what produced it
    model_config.json    the model's full config
    model.pt             the consolidated model weights (rank 0), for evaluation and the next stage
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from forge_models import build_model, keep_fp32_names
from torch import nn

DEEPSPEED_TAG = "state"
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
    run_id: str = ""
    """The MLflow run it logs to, so a restarted job continues that run."""


def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def save_rank_zero_files(folder: Path, meta: CheckpointMeta, model_config: Any,
                         weights: Mapping[str, torch.Tensor], export_bf16: bool = True) -> None:
    """Rank 0's part of a checkpoint: metadata, model config and the consolidated (single-device)
    weights: `model.pt` as trained (fp32; the next stage starts from it) and, for evaluation and
    hand-off, `model.bf16.pt` at half the size with the parameters the model keeps in fp32 (Mamba's
    A_log, D, dt_bias) left in fp32. Either loads with `load_weights`."""
    write_json(folder / META_FILE, dataclasses.asdict(meta))
    write_json(folder / MODEL_CONFIG_FILE, dataclasses.asdict(model_config))
    cpu_weights = {k: v.detach().cpu() for k, v in weights.items()}
    _save_atomically(cpu_weights, folder / WEIGHTS_FILE)
    if export_bf16:
        keep = keep_fp32_names(build_model(model_config, device="meta"))
        _save_atomically({k: v if k in keep or not v.is_floating_point() else v.to(torch.bfloat16)
                          for k, v in cpu_weights.items()}, folder / BF16_WEIGHTS_FILE)


def _save_atomically(state: Mapping[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def read_meta(folder: Path) -> CheckpointMeta:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise IncompatibleCheckpointError(f"{folder} is not a Hybrid Forge checkpoint: {META_FILE} is missing")
    return CheckpointMeta(**json.loads(path.read_text()))


def check_resumable(meta: CheckpointMeta, *, model_hash: str, tensor_parallel: int, data_parallel: int) -> None:
    """Refuse, with the reason, a checkpoint this run cannot continue from."""
    if meta.model_hash != model_hash:
        raise IncompatibleCheckpointError(
            f"checkpoint of stage {meta.stage!r} was written by another model (model hash {meta.model_hash}, "
            f"this run's is {model_hash}); start a new run or point at the right checkpoint"
        )
    if (meta.tensor_parallel, meta.data_parallel) != (tensor_parallel, data_parallel):
        raise IncompatibleCheckpointError(
            f"checkpoint layout tp {meta.tensor_parallel} x dp {meta.data_parallel} differs from this run's "
            f"tp {tensor_parallel} x dp {data_parallel}; resharding is not supported yet: resume with the same "
            "layout, or start the next stage from its consolidated weights (model.pt)"
        )


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load consolidated weights into `model`, naming every missing, unexpected or misshapen tensor."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise IncompatibleCheckpointError(f"no model weights at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
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
    model.load_state_dict(state)
