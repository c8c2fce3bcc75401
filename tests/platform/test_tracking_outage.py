"""A tracking server that dies mid-run costs no step and loses no metric.

Each test stops a real local MLflow server (SQLite backend) while logging goes on, restarts it on
the same port and store, and reads back what MLflow holds. No `MLFLOW_HTTP_REQUEST_MAX_RETRIES`
is set: the platform must not depend on MLflow's retry settings to stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from forge_platform.config_loader import ConfigError
from forge_platform.session import check_tracking_server
from forge_platform.tracking.journal import JOURNAL_FILE
from forge_platform.tracking.loggers import MlflowLogger
from forge_platform.tracking.mlflow_server import free_port, local_mlflow_server
from forge_platform.tracking.replay import main as replay_main
from forge_platform.tracking.runs import MlflowRuns
from forge_platform.tracking.transport import PENDING_RUN_PREFIX, unreachable_reason
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "memory_gib", "mfu")  # what the trainer logs per step


def step_metrics(step: int) -> dict[str, float]:
    return {key: step + i / 10 for i, key in enumerate(KEYS)}


def log_steps(logger: MlflowLogger, steps: range, pause_s: float = 0.0) -> list[float]:
    """Log `steps` like a training loop would; the seconds each `log` call took."""
    seconds = []
    for step in steps:
        started = time.perf_counter()
        logger.log(step_metrics(step), step=step)
        seconds.append(time.perf_counter() - started)
        time.sleep(pause_s)
    return seconds


def test_every_metric_reaches_mlflow_exactly_once_across_an_outage(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spill = tmp_path / "tracking" / "run.metrics.jsonl"
    with local_mlflow_server(tmp_path / "store", port=port):
        run_id = MlflowRuns(uri, "outage", tmp_path / "tracking").start("pretrain", {})
        # A small buffer, so the outage overflows it into the spill file.
        logger = MlflowLogger(uri, run_id, spill, max_buffered=60, max_backoff_s=0.5)
        up = log_steps(logger, range(1, 31), pause_s=0.01)
    down = log_steps(logger, range(31, 131), pause_s=0.02)  # ~2 s of training with no server
    assert logger.queue.server_down
    assert spill.exists() and logger.queue.num_spilled > 0, "a full buffer must spill to the run's folder"
    assert logger.pending <= 60, "the in-memory buffer is bounded"
    with local_mlflow_server(tmp_path / "store", port=port):  # back: same port, same store
        log_steps(logger, range(131, 151), pause_s=0.01)
        logger.close()
        assert not spill.exists(), "the spill file is replayed and removed once sent"
        client = MlflowClient(uri)
        for key in KEYS:
            points = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            assert sorted(points) == [(s, step_metrics(s)[key]) for s in range(1, 151)], key
    # The training thread never waited on the server: not while up, not while down.
    print(f"log() per step: server up max {max(up) * 1e3:.2f} ms, server down max {max(down) * 1e3:.2f} ms")
    assert max(down) < 0.05, f"a log call took {max(down):.3f} s with the server down"


def test_metrics_left_at_close_are_kept_and_sent_by_the_driver(tmp_path: Path) -> None:
    """The server is still down when the stage ends: the worker leaves a spill file, the driver's
    end-of-stage calls are queued, and everything lands once, in order, when the server returns."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    folder = tmp_path / "tracking"
    with local_mlflow_server(tmp_path / "store", port=port):
        runs = MlflowRuns(uri, "outage", folder)
        run_id = runs.start("pretrain", {"train.steps": 20})
        logger = MlflowLogger(uri, run_id, folder / f"{run_id}.metrics.jsonl", max_backoff_s=0.5)
        log_steps(logger, range(1, 11))
        time.sleep(0.5)
    log_steps(logger, range(11, 21))
    started = time.perf_counter()
    logger.close()
    runs.send_spilled(run_id)
    runs.set_tag(run_id, "forge.checkpoint", "/ckpt/final")
    runs.log_metrics(run_id, {"val_loss": 2.5}, step=20)
    (tmp_path / "manifest.json").write_text("{}")
    runs.log_artifact(run_id, str(tmp_path / "manifest.json"), "data/train")
    (tmp_path / "manifest.json").unlink()  # gone before the server is back: the queued call kept a copy
    child = runs.start("extend", {"a": 1}, parent_run_id=run_id)  # a run started during the outage
    runs.log_metrics(child, {"val_loss": 2.0}, step=1)
    runs.finish(child)
    runs.finish(run_id)
    runs.close()
    driver_s = time.perf_counter() - started
    assert driver_s < 20, f"the end of the stage waited {driver_s:.0f} s on a dead server"
    assert child.startswith(PENDING_RUN_PREFIX)
    queued = [json.loads(line)["op"] for line in (folder / JOURNAL_FILE).read_text().splitlines()]
    assert queued == ["send_spilled", "set_tag", "log_metrics", "log_artifact", "start", "log_metrics", "finish",
                      "finish"]
    with local_mlflow_server(tmp_path / "store", port=port):
        assert replay_main([str(folder), "--uri", uri]) == 0  # the command the log names
        assert not (folder / JOURNAL_FILE).exists()
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["forge.checkpoint"] == "/ckpt/final"
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")] == [(20, 2.5)]
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, 21))
        assert [a.path for a in client.list_artifacts(run_id, "data/train")] == ["data/train/manifest.json"]
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        assert len(children) == 1 and children[0].info.status == "FINISHED"
        assert children[0].data.params == {"a": "1"}
        assert [(m.step, m.value) for m in client.get_metric_history(children[0].info.run_id, "val_loss")] == [(1, 2.0)]


def test_an_unreachable_server_at_start_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=r"^tracking.uri = .*unreachable.*--tracking.on_unreachable continue"):
        check_tracking_server(uri, "refuse", "/tmp/spill")
    check_tracking_server(uri, "continue", "/tmp/spill")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"warning: the MLflow server at {uri} is unreachable")
    assert "/tmp/spill" in out


def kill_server(server) -> None:
    """Kill the server and its workers at once, as a crashed host would (no clean shutdown)."""
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not unreachable_reason(server.uri, timeout_s=0.5) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_stage_that_trained_is_finished_whatever_tracking_does(tmp_path: Path, monkeypatch) -> None:
    """The server dies while the stage trains and is still down at its end: the stage returns (not
    FAILED, no exception), and its run is FINISHED with its tag and metrics once the server returns."""
    import forge_platform.stage as stage_module
    from forge_models import get_preset
    from forge_platform.config_sections import ParallelConfig, StageConfig, TrackingConfig
    from forge_platform.session import JobSession
    from forge_platform.tracking.loggers import build_logger
    from forge_platform.training.stage_runner import StageResult

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracking = TrackingConfig(uri=uri, system_metrics_interval_s=0, spill_dir=str(tmp_path / "tracking"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    with contextlib.ExitStack() as first_server:
        server = first_server.enter_context(local_mlflow_server(tmp_path / "store", port=port))

        def fake_run_stage(run, checkpoint_root, ray_name, scratch_dir=None) -> StageResult:  # rank 0, 5 steps
            logger = build_logger(run.tracking, 0, run.run_id)
            for step in range(1, 6):
                if step == 3:
                    kill_server(server)
                logger.log({"loss": 10.0 - step}, step=step)
            logger.close()
            return StageResult(checkpoint_dir=tmp_path / "ckpt", metrics={"loss": 5.0}, raw=None)

        monkeypatch.setattr(stage_module, "run_stage", fake_run_stage)
        session = JobSession(tracking, MlflowRuns(uri, tracking.experiment, tracking.spill_dir), None)
        started = time.perf_counter()
        outcome = stage_module.train_and_evaluate(
            StageConfig(name="s"), get_preset("hybrid-debug"), ParallelConfig(num_workers=1), {"train": manifest},
            None, session, parent_run_id=None, checkpoint_root=tmp_path, init_weights="", ray_name="outage")
        seconds = time.perf_counter() - started
    assert outcome.final_loss == 5.0 and outcome.checkpoint_dir == tmp_path / "ckpt"
    assert seconds < 30, f"the stage's end waited {seconds:.0f} s on a dead server"
    with local_mlflow_server(tmp_path / "store", port=port):
        session.runs.close()  # the session's end: the server is back, the queue is sent
        client = MlflowClient(uri)
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[stage_module.CHECKPOINT_TAG] == str(tmp_path / "ckpt")
        assert [(m.step, m.value) for m in client.get_metric_history(outcome.run_id, "loss")] == [
            (s, 10.0 - s) for s in range(1, 6)]
        assert [a.path for a in client.list_artifacts(outcome.run_id, "data/train")] == ["data/train/manifest.json"]


def test_ray_train_stage_with_the_server_killed_mid_stage(packed_data, tmp_path: Path) -> None:
    """Two Ray Train workers, DeepSpeed ZeRO-2: the server is killed after step 5 of 30 and stays
    down to the stage's end. The stage finishes; once the server is back, every step's loss is in
    MLflow exactly once and the run is FINISHED."""
    import dataclasses
    import threading

    from forge_models import get_preset
    from forge_platform.cluster import ensure_ray
    from forge_platform.config_sections import (CheckpointConfig, ParallelConfig, StageConfig, TrackingConfig,
                                                TrainConfig)
    from forge_platform.session import JobSession
    from forge_platform.stage import CHECKPOINT_TAG, train_and_evaluate

    steps, kill_after = 30, 5
    ensure_ray(4, workspace=tmp_path)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracking = TrackingConfig(uri=uri, experiment="ray-outage", system_metrics_interval_s=0,
                              spill_dir=str(tmp_path / "tracking"))
    stage = StageConfig(name="outage", seq_len=64,
                        train=TrainConfig(steps=steps, micro_batch_size=2, zero_stage=2, recompute="none"),
                        checkpoint=CheckpointConfig(every_steps=steps))
    model = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=packed_data.vocab_size)
    with contextlib.ExitStack() as first_server:
        server = first_server.enter_context(local_mlflow_server(tmp_path / "store", port=port))
        runs = MlflowRuns(uri, tracking.experiment, tracking.spill_dir)
        killed = threading.Event()

        def kill_mid_stage() -> None:  # watches MLflow like a user would, kills it after step `kill_after`
            client = MlflowClient(uri)
            while not killed.is_set():
                found = client.search_runs([runs.experiment_id], max_results=1)
                if found and len(client.get_metric_history(found[0].info.run_id, "loss")) >= kill_after:
                    kill_server(server)
                    killed.set()
                time.sleep(0.2)

        threading.Thread(target=kill_mid_stage, daemon=True).start()
        outcome = train_and_evaluate(stage, model, ParallelConfig(num_workers=2, peak_tflops=1.0),
                                     {"train": packed_data.manifest}, None, JobSession(tracking, runs, None),
                                     parent_run_id=None, checkpoint_root=tmp_path / "ckpt", init_weights="",
                                     ray_name="outage")
        assert killed.is_set(), "the stage ended before the server was killed"
    assert outcome.checkpoint_dir is not None
    with local_mlflow_server(tmp_path / "store", port=port):
        runs.close()
        client = MlflowClient(uri)
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[CHECKPOINT_TAG] == str(outcome.checkpoint_dir)
        for key in ("loss", "lr", "tokens_per_s"):
            assert sorted(m.step for m in client.get_metric_history(outcome.run_id, key)) == list(range(1, steps + 1))
        rates = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "tokens_per_s")}
    up = sorted(rates[s] for s in range(2, kill_after + 1))  # step 1 pays for warm-up
    down = sorted(rates[s] for s in range(kill_after + 3, steps + 1))
    print(f"tokens/s median: server up {up[len(up) // 2]:.0f}, server down {down[len(down) // 2]:.0f}")
