"""Kill a campaign's driver mid-campaign, run the same command again: the finished stage is not
re-run, the unfinished one resumes from its checkpoint, and its curve is the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from reduced_campaign import CURVES_FILE, REDUCED, REPO, read_curves

pytestmark = pytest.mark.slow

# A checkpoint after every step of the extension stage, so the kill can land after its first one.
ARGS = ["--config", "jobs/specs/demo.toml", "--name", "demo-ci", *REDUCED, "--stages.1.checkpoint.every_steps", "1"]


def campaign_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.campaign", "--output_dir", str(out), *ARGS]


def registered_step(stage_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train registered for a stage (what it hands a rerun)."""
    snapshot = stage_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return None
    return int(latest["metrics"]["step"]) if latest else None


def test_a_killed_driver_is_resumed_by_running_the_command_again(tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    log = (tmp_path / "first.log").open("w")
    # Its own session: the kill takes the driver with its local Ray and MLflow server, like a lost node.
    first = subprocess.Popen(campaign_command(out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    extension = out / "checkpoints" / "demo-ci-extend-1024"
    deadline = time.monotonic() + 600
    try:
        while registered_step(extension) is None:  # Ray Train has registered a checkpoint of the extension
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the extension stage never saved a checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_ms = time.time() * 1000
    steps_done = registered_step(extension)
    progress = json.loads((out / "campaign_progress.json").read_text())["stages"]
    assert list(progress) == ["pretrain-256"]  # the extension had not finished

    second = subprocess.run(campaign_command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "stage 1/2 'pretrain-256': finished in an earlier run of this campaign" in second.stdout
    assert "training 6 steps" not in second.stdout  # pretraining was not run again
    recorded = json.loads(CURVES_FILE.read_text())["stages"]["extend-1024"]
    # It resumed after the last checkpoint Ray registered before the kill: no earlier step is
    # logged after the kill, and every loss logged for the stage, before and after the kill, is the
    # uninterrupted campaign's at that step, bit for bit; so is its evaluation.
    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hybrid-forge-demo")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'extend-1024'")
    logged = [m for r in runs for m in client.get_metric_history(r.info.run_id, "loss")]
    assert {m.step for m in logged} == {1, 2}
    redone = {m.step for m in logged if m.timestamp > killed_ms and m.step <= steps_done}
    assert not redone  # resumed: no step up to the registered checkpoint was trained again
    assert all(m.value == recorded["loss"][m.step - 1] for m in logged), [(m.step, m.value) for m in logged]
    assert read_curves(out)["extend-1024"]["val_loss"] == recorded["val_loss"]
