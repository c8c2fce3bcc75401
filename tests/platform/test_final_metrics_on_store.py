"""A stage's last metrics reach the driver whatever node rank 0 ran on: with an s3:// output_dir, rank 0
publishes final_metrics.json beside the checkpoints on the store, not in its node's local scratch,
which on a cluster is not the driver's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.moto_s3 import s3_environment
from tests.platform.other_node import DRIVER_SCRATCH, WORKER_SCRATCH, run_workers_elsewhere

REPO = Path(__file__).resolve().parents[2]
BUCKET = "forge"


@pytest.mark.slow
def test_the_last_steps_metrics_reach_the_driver_from_another_nodes_rank_0(
        packed_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from forge_data import storage
    from forge_platform.cli import job_main
    from forge_platform.job_config import PretrainConfig
    from forge_platform.single_jobs import run_pretrain

    run_workers_elsewhere(monkeypatch)
    outcomes = []
    with s3_environment(BUCKET):
        fs, data = storage.resolve_filesystem(f"s3://{BUCKET}/data/train")
        pafs.copy_files(str(packed_data.manifest.parent), data, destination_filesystem=fs, use_threads=False)
        try:
            # No checkpoint at all: Ray Train's result then carries no metrics, only final_metrics.json does.
            code = job_main(PretrainConfig, lambda cfg: outcomes.append(run_pretrain(cfg)), "doc", [
                "--config", str(REPO / "jobs" / "specs" / "pretrain.toml"),
                "--train_manifest", f"s3://{BUCKET}/data/train/manifest.json", "--stage.seq_len", "64",
                "--output_dir", f"s3://{BUCKET}/runs/pretrain", "--scratch_dir", str(tmp_path / DRIVER_SCRATCH),
                "--tracking.backend", "console", "--stage.train.steps", "2", "--stage.train.micro_batch_size", "2",
                "--stage.checkpoint.save_final", "false", "--stage.checkpoint.every_steps", "100",
                "--parallel.num_workers", "1", "--parallel.max_failures", "0", "--ray_num_cpus", "2"])
            assert code == 0 and len(outcomes) == 1
            [outcome] = outcomes
            assert outcome.checkpoint_dir is None
            # the loss of a real step of an untrained model (vocab 2048 in the spec): near log(vocab)
            assert 0.5 * math.log(2048) < outcome.final_loss < 2 * math.log(2048), outcome.final_loss
            published = storage.read_bytes(f"s3://{BUCKET}/runs/pretrain/checkpoints/pretrain-debug/final_metrics.json")
            assert json.loads(published) == {"loss": pytest.approx(outcome.final_loss), "step": 2}
        finally:
            ray.shutdown()  # the next test's Ray gets its own environment
    # Nothing was left in either node's scratch for the driver to (mis)read.
    assert not list(tmp_path.rglob("final_metrics.json"))
