"""Tracking against a real local MLflow server: nested runs, step metrics, artifacts, buffering,
long params. (A server that dies mid-run: test_tracking_outage.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from forge_platform.config_sections import TrackingConfig
from forge_platform.tracking.loggers import ConsoleLogger, MlflowLogger, NullLogger, build_logger
from forge_platform.tracking.mlflow_server import free_port, local_mlflow_server
from forge_platform.tracking.plots import plot_loss_per_stage
from forge_platform.tracking.runs import EXPERIMENT_KIND_TAG, MAX_PARAM_CHARS, MlflowRuns
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with local_mlflow_server(tmp_path_factory.mktemp("mlflow")) as running:
        yield running


def test_nested_runs_metrics_and_artifacts_round_trip(server, tmp_path: Path) -> None:
    runs = MlflowRuns(server.uri, "test-experiment")
    parent = runs.start("campaign", {"model.d_model": 64})
    child = runs.start("pretrain", {"train.steps": 3}, parent_run_id=parent)
    logger = build_logger(TrackingConfig(uri=server.uri, system_metrics_interval_s=0), rank=0, run_id=child)
    for step in range(1, 4):
        logger.log({"loss": 5.0 - step, "lr": 1e-3}, step=step)
    logger.close()
    plot = plot_loss_per_stage({"pretrain": runs.loss_history(child)}, tmp_path / "loss.png")
    runs.log_artifact(parent, str(plot))
    runs.set_tag(child, "forge.checkpoint", "/ckpt/x")
    runs.finish(child)
    runs.finish(parent)

    client = MlflowClient(server.uri)
    found = client.search_runs([runs.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in found] == [child]
    assert found[0].data.params["train.steps"] == "3"
    assert found[0].data.tags["forge.checkpoint"] == "/ckpt/x"
    assert found[0].info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(child, "loss")] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert [a.path for a in client.list_artifacts(parent)] == ["loss.png"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_logged_while_the_server_is_down_are_sent_when_it_returns(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with local_mlflow_server(tmp_path / "first", port=port) as server:
        run_id = MlflowRuns(server.uri, "e", tmp_path / "spill").start("r", {})
    logger = MlflowLogger(uri, run_id, tmp_path / "spill" / "r.jsonl", max_backoff_s=0.2)  # the server is gone now
    logger.log({"loss": 1.5}, step=1)
    logger.log({"loss": 1.25}, step=2)
    time.sleep(0.5)
    assert logger.queue.server_down and logger.pending == 2
    with local_mlflow_server(tmp_path / "first", port=port):  # back, same store
        logger.close()
        assert logger.pending == 0
        history = MlflowClient(uri).get_metric_history(run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 1.25)]


def test_a_param_longer_than_mlflows_limit_is_an_artifact_not_cut(server, tmp_path: Path) -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    assert MAX_PARAM_CHARS == MAX_PARAM_VAL_LENGTH  # the limit of the MLflow installed
    long_value = "".join(f"{i}," for i in range(2000))  # 8,890 characters
    runs = MlflowRuns(server.uri, "long-params", tmp_path / "spill")
    run_id = runs.start("r", {"data.inputs": long_value, "train.steps": 3})
    client = MlflowClient(server.uri)
    params = client.get_run(run_id).data.params
    assert params["train.steps"] == "3"
    assert params["data.inputs"] == f"<{len(long_value)} characters: artifact params/data.inputs.txt>"
    kept = Path(client.download_artifacts(run_id, "params/data.inputs.txt", str(tmp_path)))
    assert kept.read_text() == long_value


def test_only_rank_zero_logs(capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(build_logger(TrackingConfig(backend="console"), rank=1), NullLogger)
    logger = build_logger(TrackingConfig(backend="console"), rank=0, prefix="[s] ")
    assert isinstance(logger, ConsoleLogger)
    logger.log({"loss": 2.0}, step=7)
    assert capsys.readouterr().out == "[s] step 7: loss=2\n"
    with pytest.raises(ValueError, match="must be one of"):
        build_logger(TrackingConfig(backend="wandb"), rank=0)


def test_a_restarted_job_continues_its_unfinished_run_and_says_so(server, capsys: pytest.CaptureFixture[str]) -> None:
    runs = MlflowRuns(server.uri, "restarts")
    first = runs.start("pretrain", {"a": 1}, key="demo/pretrain/abc")
    assert runs.start("pretrain", {"a": 1}, key="demo/pretrain/abc") == first  # died, restarted
    assert f"continuing MLflow run 'pretrain' ({first}), which an earlier attempt left RUNNING" in capsys.readouterr().out
    runs.finish(first, ok=False)
    assert runs.start("pretrain", {"a": 1}, key="demo/pretrain/abc") == first  # failed, run again
    assert "left FAILED: its metrics so far stay, this is attempt 3" in capsys.readouterr().out
    run = MlflowClient(server.uri).get_run(first)
    assert (run.info.status, run.data.tags["forge.attempt"], run.data.tags["forge.continued_after"]) == \
        ("RUNNING", "3", "FAILED")
    runs.finish(first)
    assert runs.start("pretrain", {"a": 1}, key="demo/pretrain/abc") != first  # a new run after a finished one


def test_rank_zero_samples_system_metrics_into_its_run(server) -> None:
    """MLflow's system-metrics sampler runs beside the step metrics and stops with the logger."""
    runs = MlflowRuns(server.uri, "test-system-metrics")
    run_id = runs.start("pretrain", {})
    logger = build_logger(TrackingConfig(uri=server.uri, system_metrics_interval_s=0.5), rank=0, run_id=run_id)
    logger.log({"loss": 1.0}, step=1)
    time.sleep(2.0)
    logger.close()
    runs.finish(run_id)
    metrics = MlflowClient(server.uri).get_run(run_id).data.metrics
    assert metrics["loss"] == 1.0
    system = {k for k in metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, sorted(metrics)
    # no sampler on other ranks, and none when switched off
    assert isinstance(build_logger(TrackingConfig(uri=server.uri, system_metrics_interval_s=0.5), rank=1,
                                   run_id=run_id), NullLogger)


def test_experiments_we_create_open_on_training_runs_in_the_ui(server) -> None:
    """MLflow 3's UI picks its view from the experiment tag `mlflow.experimentKind` (the GenAI view
    when it guesses): ours are created as model-training experiments, an untagged one of ours is
    marked on first use, and a kind someone chose is kept."""
    client = MlflowClient(server.uri)
    MlflowRuns(server.uri, "kind-new").start("r", {})
    untagged = client.create_experiment("kind-untagged")  # as earlier versions created them
    MlflowRuns(server.uri, "kind-untagged").start("r", {})
    chosen = client.create_experiment("kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    MlflowRuns(server.uri, "kind-chosen").start("r", {})
    kinds = {name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)
             for name in ("kind-new", "kind-untagged", "kind-chosen")}
    assert kinds == {"kind-new": "custom_model_development", "kind-untagged": "custom_model_development",
                     "kind-chosen": "genai_development"}
    assert client.get_experiment(untagged).experiment_id != chosen


def test_an_experiment_another_job_creates_meanwhile_is_used(server) -> None:
    """Two jobs (or a job's two threads) starting at once: the one whose create is refused as a
    duplicate takes the experiment the other created (and marks its kind)."""
    from forge_platform.tracking.runs import ensure_training_experiment

    client = MlflowClient(server.uri)

    class SeesItLate:  # the real client, but another job creates the experiment right after our lookup
        def __getattr__(self, name: str):
            return getattr(client, name)

        def get_experiment_by_name(self, name: str):
            self.get_experiment_by_name = client.get_experiment_by_name
            client.create_experiment(name)
            return None

    experiment_id = ensure_training_experiment(SeesItLate(), "raced")
    found = client.get_experiment_by_name("raced")
    assert (experiment_id, found.tags[EXPERIMENT_KIND_TAG]) == (found.experiment_id, "custom_model_development")


def _tiny_campaign_run(server, root: Path, tokenizer: Path, vocab_size: int):
    """A parent run with two stage runs and a real checkpoint of the last stage, as a campaign leaves them."""
    import dataclasses

    import torch
    from forge_models import build_model, get_preset
    from forge_platform.campaign import CampaignOutcome
    from forge_platform.config_loader import config_hash
    from forge_platform.job_config import CampaignConfig
    from forge_platform.stage import StageOutcome
    from forge_platform.training.checkpoint_files import CheckpointMeta, save_rank_zero_files

    model_cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=vocab_size)
    torch.manual_seed(0)
    ckpt = root / "checkpoints" / "extend" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    meta = CheckpointMeta(step=2, tokens_seen=128, samples_consumed=2, stage="extend", config_hash="c",
                          model_hash=config_hash(model_cfg), tensor_parallel=1, data_parallel=1)
    save_rank_zero_files(ckpt, meta, model_cfg, build_model(model_cfg).state_dict(), export_bf16=False)
    cfg = CampaignConfig(name="registry-test", output_dir=str(root),
                         tracking=TrackingConfig(uri=server.uri, experiment="registry"))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=dataclasses.replace(
        cfg.data.tokenizer, model_path=str(tokenizer))))
    runs = MlflowRuns(server.uri, "registry", root / "spill")
    parent = runs.start(cfg.name, {})
    stages = [StageOutcome(name, runs.start(name, {}, parent_run_id=parent), path, 1.0, {})
              for name, path in (("pretrain", root / "checkpoints" / "pretrain"), ("extend", ckpt))]
    return cfg, CampaignOutcome(server.uri, "registry", parent, stages=stages), runs


def test_a_campaigns_final_weights_are_a_registered_model_version_with_lineage(server, packed_data,
                                                                               tmp_path: Path) -> None:
    from forge_platform.config_loader import config_hash
    from forge_platform.tracking.model_registry import register_campaign_model

    cfg, outcome, runs = _tiny_campaign_run(server, tmp_path, packed_data.tokenizer, packed_data.vocab_size)
    assert register_campaign_model(cfg, outcome.parent_run_id, outcome.stages, runs) == "registry-test"
    # a second campaign run: a second version of the same model
    register_campaign_model(cfg, outcome.parent_run_id, outcome.stages, runs)
    client = MlflowClient(server.uri)
    versions = sorted(client.search_model_versions("name = 'registry-test'"), key=lambda v: int(v.version))
    assert [v.version for v in versions] == ["1", "2"]
    version = versions[0]
    parent, (pretrain, extend) = outcome.parent_run_id, outcome.stages
    assert version.run_id == parent
    assert version.source == f"{client.get_run(parent).info.artifact_uri}/model"
    assert version.tags == {
        "forge.campaign": "registry-test", "forge.parent_run_id": parent, "forge.config_hash": config_hash(cfg),
        "forge.stages": "pretrain,extend", "forge.hf_export": "hf/", "forge.weights": "model/model.pt",
        "forge.stage.pretrain.run_id": pretrain.run_id, "forge.stage.extend.run_id": extend.run_id,
        "forge.stage.pretrain.checkpoint": str(pretrain.checkpoint_dir),
        "forge.stage.extend.checkpoint": str(extend.checkpoint_dir),
        "forge.stage.pretrain.data": f"runs:/{pretrain.run_id}/data",
        "forge.stage.extend.data": f"runs:/{extend.run_id}/data",
    }
    assert parent in version.description and extend.run_id in version.description
    assert client.get_run(parent).data.tags["forge.registered_model"] == "registry-test/2"
    # the version's files are the final checkpoint's, the tokenizer, and a transformers folder
    files = {a.path for a in client.list_artifacts(parent, "model")}
    assert files == {"model/model.pt", "model/model_config.json", "model/meta.json", "model/tokenizer.model",
                     "model/hf"}
    local = Path(client.download_artifacts(parent, "model", str(tmp_path / "downloaded")))
    assert (local / "model.pt").read_bytes() == (extend.checkpoint_dir / "model.pt").read_bytes()
    assert (local / "tokenizer.model").read_bytes() == packed_data.tokenizer.read_bytes()
    assert (local / "hf" / "config.json").is_file()


def test_a_model_registered_while_the_server_is_down_is_registered_when_it_answers(packed_data, tmp_path: Path,
                                                                                  capsys) -> None:
    """The end of a campaign during an outage: the model folder is kept in the spill folder, the
    registration queued after it, and both are made (run ids resolved) once the server is back."""
    from forge_platform.tracking.model_registry import register_campaign_model

    port = free_port()
    with local_mlflow_server(tmp_path / "store", port=port) as first:
        cfg, outcome, runs = _tiny_campaign_run(first, tmp_path / "job", packed_data.tokenizer,
                                                packed_data.vocab_size)
    register_campaign_model(cfg, outcome.parent_run_id, outcome.stages, runs)  # the server is gone
    assert "unreachable" in capsys.readouterr().out
    assert [c["op"] for c in runs.journal.calls] == ["log_artifact", "register_model"]
    with local_mlflow_server(tmp_path / "store", port=port) as again:
        runs.close()
        client = MlflowClient(again.uri)
        (version,) = client.search_model_versions("name = 'registry-test'")
        assert version.run_id == outcome.parent_run_id
        assert {a.path for a in client.list_artifacts(outcome.parent_run_id, "model")} >= {"model/model.pt"}
    assert not runs.journal


def test_weights_too_large_to_copy_are_registered_where_their_checkpoint_is(server, packed_data, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """A checkpoint on an object store whose weights exceed MAX_COPIED_WEIGHTS_BYTES (0 here): the
    version's source is the checkpoint's URI; the run's model/ holds the config, metadata and tokenizer."""
    import boto3
    from forge_platform.tracking import model_registry
    from production_stack import BUCKET, s3_server

    cfg, outcome, runs = _tiny_campaign_run(server, tmp_path, packed_data.tokenizer, packed_data.vocab_size)
    local = outcome.stages[-1].checkpoint_dir
    with s3_server() as s3_env:
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        for path in local.iterdir():
            s3.upload_file(str(path), BUCKET, f"ckpt/{path.name}")
        outcome.stages[-1].checkpoint_dir = f"s3://{BUCKET}/ckpt"
        monkeypatch.setattr(model_registry, "MAX_COPIED_WEIGHTS_BYTES", 0)
        assert model_registry.register_campaign_model(cfg, outcome.parent_run_id, outcome.stages, runs) == "registry-test"
    client = MlflowClient(server.uri)
    version = max(client.search_model_versions("name = 'registry-test'"), key=lambda v: int(v.version))
    assert version.source == f"s3://{BUCKET}/ckpt"
    assert version.tags["forge.weights"] == f"s3://{BUCKET}/ckpt/model.pt"
    assert version.tags["forge.hf_export"].startswith("none: the weights stay in s3://")
    files = {a.path for a in client.list_artifacts(outcome.parent_run_id, "model")}
    assert files == {"model/model_config.json", "model/meta.json", "model/tokenizer.model"}


def test_a_registration_that_fails_is_a_warning_not_the_campaigns_failure(server, packed_data, tmp_path: Path,
                                                                          capsys) -> None:
    from forge_platform.tracking.model_registry import register_campaign_model

    cfg, outcome, runs = _tiny_campaign_run(server, tmp_path, packed_data.tokenizer, packed_data.vocab_size)
    (outcome.stages[-1].checkpoint_dir / "model_config.json").unlink()  # a checkpoint cut short
    assert register_campaign_model(cfg, outcome.parent_run_id, outcome.stages, runs) == ""
    said = capsys.readouterr().out
    assert "warning: the final weights of campaign 'registry-test' were not registered in MLflow" in said
    assert f"they are in {outcome.stages[-1].checkpoint_dir}" in said
