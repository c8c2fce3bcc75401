"""The reduced demo campaign with its inputs and output_dir on an S3-compatible object store.

A real server (moto's, in this process, authentication on) holds the corpus; `python -m jobs.campaign`
runs with `output_dir=s3://...`, from an empty working folder, with an MLflow server of its own: the
tokenizer, token stores, shards, manifests, checkpoints (metadata, consolidated weights, DeepSpeed
state) and the campaign's record land in the bucket; the next stage starts from the previous one's
weights read from the store (its curve is the local campaign's, bit for bit); nothing is written to
local disk outside the scratch folder, which is removed. Bad storage (wrong credentials, a missing
bucket, an unreachable endpoint) and a local MLflow with a remote output_dir are one line and exit
code 2 before any work.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from forge_data import storage
from forge_models import build_model
from forge_platform import campaign as campaign_module
from forge_platform import session as session_module
from forge_platform.config_loader import ConfigError, from_dict
from forge_platform.demo_corpus import prepare_demo_corpus
from forge_platform.job_config import CampaignConfig, load_job_config
from forge_platform.tracking.mlflow_server import local_mlflow_server
from mlflow.tracking import MlflowClient
from reduced_campaign import CURVES_FILE, EVAL_METRICS, REDUCED, REPO, STEP_METRICS

from tests.moto_s3 import AWS_ENV_NAMES, s3_environment

BUCKET = "forge"
OUTPUT = f"s3://{BUCKET}/campaigns/demo"


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    """moto's S3 server with authentication on (tests/moto_s3.py); yields the environment naming it."""
    with s3_environment(BUCKET) as env:
        yield env


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _campaign(args: list[str], cwd: Path, aws: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """`python -m jobs.campaign` from `cwd` (not the repository: nothing may land there), the
    credentials in the environment only."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV_NAMES}
    env.update(aws, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("", "platform", "models", "data_pipeline",
                                                                    "evaluation")),
               TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
               MPLCONFIGDIR=str(REPO / ".cache" / "matplotlib"))
    cmd = [sys.executable, "-m", "jobs.campaign", "--config", str(REPO / "jobs" / "specs" / "demo.toml"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _upload_demo_corpus(root: Path) -> None:
    """The corpus the reduced demo campaign makes for itself, put on the store as its inputs."""
    cfg = load_job_config(CampaignConfig, REPO / "jobs" / "specs" / "demo.toml", REDUCED)
    corpus = dataclasses.replace(cfg.corpus, shakespeare=str(REPO / cfg.corpus.shakespeare))
    made = prepare_demo_corpus(corpus, root / "corpus")
    fs, path = storage.resolve_filesystem(f"s3://{BUCKET}/raw")
    for split, folder in (("train", made.train_dir), ("val", made.val_dir)):
        pafs.copy_files(str(folder), f"{path}/{split}", destination_filesystem=fs, use_threads=False)


@pytest.fixture(scope="module")
def campaign(s3, tmp_path_factory):
    """The reduced campaign once, on the store, with its own MLflow server; what it left, read back
    while that server still runs."""
    root = tmp_path_factory.mktemp("s3_campaign")
    _upload_demo_corpus(root)
    cwd, scratch = root / "cwd", root / "scratch"
    cwd.mkdir()
    with local_mlflow_server(root / "mlflow") as server:
        proc = _campaign(["--output_dir", OUTPUT, "--name", "demo-ci", *REDUCED,
                          "--data.inputs", f"s3://{BUCKET}/raw/train", "--val_inputs", f"s3://{BUCKET}/raw/val",
                          "--scratch_dir", str(scratch), "--tracking.uri", server.uri], cwd, s3)
        assert proc.returncode == 0, f"campaign failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("hybrid-forge-demo")
        stages = client.search_runs([experiment.experiment_id], filter_string="tags.`forge.kind` = 'stage'",
                                    order_by=["attributes.start_time ASC"])
        runs = {}
        for run in stages:
            curves = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
                      for k in STEP_METRICS}
            runs[run.info.run_name] = {
                **curves, **{k: run.data.metrics[k] for k in EVAL_METRICS if k in run.data.metrics},
                "checkpoint": run.data.tags["forge.checkpoint"],
                "artifacts": {a.path for a in client.list_artifacts(run.info.run_id, "data")},
            }
    return {"proc": proc, "runs": runs, "cwd": cwd, "scratch": scratch}


@pytest.mark.slow
def test_campaign_on_s3_writes_everything_to_the_bucket(campaign) -> None:
    listed = storage.file_sizes(OUTPUT)
    assert {"tokenizer/tokenizer.model", "campaign_progress.json", "loss_per_stage.png",
            "data/tokens/train/store.json", "data/tokens/val/store.json"} <= set(listed)
    for stage in ("pretrain-256", "extend-1024"):
        assert {f"data/{stage}/train/manifest.json", f"data/{stage}/val/manifest.json"} <= set(listed)
        assert any(p.startswith(f"data/{stage}/train/shards/") for p in listed)
    progress = json.loads(storage.read_bytes(storage.join(OUTPUT, "campaign_progress.json")))["stages"]
    assert set(progress) == {"pretrain-256", "extend-1024"}
    for stage, steps in (("pretrain-256", 6), ("extend-1024", 2)):
        checkpoint = campaign["runs"][stage]["checkpoint"]
        assert checkpoint == progress[stage]["checkpoint_dir"] == \
            f"{OUTPUT}/checkpoints/demo-ci-{stage}/step_{steps:08d}"
        inside = storage.file_sizes(checkpoint)
        # rank 0's files, and DeepSpeed's state of both ranks (each rank uploaded its own scratch folder)
        assert {"meta.json", "model.pt", "model.bf16.pt", "model_config.json", "state/mp_rank_00_model_states.pt",
                "state/zero_pp_rank_0_mp_rank_00_optim_states.pt", "state/zero_pp_rank_1_mp_rank_00_optim_states.pt"} \
            <= set(inside), sorted(inside)
        assert json.loads(storage.read_bytes(storage.join(checkpoint, "meta.json")))["step"] == steps
        assert campaign["runs"][stage]["artifacts"] == {"data/train", "data/val"}  # manifests logged via scratch
    # Ray Train's own record of the stage is on the store: what a rerun would be handed
    snapshot = storage.join(OUTPUT, "checkpoints", "demo-ci-extend-1024", "checkpoint_manager_snapshot.json")
    assert json.loads(storage.read_bytes(snapshot))["latest_checkpoint_result"]["checkpoint_dir_name"] == "step_00000002"


@pytest.mark.slow
def test_the_final_weights_on_s3_load_and_the_curves_are_the_local_campaigns(campaign) -> None:
    """Same corpus, same seeds: every loss, grad norm and learning rate, and the evaluation, equal
    to the local campaign's (recorded in CURVES_FILE); the extension started from the pretraining
    weights it read from the store (else its first loss would differ)."""
    recorded = json.loads(CURVES_FILE.read_text())["stages"]
    for stage, metrics in recorded.items():
        for key, values in metrics.items():
            assert campaign["runs"][stage][key] == values, (stage, key)
    final = campaign["runs"]["extend-1024"]["checkpoint"]
    config = json.loads(storage.read_bytes(storage.join(final, "model_config.json")))
    from forge_models import ModelConfig

    model = build_model(from_dict(ModelConfig, config))
    weights = torch.load(io.BytesIO(storage.read_bytes(storage.join(final, "model.pt"))), weights_only=True)
    model.load_state_dict(weights)


@pytest.mark.slow
def test_nothing_is_written_to_local_disk_outside_scratch(campaign) -> None:
    assert _tree(campaign["cwd"]) == []
    assert _tree(campaign["scratch"]) == []  # the job's scratch folder was removed at its end


def _bad_storage(case: str, aws: dict[str, str]) -> tuple[str, list[str], str]:
    """(output_dir, tracking arguments, the error expected) of one kind of bad storage; changes `aws`."""
    output = f"s3://{BUCKET}/campaigns/bad"
    tracking = ["--tracking.backend", "console"]
    if case == "wrong secret":
        aws["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        expected = (rf"{output}: the S3 endpoint http://127.0.0.1:\d+ refused the credentials for bucket "
                    r"'forge' \(AWS Error \w+\); check AWS_ACCESS_KEY_ID")
    elif case == "no bucket":
        output = "s3://no-such-bucket/campaign"
        expected = rf"{output}: bucket 'no-such-bucket' does not exist \(on the S3 endpoint http"
    elif case == "unreachable":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            aws["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        expected = rf"{output}: cannot reach the S3 endpoint http://127.0.0.1:\d+ \(.*\); check AWS_ENDPOINT_URL"
    else:
        tracking = []
        expected = (r"tracking.uri = '': must name an MLflow server \(http://...\) when output_dir is on an "
                    rf"object store \({output}\)")
    return output, tracking, expected


def test_wrong_credentials_are_one_line_and_exit_2_before_any_work(s3, tmp_path) -> None:
    aws = dict(s3)
    output, tracking, expected = _bad_storage("wrong secret", aws)
    proc = _campaign(["--output_dir", output, *REDUCED, "--data.inputs", f"s3://{BUCKET}/raw/train",
                      "--scratch_dir", str(tmp_path / "scratch"), *tracking], tmp_path, aws, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match("^error: " + expected, errors[0]), proc.stderr[-3000:]
    assert "starting Ray" not in proc.stdout and "tokenizer" not in proc.stdout  # nothing began
    assert storage.file_sizes(f"s3://{BUCKET}/campaigns/bad") == {}
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("case", ["no bucket", "unreachable", "local mlflow"])
def test_bad_storage_is_refused_in_one_line_before_ray_starts(s3, tmp_path, monkeypatch, case) -> None:
    aws = dict(s3)
    output, tracking, expected = _bad_storage(case, aws)
    for name, value in aws.items():
        monkeypatch.setenv(name, value)

    def work(*args, **kwargs):
        raise AssertionError("work started before the output_dir was checked")

    monkeypatch.setattr(session_module, "ensure_ray", work)
    monkeypatch.setattr(campaign_module, "train_tokenizer", work)
    cfg = load_job_config(CampaignConfig, REPO / "jobs" / "specs" / "demo.toml",
                      ["--output_dir", output, *REDUCED, "--data.inputs", f"s3://{BUCKET}/raw/train",
                       "--scratch_dir", str(tmp_path / "scratch"), *tracking])
    error = ConfigError if case == "local mlflow" else storage.StorageError
    with pytest.raises(error, match="^" + expected) as raised:
        campaign_module.run_campaign(cfg)
    assert "\n" not in str(raised.value)
    assert _tree(tmp_path) == []


_STAGE_ON_S3 = """
import dataclasses, json, sys
from forge_models import get_preset
from forge_platform.cluster import ensure_ray
from forge_platform.input_errors import StageInputError
from forge_platform.config_sections import CheckpointConfig, OptimConfig, ParallelConfig, StageConfig, TrackingConfig, TrainConfig
from forge_platform.training.drills import FailureDrill
from forge_platform.training.stage_runner import run_stage
from forge_platform.training.trainer import StageRun

manifest, vocab, storage_uri, scratch, marker = sys.argv[1:6]
stage = StageConfig(name="drill", seq_len=64, train=TrainConfig(steps=4, micro_batch_size=2, zero_stage=2, seed=3),
                    optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_tokens=512),
                    checkpoint=CheckpointConfig(every_steps=1, keep_last=4))
model = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=int(vocab))
run = StageRun(stage=stage, model=model, parallel=ParallelConfig(num_workers=2, max_failures=1, peak_tflops=1.0),
               train_manifest=manifest, tracking=TrackingConfig(backend="null"),
               drill=FailureDrill(after_step=3, marker_dir=marker, wait_s=2.0))
ensure_ray(4)
result = run_stage(run, storage_uri, "drill", scratch)
print("RESULT", json.dumps({"checkpoint": result.checkpoint_dir,
                            "losses": {int(m["step"]): m["loss"] for _, m in result.raw.best_checkpoints}}))
other = dataclasses.replace(run, model=dataclasses.replace(model, d_model=32), drill=None)
try:
    run_stage(other, storage_uri, "drill", scratch)
except StageInputError as err:
    print("REFUSED", err)
"""


@pytest.mark.slow
def test_a_stage_on_s3_resumes_from_its_uploaded_checkpoint_and_a_rerun_is_checked_there(s3, packed_data, tmp_path):
    """A worker dies after step 3: the restarted group is handed the checkpoint on the store, downloads
    and continues from it (no sample repeated or skipped); a rerun with another model is refused on
    the driver from Ray's record and the metadata on the store, before any worker starts."""
    storage_uri = f"s3://{BUCKET}/stages"
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV_NAMES}
    env.update(s3, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(str(REPO / p) for p in (
        "", "platform", "models", "data_pipeline", "evaluation")))
    done = subprocess.run([sys.executable, "-c", _STAGE_ON_S3, str(packed_data.manifest), str(packed_data.vocab_size),
                           storage_uri, str(tmp_path / "scratch"), str(tmp_path / "marker")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-5000:]
    assert (tmp_path / "marker" / "crashed").exists(), "the drill did not crash a worker"
    result = json.loads(said.split("RESULT ", 1)[1].splitlines()[0])
    # from the last checkpoint Ray registered before the crash (which one depends on its polling)
    assert re.search(r"\[drill\] resumed at step [123] from its last checkpoint", said), said[-5000:]
    assert sorted(result["losses"]) == ["1", "2", "3", "4"]
    assert result["checkpoint"] == f"{storage_uri}/drill/step_00000004"
    meta = json.loads(storage.read_bytes(f"{storage_uri}/drill/step_00000004/meta.json"))
    assert meta["step"] == 4 and meta["samples_consumed"] == 4 * 2 * 2  # no sample repeated or skipped
    assert re.search(r"REFUSED stage 'drill': checkpoint of stage 'drill' was written by another model", said), \
        said[said.find("RESULT"):][:3000]
    assert [p for p in _tree(tmp_path / "scratch") if "step_" in p] == []  # every local copy deleted after upload


def test_the_campaign_record_on_s3_names_finished_stages_only_while_their_checkpoint_is_there(s3) -> None:
    """A rerun skips a stage the record on the store names, while its checkpoint folder is on the
    store; a record whose checkpoint is gone (or whose settings changed) does not count."""
    from forge_platform.campaign import CampaignProgress
    from forge_platform.stage import StageOutcome

    where = f"s3://{BUCKET}/progress-test"
    checkpoint = f"{where}/checkpoints/run-a/step_00000006"
    storage.publish(f"{checkpoint}/meta.json", b"{}")
    progress = CampaignProgress(f"{where}/campaign_progress.json")
    assert progress.stages == {}
    progress.record(StageOutcome("a", "run-a", checkpoint, 1.5, {"val_loss": 2.0}), key="k1")
    progress.record(StageOutcome("b", "run-b", f"{where}/checkpoints/gone/step_00000002", 1.0, {}), key="k2")
    again = CampaignProgress(f"{where}/campaign_progress.json")  # read back from the store
    assert again.finished("a", "k1") == StageOutcome("a", "run-a", checkpoint, 1.5, {"val_loss": 2.0})
    assert again.finished("a", "another key") is None
    assert again.finished("b", "k2") is None  # its checkpoint is not on the store
