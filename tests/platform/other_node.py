"""Stage workers "on another node", on one machine: their local folder is not the driver's scratch.

With an object-store output_dir, each node keeps a stage's local files (checkpoints before upload,
input_error.json) in its own scratch folder, out of the driver's reach. Tests of what must reach the
driver anyway give the driver a scratch folder named DRIVER_SCRATCH and move every worker's to
WORKER_SCRATCH.
"""

from __future__ import annotations

import dataclasses

import pytest

DRIVER_SCRATCH = "driver-scratch"
WORKER_SCRATCH = "worker-node-scratch"


def run_workers_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on (in this test), stage workers use WORKER_SCRATCH where the driver uses DRIVER_SCRATCH."""
    import ray
    from forge_platform.training import stage_runner
    from forge_platform.training.trainer import train_stage_worker

    # Nested, so Ray ships it by value: the workers cannot import a test module.
    def worker_on_another_node(config: dict) -> None:
        run = config["run"]
        assert f"/{DRIVER_SCRATCH}/" in run.checkpoint_root, run.checkpoint_root
        elsewhere = run.checkpoint_root.replace(f"/{DRIVER_SCRATCH}/", f"/{WORKER_SCRATCH}/")
        train_stage_worker({**config, "run": dataclasses.replace(run, checkpoint_root=elsewhere)})

    if ray.is_initialized():  # an earlier test's Ray: its workers do not have this test's store environment
        ray.shutdown()
    monkeypatch.setattr(stage_runner, "train_stage_worker", worker_on_another_node)
