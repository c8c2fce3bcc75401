"""The demo campaign, reduced in size, end to end through its CLI; its MLflow runs queried afterwards.

Real parts throughout: a local Ray, Ray Data, SentencePiece, Parquet, Ray Train with 2 workers under
DeepSpeed ZeRO-2, a local MLflow server. Only the sizes are smaller than `scripts/demo.sh`'s.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from reduced_campaign import CURVES_FILE, read_curves, run_reduced_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    proc = run_reduced_campaign(out)
    assert proc.returncode == 0, f"campaign failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return out, proc


def test_same_curves_as_before_the_platform_reshape(campaign: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Same seed, same config: every stage's loss, grad norm and learning rate per step, and its
    evaluation, equal to the last bit what the code before the reshape recorded (CURVES_FILE)."""
    out, _ = campaign
    recorded = json.loads(CURVES_FILE.read_text())["stages"]
    now = read_curves(out)
    assert list(now) == list(recorded)
    for stage, metrics in recorded.items():
        for key, values in metrics.items():
            assert now[stage][key] == values, (stage, key, now[stage][key], values)


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
        # what `jobs.evaluate --run_id` reads: the held-out data the stage was evaluated on
        assert Path(child.data.tags["forge.val_manifest"]).name == "manifest.json"
        assert {a.path for a in client.list_artifacts(child.info.run_id, "data")} == {"data/train", "data/val"}
    assert "loss_per_stage.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tokenizer")}
    # the extension started from the pretraining weights: its first loss is far below a fresh model's
    first_ext = client.get_metric_history(children[1].info.run_id, "loss")[0].value
    first_pre = client.get_metric_history(children[0].info.run_id, "loss")[0].value
    assert first_ext < first_pre - 0.2
    assert "mlflow ui --backend-store-uri" in proc.stdout
    # the parent run's link opens MLflow's training view, not its GenAI view (seen in a browser)
    assert f"/runs/{parent.info.run_id}?workflowType=machine_learning" in proc.stdout
    # where each stage's time went: the driver's wall times and the worker's own breakdown
    said = proc.stdout + proc.stderr
    for stage, steps in (("pretrain-256", 6), ("extend-1024", 2)):
        assert re.search(rf"stage '{stage}': training took \d+ s on Ray Train", said), stage
        assert re.search(rf"stage '{stage}': evaluation took \d+ s", said), stage
        assert re.search(rf"\[{stage}\] time: set-up [\d.]+ s, first step [\d.]+ s \(compilation, autotuning\), "
                         rf"{steps - 1} more steps [\d.]+ s, checkpoints [\d.]+ s", said), stage
