"""The reduced campaign against a production-shaped MLflow on one machine (tests/platform/production_stack.py):
PostgreSQL from the Debian package, moto's S3 server, and `mlflow server` started with the cluster
Deployment's own command and basic authentication, artifacts served through it into the bucket.

The campaign reads its inputs from s3://, writes its outputs (tokenizer, tokens, shards, checkpoints)
to s3://, logs to the server with a login from the environment; afterwards `MlflowClient`, logged
in, finds the runs, their metrics, the artifacts (in the bucket, not on the server's disk) and the
registered model with its lineage. A wrong password is one line and exit code 2 before anything is
tokenized. Nothing is written to local disk outside the scratch folder.

Wall time on 2 shared cores: 3 min 40 s; 5 min 14 s under a load average of 25 (the campaign runs
twice: once refused, once through). Run alone with `bash scripts/integration_mlflow_stack.sh`.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from reduced_campaign import REDUCED, REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                       reason="needs PostgreSQL's server binaries (Debian/Ubuntu package postgresql)"),
]

EXPERIMENT = "hybrid-forge-production-test"
NAME = f"prod-{uuid.uuid4().hex[:8]}"
"""The campaign's name, unique to this test session: searched for on local disk afterwards."""
STAGES = ("pretrain-256", "extend-1024")


@pytest.fixture(scope="module")
def stack():
    from production_stack import production_stack

    with production_stack() as running:
        with pytest.MonkeyPatch.context() as mp:  # MlflowClient and boto3 in this process log in too
            for key, value in running.client_env().items():
                mp.setenv(key, value)
            yield running


def _s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=stack.s3_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack.s3_env["AWS_SECRET_ACCESS_KEY"])


def _keys(stack, prefix: str) -> list[str]:
    pages = _s3(stack).get_paginator("list_objects_v2").paginate(Bucket="forge", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _upload_corpus(stack) -> dict[str, str]:
    """The demo corpus at CI size, uploaded to s3://forge/corpus/{train,val}."""
    from forge_platform.config_sections import CorpusConfig
    from forge_platform.demo_corpus import prepare_demo_corpus

    corpus = prepare_demo_corpus(CorpusConfig(shakespeare=str(REPO / "datasets/tinyshakespeare/input.txt"),
                                              stdlib_files=12), stack.scratch / "corpus")
    s3 = _s3(stack)
    for split, folder in (("train", corpus.train_dir), ("val", corpus.val_dir)):
        for path in sorted(folder.iterdir()):
            s3.upload_file(str(path), "forge", f"corpus/{split}/{path.name}")
    return {"train": "s3://forge/corpus/train", "val": "s3://forge/corpus/val"}


def _campaign(stack, inputs: dict[str, str], password: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m jobs.campaign` at CI size: inputs and outputs on s3://, tracking on the stack's MLflow.
    TMPDIR and HOME point into the scratch folder (Ray's session folder, caches)."""
    for folder in ("tmp", "home", "job"):
        (stack.scratch / folder).mkdir(exist_ok=True)
    env = {**os.environ, **stack.client_env(password), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1", "TMPDIR": str(stack.scratch / "tmp"), "HOME": str(stack.scratch / "home"),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "jobs.campaign", "--config", "jobs/specs/demo.toml", "--name", NAME,
           "--output_dir", f"s3://forge/runs/{NAME}", "--scratch_dir", str(stack.scratch / "job"),
           "--tracking.uri", stack.mlflow_uri, "--tracking.experiment", EXPERIMENT,
           "--data.inputs", f'["{inputs["train"]}"]', "--val_inputs", f'["{inputs["val"]}"]', *REDUCED]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def campaign(stack):
    inputs = _upload_corpus(stack)
    started = time.time()
    refused = _campaign(stack, inputs, password="not-the-password")
    written_when_refused = _keys(stack, f"runs/{NAME}/")
    proc = _campaign(stack, inputs)
    assert proc.returncode == 0, f"campaign failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc, (refused, written_when_refused), started


def test_a_wrong_password_is_one_line_before_anything_is_tokenized(stack, campaign) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _, (refused, written), _ = campaign
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: invalid job spec: tracking.uri = '{stack.mlflow_uri}': the MLflow server refused the credentials "
        "of user 'admin' (401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it knows"]
    assert "Traceback" not in refused.stderr
    assert "training the SentencePiece tokenizer" not in refused.stdout
    assert [k for k in written if not k.endswith("/")] == []  # no file before the run that logged in (a folder marker)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = "not-the-password"
    try:
        with pytest.raises(MlflowException, match="401"):
            MlflowClient(stack.mlflow_uri).search_experiments()
    finally:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = stack.admin[1]


def test_runs_metrics_artifacts_and_the_registered_model_are_in_production_mlflow(stack, campaign) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{NAME}'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    assert tuple(c.info.run_name for c in children) == STAGES
    for child, steps in zip(children, (6, 2)):
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == list(range(1, steps + 1))
        assert child.data.metrics["val_loss"] > 0
        assert child.data.tags["forge.checkpoint"].startswith(f"s3://forge/runs/{NAME}/checkpoints/")
        assert {a.path for a in client.list_artifacts(child.info.run_id, "data")} == {"data/train", "data/val"}

    # Artifacts went through the server into the bucket: the run's URI is the server's, the objects are in S3.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tokenizer", "model", "loss_per_stage.png"} <= top, top
    in_bucket = _keys(stack, f"mlflow/{experiment.experiment_id}/{parent.info.run_id}/artifacts/")
    for name in ("model/model.pt", "model/model_config.json", "model/tokenizer.model", "loss_per_stage.png"):
        assert any(k.endswith(name) for k in in_bucket), (name, in_bucket)
    assert not list((stack.scratch / "mlflow").rglob("model.pt")), "artifacts stored on the server's disk"

    # The campaign's outputs are on s3:// too.
    outputs = _keys(stack, f"runs/{NAME}/")
    assert any(k.endswith("tokenizer/tokenizer.model") for k in outputs)
    assert any(k.endswith("manifest.json") and "/data/pretrain-256/train/" in k for k in outputs)
    assert any(k.endswith("/model.pt") and "/checkpoints/" in k for k in outputs)

    # The final weights: a registered model version with its lineage.
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert version.run_id == parent.info.run_id
    assert version.source == f"{parent.info.artifact_uri}/model"
    assert version.tags["forge.parent_run_id"] == parent.info.run_id
    for child in children:
        assert version.tags[f"forge.stage.{child.info.run_name}.run_id"] == child.info.run_id
        assert version.tags[f"forge.stage.{child.info.run_name}.checkpoint"] == child.data.tags["forge.checkpoint"]
    assert client.get_run(parent.info.run_id).data.tags["forge.registered_model"] == f"{NAME}/1"


def test_nothing_was_written_to_local_disk_outside_the_scratch_folder(stack, campaign) -> None:
    """Anything the campaign names after itself (Ray Train's run folders, checkpoints, a local
    output_dir or MLflow store by mistake) created since it started, outside the scratch folder,
    in the repository, the temporary folder or the home folder."""
    _, _, started = campaign
    strays = [str(p) for p in (Path.home() / "ray_results").glob(f"{NAME}*")]  # Ray Train's default
    for root, max_depth in ((REPO, 8), (Path(tempfile.gettempdir()), 3)):
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            dirs[:] = [] if depth >= max_depth else [
                d for d in dirs if d not in (".git", ".venv", "node_modules") and Path(folder, d) != stack.scratch]
            for name in (*dirs, *files):
                path = Path(folder, name)
                if NAME in name and path.exists() and path.lstat().st_mtime >= started - 1:
                    strays.append(str(path))
    assert not strays, strays
