"""`ray job submit --working-dir . -- python -m jobs.pretrain ...` against a local Ray cluster.

The path users take: a head node started with `ray start`, the repository uploaded as the job's
working directory, the job's driver joining the cluster through RAY_ADDRESS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from forge_platform.training.checkpoint_files import read_meta
from forge_platform.tracking.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = pytest.mark.slow


@pytest.fixture()
def ray_head(tmp_path: Path):
    """A Ray head with the job-submission server on 127.0.0.1; its whole process group is stopped after."""
    dashboard = free_port()
    # The head's `python` is this environment's, as on a cluster image with hybrid-forge installed.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "4", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         # Free ports for the node's agent too: another Ray on this machine (the test session's own)
         # holds the default ones, and then no agent can take the job.
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()),
         "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail(f"the Ray head did not serve jobs in 120 s:\n{(tmp_path / 'head.log').read_text()[-3000:]}")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_pretrain_job_runs_through_ray_job_submit(ray_head, packed_data, tmp_path: Path) -> None:
    address, env = ray_head
    out = tmp_path / "run"
    cmd = [
        RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
        "python", "-m", "jobs.pretrain", "--config", "jobs/specs/pretrain.toml",
        "--train_manifest", str(packed_data.manifest), "--output_dir", str(out),
        "--tracking.backend", "console", "--model.vocab_size", str(packed_data.vocab_size),
        "--stage.seq_len", "64", "--stage.train.steps", "2", "--stage.train.micro_batch_size", "2",
        "--stage.train.log_every", "1",
    ]
    # The head answers before its node's job agent has registered: Ray says so, and to try again.
    for _ in range(12):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "succeeded" in proc.stdout
    assert "[pretrain] step 2: loss=" in proc.stdout  # rank 0's console logger, streamed back
    checkpoints = sorted((out / "checkpoints" / "pretrain-debug").glob("step_*"))
    assert [c.name for c in checkpoints] == ["step_00000002"]
    meta = read_meta(checkpoints[0])
    assert (meta.step, meta.data_parallel, meta.samples_consumed) == (2, 2, 8)
