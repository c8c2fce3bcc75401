"""The demo campaign, reduced in size, end to end through its CLI; its MLflow runs queried afterwards.

Real parts throughout: a local Ray, Ray Data, SentencePiece, Parquet, Ray Train with 2 workers under
DeepSpeed ZeRO-2, a local MLflow server. Only the sizes are smaller than `scripts/demo.sh`'s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

REDUCED = [
    "--corpus.stdlib_files", "12",
    "--data.tokenizer.vocab_size", "400",
    "--stages.0.train.steps", "6",
    "--stages.0.train.micro_batch_size", "2",
    "--stages.0.train.log_every", "1",
    "--stages.0.optim.lr", "1e-2",
    "--stages.0.optim.warmup_tokens", "0",
    "--stages.0.checkpoint.every_steps", "3",
    "--stages.0.eval.val_batches", "2",
    "--stages.0.eval.phonebook_entries", "[2]",
    "--stages.0.eval.phonebook_queries", "1",
    "--stages.1.train.steps", "2",
    "--stages.1.train.micro_batch_size", "1",
    "--stages.1.train.log_every", "1",
    "--stages.1.eval.val_batches", "1",
    "--stages.1.eval.phonebook_entries", "[2]",
    "--stages.1.eval.phonebook_queries", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jobs.campaign", "--config", "jobs/specs/demo.toml",
           "--output_dir", str(out), "--name", "demo-ci", *REDUCED]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"campaign failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return out, proc


def test_campaign_runs_are_in_mlflow(campaign: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = campaign
    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hybrid-forge-demo")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`forge.kind` = 'campaign'")
    assert [r.info.run_name for r in parents] == ["demo-ci"]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.pattern"] == "M+M*+M+"
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    assert [c.info.run_name for c in children] == ["pretrain-256", "extend-1024"]
    for child, steps in zip(children, (6, 2)):
        assert child.info.status == "FINISHED"
        losses = client.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(1, steps + 1))
        for key in ("lr", "tokens_per_s", "grad_norm", "mfu"):
            assert len(client.get_metric_history(child.info.run_id, key)) == steps, key
        assert child.data.metrics["val_loss"] > 0
        assert "phonebook_2_accuracy" in child.data.metrics
        checkpoint = Path(child.data.tags["forge.checkpoint"])
        assert (checkpoint / "model.pt").exists() and (checkpoint / "meta.json").exists()
        assert {a.path for a in client.list_artifacts(child.info.run_id, "data")} == {"data/train", "data/val"}
    assert "loss_per_stage.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tokenizer")}
    # the extension started from the pretraining weights: its first loss is far below a fresh model's
    first_ext = client.get_metric_history(children[1].info.run_id, "loss")[0].value
    first_pre = client.get_metric_history(children[0].info.run_id, "loss")[0].value
    assert first_ext < first_pre - 0.2
    assert "mlflow ui --backend-store-uri" in proc.stdout
