"""Where a stage's checkpoints live: a shared local filesystem, or an object store (s3://, gs://).

Ray Train's storage path is the job's `output_dir/checkpoints`; the two cases differ only in how a
checkpoint folder gets there:

- **Local** (a shared filesystem on a cluster): every rank writes its files in place into
  `<storage>/<run>/step_N` and the folder is reported without a copy (`NO_UPLOAD`): an 8B model's
  checkpoint is ~100 GB, and copying it would double the disk and the time.
- **Object store**: every rank writes its own files (its DeepSpeed shard; rank 0 also the metadata
  and the consolidated weights) into a folder of its own under the local scratch folder, and
  `ray.train.report` uploads each rank's folder into the same `step_N` on the store (`SYNC`), then
  deletes the local copy. Ray Train registers a checkpoint (`checkpoint_manager_snapshot.json`, what
  a rerun is handed) only once every rank's report arrived, that is after every rank's upload
  finished; an upload that fails (after Ray's own retries) raises in its worker and the folder is
  never registered, so a partly uploaded checkpoint is never taken as the latest.

Resuming needs nothing here: Ray hands the workers a `Checkpoint` on the store and
`Checkpoint.as_directory()` downloads it (once per node). The driver reads Ray's record and the
metadata through `forge_data.storage` (`latest_registered_meta`), and consolidated weights on the
store are read whole (`load_remote_weights`), for the next stage and for evaluation. Credentials and
endpoint come from the environment (forge_data.storage), also on the workers.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray.train
import torch
from forge_data import storage
from ray.train import CheckpointUploadMode

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's own record of a run's checkpoints, in the run's folder on its storage."""


def ray_storage(storage_uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`RunConfig`'s (storage_path, storage_filesystem) for checkpoints under `storage_uri`: a local
    folder as an absolute path (Ray resolves its filesystem), an object-store URI as the path inside
    the filesystem forge_data.storage builds (so the endpoint and credentials of the environment apply)."""
    if not storage.is_uri(storage_uri):
        return str(Path(storage_uri).resolve()), None
    fs, path = storage.resolve_filesystem(storage_uri)
    return path, fs


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """Where a checkpoint Ray Train returned lives: a local path, or `scheme://bucket/...`."""
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(checkpoint.filesystem.type_name, checkpoint.filesystem.type_name)
    return f"{scheme}://{checkpoint.path}"


@dataclass(frozen=True)
class CheckpointTarget:
    """The folder this rank writes a checkpoint into, and how it is reported to Ray Train."""

    folder: Path
    writes_folder: bool
    """Whether this rank clears and creates `folder` (rank 0 of a shared folder; every rank of its own)."""
    report_options: dict[str, Any]
    """Keyword arguments of `ray.train.report` for this checkpoint."""


def checkpoint_target(root: Path, step: int, rank: int) -> CheckpointTarget:
    """Where rank `rank` writes the checkpoint after step `step`: in place under `root` when Ray
    Train's storage is a local filesystem, else under its own scratch folder `root/rank_<rank>`
    (every rank uploads its own; Ray merges them into one folder on the store). Called in a worker."""
    name = f"step_{step:08d}"
    if isinstance(ray.train.get_context().get_storage().storage_filesystem, pafs.LocalFileSystem):
        return CheckpointTarget(Path(root) / name, rank == 0,
                                {"checkpoint_upload_mode": CheckpointUploadMode.NO_UPLOAD})
    return CheckpointTarget(Path(root) / f"rank_{rank}" / name, True,
                            {"checkpoint_upload_mode": CheckpointUploadMode.SYNC, "checkpoint_dir_name": name,
                             "delete_local_checkpoint_after_upload": True})


def prepare_folder(target: CheckpointTarget) -> None:
    """Clear what an attempt that died left in the target folder, and create it (this rank's part)."""
    if target.writes_folder:
        shutil.rmtree(target.folder, ignore_errors=True)
        target.folder.mkdir(parents=True)


def latest_registered_meta(stage_uri: str, meta_file: str) -> dict[str, Any] | None:
    """The metadata (`meta_file`, as JSON) of the checkpoint Ray Train will hand a rerun of the stage
    stored at `stage_uri` on an object store, from Ray's own record; None when it registered none."""
    try:
        latest = json.loads(storage.read_bytes(storage.join(stage_uri, SNAPSHOT_FILE))).get("latest_checkpoint_result")
    except storage.StorageNotFound:
        return None
    except json.JSONDecodeError:  # Ray's own file: if it cannot be read, Ray decides
        return None
    name = (latest or {}).get("checkpoint_dir_name")
    if not name:
        return None
    try:
        return json.loads(storage.read_bytes(storage.join(stage_uri, name, meta_file)))
    except storage.StorageNotFound:
        return None


def load_remote_weights(uri: str, weights_file: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(where, state dict) of consolidated weights on an object store: `uri` names the file, or a
    checkpoint folder holding `weights_file`. Read whole into memory (no memory map on a store)."""
    path = uri if uri.endswith(".pt") else storage.join(uri, weights_file)
    data = storage.read_buffer(path)
    return path, torch.load(io.BytesIO(data.to_pybytes()), map_location="cpu", weights_only=True)
