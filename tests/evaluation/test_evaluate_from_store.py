"""`jobs.evaluate` on a campaign kept on an object store (s3://, moto's server with authentication on):
the checkpoint, its tokenizer (found above it, or named) and the held-out data are read from the store,
by `--checkpoint` or by a stage run's tags (`--run_id`), and give the metrics their local copy gives.
A store that cannot be used, or an object that is not there, is one line naming the URI and exit
code 2, before any model is loaded or evaluated."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from forge_data import storage
from forge_platform import evaluation
from forge_platform.evaluation import evaluate_main
from forge_platform.training.checkpoint_files import CheckpointMeta, write_json

from tests.evaluation.helpers import campaign_checkpoint
from tests.moto_s3 import s3_environment

BUCKET = "forge"
RUN = f"s3://{BUCKET}/campaigns/demo"
CHECKPOINT = f"{RUN}/checkpoints/stage/step_00000007"
VAL_MANIFEST = f"{RUN}/data/val/manifest.json"
SUITES = ("--suites", "validation,phonebook", "--eval.val_batches", "2", "--eval.phonebook_entries", "[4]",
          "--eval.phonebook_lengths", "[400]", "--eval.phonebook_queries", "2", "--eval.answer_mode", "teacher_forcing")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, model, tokenizer_and_manifest) -> Path:
    """A campaign's folder (tokenizer, a checkpoint at step 7, held-out data), kept locally and on the
    store at RUN; one checkpoint folder on the store has no weights. Yields the local copy."""
    tokenizer, manifest = tokenizer_and_manifest
    local = tmp_path_factory.mktemp("campaign")
    checkpoint = campaign_checkpoint(local, model, tokenizer, "step_00000007")
    write_json(checkpoint / "meta.json", dataclasses.asdict(CheckpointMeta(
        step=7, tokens_seen=0, samples_consumed=0, stage="stage", config_hash="", model_hash="",
        tensor_parallel=1, data_parallel=1)))
    no_weights = local / "checkpoints" / "stage" / "no_weights"
    no_weights.mkdir()
    shutil.copy(checkpoint / "model_config.json", no_weights)
    shutil.copytree(Path(manifest).parent, local / "data" / "val")
    with s3_environment(BUCKET):
        fs, path = storage.resolve_filesystem(RUN)
        pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=False)
        yield local


def run(capsys, *args: str) -> tuple[int, dict[str, float], list[str]]:
    code = evaluate_main("doc", list(args))
    out, err = capsys.readouterr()
    metrics = json.loads(out[out.index("{"):]) if code == 0 else {}
    return code, metrics, [line for line in err.splitlines() if line.startswith("error:")]


def test_a_checkpoint_on_the_store_gives_the_metrics_of_its_local_copy(campaign, capsys) -> None:
    code, remote, errors = run(capsys, "--checkpoint", CHECKPOINT, "--val_manifest", VAL_MANIFEST, *SUITES)
    assert code == 0 and not errors, errors  # the tokenizer was found above the checkpoint, on the store
    code, local, errors = run(capsys, "--checkpoint", str(campaign / "checkpoints" / "stage" / "step_00000007"),
                              "--val_manifest", str(campaign / "data" / "val" / "manifest.json"), *SUITES)
    assert code == 0 and not errors, errors
    assert {"val_loss", "phonebook_4_accuracy"} <= set(remote) and remote == local


def test_the_lm_eval_adapters_loader_reads_the_weights_and_tokenizer_on_the_store(campaign, model) -> None:
    from forge_eval.checkpoint import find_tokenizer, load_model

    loaded = load_model(CHECKPOINT)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert find_tokenizer(CHECKPOINT) == f"{RUN}/tokenizer/tokenizer.model"  # two folders up, on the store


def test_a_stage_run_whose_tags_point_into_the_store(campaign, tmp_path, capsys) -> None:
    from forge_platform.run_inputs import CHECKPOINT_TAG, VAL_MANIFEST_TAG
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("evaluate-from-store", artifact_location=str(tmp_path / "artifacts"))
    stage_run = client.create_run(experiment, tags={CHECKPOINT_TAG: CHECKPOINT, VAL_MANIFEST_TAG: VAL_MANIFEST})
    client.set_terminated(stage_run.info.run_id)
    code, metrics, errors = run(capsys, "--run_id", stage_run.info.run_id, "--tracking_uri", uri,
                                "--tokenizer", f"{RUN}/tokenizer", "--suites", "validation", "--eval.val_batches", "1")
    assert code == 0 and not errors, errors
    history = client.get_metric_history(stage_run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(7, pytest.approx(metrics["val_loss"]))]  # meta.json's step


@pytest.mark.parametrize(("args", "message"), [
    (("--checkpoint", f"{RUN}/checkpoints/stage/step_00000099"),
     f"checkpoint = '{RUN}/checkpoints/stage/step_00000099': must be a Hybrid Forge checkpoint folder "
     "(no model_config.json there"),
    (("--checkpoint", "s3://no-such-bucket/checkpoints/stage/step_00000007"),
     "s3://no-such-bucket/checkpoints/stage/step_00000007: bucket 'no-such-bucket' does not exist"),
    (("--checkpoint", f"{RUN}/checkpoints/stage/no_weights"),
     f"checkpoint = '{RUN}/checkpoints/stage/no_weights': has no model.pt"),
    (("--checkpoint", CHECKPOINT, "--val_manifest", f"{RUN}/data/test/manifest.json"),
     f"{RUN}/data/test/manifest.json"),
    (("--checkpoint", CHECKPOINT, "--val_manifest", "s3://no-such-bucket/val/manifest.json"),
     "s3://no-such-bucket/val/manifest.json: bucket 'no-such-bucket' does not exist"),
    (("--checkpoint", CHECKPOINT, "--tokenizer", f"{RUN}/tokenizers/tokenizer.model"),
     f"tokenizer = '{RUN}/tokenizers/tokenizer.model': must be a SentencePiece model file"),
])
def test_bad_input_on_the_store_is_one_line_naming_it_before_anything_loads(campaign, capsys, monkeypatch,
                                                                             args, message) -> None:
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", _must_not_evaluate)
    code, _, errors = run(capsys, "--suites", "validation,phonebook", "--val_manifest", VAL_MANIFEST, *args)  # args win
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


def test_credentials_the_store_refuses_are_one_line(campaign, capsys, monkeypatch) -> None:
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", _must_not_evaluate)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    code, _, errors = run(capsys, "--checkpoint", CHECKPOINT, "--suites", "phonebook")
    assert code == 2 and len(errors) == 1, errors
    assert f"{CHECKPOINT}/model_config.json: " in errors[0] and "refused the credentials for bucket 'forge'" in errors[0]


def _must_not_evaluate(*args, **kwargs):
    raise AssertionError("bad input must be refused before the model is evaluated")
