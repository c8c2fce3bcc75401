"""A Ray Train worker's error on the user's input reaches the driver as one line whatever node the
worker ran on: the driver takes it from the exception Ray Train carries back, not from the
input_error.json the worker leaves in its own (on a cluster with an s3:// output_dir: its node's
local) folder, which only stops that node's retries."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from forge_data.shards import CorruptShardError
from forge_data.storage import StorageNotFound, StorageUnreachable
from forge_platform.input_errors import INPUT_ERRORS, InputError, worker_input_error
from ray.train import WorkerGroupError

from tests.moto_s3 import s3_environment
from tests.platform.other_node import DRIVER_SCRATCH, WORKER_SCRATCH, run_workers_elsewhere

REPO = Path(__file__).resolve().parents[2]
BUCKET = "forge"


@pytest.mark.parametrize(("failure", "found"), [
    (CorruptShardError("shard shards/shard-00000.parquet of s3://forge/data/manifest.json: missing"), True),
    (StorageNotFound("s3://forge/data/manifest.json: does not exist (on s3://)"), True),
    (InputError("shard shards/shard-00000.parquet: missing"), True),  # a retry refused by the node's record
    (StorageUnreachable("s3://forge/data: cannot reach s3:// (connection refused)"), False),  # retried, not input
    (RuntimeError("NCCL timeout"), False),
])
def test_the_driver_finds_the_workers_input_error_in_rays_failure(failure: Exception, found: bool) -> None:
    # What trainer.fit() raises on the driver, after crossing processes as Ray sends it (pickled).
    raised = pickle.loads(pickle.dumps(WorkerGroupError("rank 1 failed", {0: RuntimeError("collective aborted"),
                                                                           1: failure})))
    error = worker_input_error(raised)
    assert (error is not None) == found
    if found:
        assert type(error) is type(failure) and str(error) == str(failure)


def test_every_input_error_crosses_processes_with_its_message() -> None:
    for cls in (*INPUT_ERRORS, InputError):
        copy = pickle.loads(pickle.dumps(cls("s3://forge/x: the one line")))
        assert type(copy) is cls and str(copy) == "s3://forge/x: the one line"


@pytest.mark.slow
def test_a_worker_on_another_node_fails_on_the_input_the_driver_says_it_in_one_line(
        packed_data, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from forge_data import storage
    from forge_platform.cli import job_main
    from forge_platform.job_config import PretrainConfig
    from forge_platform.single_jobs import run_pretrain

    run_workers_elsewhere(monkeypatch)
    with s3_environment(BUCKET):
        fs, data = storage.resolve_filesystem(f"s3://{BUCKET}/data/train")
        pafs.copy_files(str(packed_data.manifest.parent), data, destination_filesystem=fs, use_threads=False)
        shard = json.loads(packed_data.manifest.read_text())["shards"][0]["path"]
        fs.delete_file(f"{data}/{shard}")  # the workers' loader finds it missing; the driver never reads shards
        try:
            code = job_main(PretrainConfig, run_pretrain, "doc", [
                "--config", str(REPO / "jobs" / "specs" / "pretrain.toml"),
                "--train_manifest", f"s3://{BUCKET}/data/train/manifest.json", "--stage.seq_len", "64",
                "--output_dir", f"s3://{BUCKET}/runs/pretrain", "--scratch_dir", str(tmp_path / DRIVER_SCRATCH),
                "--tracking.backend", "console", "--stage.train.steps", "2", "--stage.train.micro_batch_size", "2",
                "--parallel.num_workers", "1", "--parallel.max_failures", "1", "--ray_num_cpus", "2"])
        finally:
            ray.shutdown()  # the next test's Ray gets its own environment
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: stage 'pretrain': shard {shard} of s3://{BUCKET}/data/train/manifest.json: "
                                "missing"), errors
    # The record stayed on the worker's "node" (where it refused Ray's retry); the driver never had one.
    [marker] = (tmp_path / WORKER_SCRATCH).rglob("input_error.json")
    assert json.loads(marker.read_text())["retries_refused"] == 1
    assert not list((tmp_path / DRIVER_SCRATCH).rglob("input_error.json"))
