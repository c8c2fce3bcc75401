"""`python -m jobs.evaluate`: every suite on a checkpoint folder, bad input as one line and exit 2,
and evaluation as a Ray task that takes a GPU when the driver has none but the cluster has one."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from forge_data import TokenizerConfig
from forge_data.tokenizer import train_from_texts
from forge_eval import EvalConfig
from forge_platform.evaluation import evaluate_checkpoint, evaluate_main

from tests.evaluation.helpers import campaign_checkpoint, pack_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def campaign_like(tmp_path_factory, model, tokenizer_and_manifest) -> tuple[Path, str]:
    """A checkpoint folder laid out as a campaign leaves it: <out>/tokenizer, <out>/checkpoints/<stage>/checkpoint_*."""
    tokenizer, manifest = tokenizer_and_manifest
    checkpoint = campaign_checkpoint(tmp_path_factory.mktemp("campaign"), model, tokenizer, "checkpoint_000000")
    return checkpoint, manifest


def run(capsys, *args: str) -> tuple[int, str, list[str]]:
    code = evaluate_main("doc", list(args))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("error:")]


def test_every_suite_on_a_checkpoint(campaign_like, capsys) -> None:
    checkpoint, manifest = campaign_like
    code, out, errors = run(capsys, "--checkpoint", str(checkpoint), "--val_manifest", manifest,
                            "--suites", "validation,phonebook,ruler,ppl,lm-eval:forge_phonebook",
                            "--eval.phonebook_entries", "[4]", "--eval.phonebook_lengths", "[400]",
                            "--eval.phonebook_queries", "2", "--eval.ruler_lengths", "[640]",
                            "--eval.ruler_tasks", "niah_single,cwe", "--eval.ruler_depths", "[0.5]",
                            "--eval.ruler_samples", "1", "--eval.ppl_bucket", "32", "--eval.ppl_max_position", "64",
                            "--eval.ppl_rows", "2", "--eval.lm_eval_limit", "1", "--eval.answer_mode", "teacher_forcing")
    assert code == 0 and not errors, errors
    metrics = json.loads(out[out.index("{"):])
    for key in ("val_loss", "phonebook_4_accuracy", "phonebook_standard_400_digit_accuracy",
                "ruler_niah_single_filler_640_depth50_score", "ruler_cwe_640_score", "ruler_640_score",
                "pos_0_32_loss", "pos_32_64_ppl", "lmeval_forge_phonebook_exact_match"):
        assert key in metrics, key


@pytest.mark.parametrize("args,message", [
    (("--suites", "phonebook,niah"), "eval.suites = ['phonebook', 'niah']: must name known suites"),
    (("--suites", "lm-eval:no_such_task"), "unknown lm-eval task(s) no_such_task; ours are forge_niah, forge_phonebook"),
    (("--suites", "ppl", "--eval.ppl_bucket", "1000", "--eval.ppl_max_position", "1000000"),
     "eval lengths up to 1000000 tokens: need about"),
    (("--suites", "ruler", "--eval.ruler_lengths", "[128]"),
     "RULER task 'niah_single' (filler haystack): a length of 128 tokens is too short"),
    (("--suites", "ppl"), "val_manifest: must be given for suites ppl"),
])
def test_bad_input_is_one_line_and_exit_2(campaign_like, capsys, args, message) -> None:
    checkpoint, manifest = campaign_like
    extra = ("--val_manifest", manifest) if "ppl" not in args or "--eval.ppl_bucket" in args else ()
    code, _, errors = run(capsys, "--checkpoint", str(checkpoint), *extra, *args)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


def test_a_checkpoint_without_its_tokenizer_or_one_that_cannot_write_the_task(campaign_like, tmp_path, capsys) -> None:
    checkpoint, _ = campaign_like
    alone = tmp_path / "alone"
    shutil.copytree(checkpoint, alone)
    code, _, errors = run(capsys, "--checkpoint", str(alone), "--suites", "phonebook")
    assert code == 2 and f"checkpoint = '{alone}' has no tokenizer beside it" in errors[0] and len(errors) == 1
    # A tokenizer that never saw digits and has no byte fallback writes them as <unk>.
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).joinpath("json").glob("*.py"))
    text = re.sub(r"[0-9]", "", "".join(p.read_text() for p in sources))
    words = train_from_texts(TokenizerConfig(vocab_size=300, byte_fallback=False, show_progress=False), [text])
    words.save(str(tmp_path / "words"))
    code, _, errors = run(capsys, "--checkpoint", str(alone), "--suites", "phonebook",
                          "--tokenizer", str(tmp_path / "words" / "tokenizer.model"))
    assert code == 2 and len(errors) == 1
    assert "task 'phonebook': the tokenizer cannot encode the characters" in errors[0] and "0123456789" in errors[0]
    code, _, errors = run(capsys, "--checkpoint", str(tmp_path), "--suites", "phonebook")
    assert code == 2 and "model_config.json" in errors[0]


def test_the_job_module_is_the_same_main(campaign_like) -> None:
    out = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--checkpoint", str(campaign_like[0]),
                          "--suites", "nope"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: invalid job spec: eval.suites")


def test_evaluation_is_a_ray_task_taking_a_gpu_when_the_cluster_has_one(campaign_like, tokenizer_and_manifest,
                                                                         capsys) -> None:
    ray = pytest.importorskip("ray")
    checkpoint, manifest = campaign_like
    tokenizer, _ = tokenizer_and_manifest
    # A logical GPU on a CPU machine: Ray schedules the task on it as it would on a real one.
    if ray.is_initialized():  # an earlier test's Ray (in the full suite): this one needs its GPU
        ray.shutdown()
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ":".join(str(REPO / a) for a in
                                                              ("platform", "models", "data_pipeline", "evaluation"))}})
    try:
        model_cfg = json.loads((checkpoint / "model_config.json").read_text())
        from forge_models import ModelConfig

        cfg = EvalConfig(suites=["validation", "phonebook"], val_batches=1, phonebook_entries=[2], phonebook_queries=1)
        metrics = evaluate_checkpoint(checkpoint, ModelConfig(**model_cfg), cfg, manifest, tokenizer)
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "evaluated in a Ray task: pid" in out and "GPU ids [0]" in out, out[-2000:]
    assert set(metrics) >= {"val_loss", "phonebook_2_accuracy"}


def test_the_length_check_names_the_longest_that_fits() -> None:
    from forge_models import get_preset
    from forge_platform.config_loader import ConfigError
    from forge_platform.evaluation import check_eval_lengths, eval_memory_bytes

    model_cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=512)
    cfg = EvalConfig(suites=["phonebook"], phonebook_lengths=[262144])
    budget = 8 << 30
    with pytest.raises(ConfigError, match=r"eval lengths up to 262144 tokens: need about 1024.\d GiB on this machine's "
                                          r"CPU .* which has 8.0 GiB; use lengths <= (\d+)") as refused:
        check_eval_lengths(model_cfg, 10**6, cfg, budget, on_gpu=False)
    fits = int(re.search(r"lengths <= (\d+)", str(refused.value)).group(1))
    assert eval_memory_bytes(model_cfg, 10**6, fits, False) <= budget < eval_memory_bytes(model_cfg, 10**6, fits + 1, False)
    check_eval_lengths(model_cfg, 10**6, cfg, budget, on_gpu=True)  # the GPU's kernels hold no (L, L) scores
    check_eval_lengths(model_cfg, 10**6, dataclasses.replace(cfg, phonebook_lengths=[fits]), budget, on_gpu=False)


def test_the_lm_eval_adapter_loads_a_checkpoint_folder(campaign_like, model, tmp_path) -> None:
    pytest.importorskip("lm_eval")
    from forge_eval.checkpoint import CheckpointInputError
    from forge_eval.lm_eval_adapter import ForgeLM
    from lm_eval.api.instance import Instance

    checkpoint, _ = campaign_like
    request = Instance(request_type="loglikelihood", doc={}, arguments=("def loads(s):", " return"), idx=0)
    loaded = ForgeLM(checkpoint=str(checkpoint))  # the tokenizer is found in the campaign folder above it
    [(logprob, greedy)] = loaded.loglikelihood([request])
    [(expected, expected_greedy)] = ForgeLM(model=model, tokenizer=loaded.tokenizer).loglikelihood([request])
    assert logprob == pytest.approx(expected, abs=1e-5) and greedy == expected_greedy
    alone = tmp_path / "alone"
    shutil.copytree(checkpoint, alone)
    with pytest.raises(CheckpointInputError, match="has no tokenizer beside it"):
        ForgeLM(checkpoint=str(alone))


def test_evaluate_a_stage_run_by_its_mlflow_run_id(campaign_like, tmp_path, capsys, monkeypatch) -> None:
    """`--run_id` finds the checkpoint and held-out data in the stage run's tags and adds the metrics
    to that run at the checkpoint's step; a run without a checkpoint tag, or an unknown run, is one line."""
    from mlflow.tracking import MlflowClient

    from forge_platform.run_inputs import CHECKPOINT_TAG, VAL_MANIFEST_TAG
    from forge_platform.training.checkpoint_files import CheckpointMeta, write_json

    source, manifest = campaign_like
    checkpoint = tmp_path / "step_00000007"
    shutil.copytree(source, checkpoint)
    write_json(checkpoint / "meta.json", dataclasses.asdict(CheckpointMeta(
        step=7, tokens_seen=0, samples_consumed=0, stage="stage", config_hash="", model_hash="",
        tensor_parallel=1, data_parallel=1)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("evaluate-by-run", artifact_location=str(tmp_path / "artifacts"))
    stage_run = client.create_run(experiment, tags={CHECKPOINT_TAG: str(checkpoint), VAL_MANIFEST_TAG: manifest})
    client.set_terminated(stage_run.info.run_id)
    tokenizer = ["--tokenizer", str(source.parents[2] / "tokenizer")]

    code, out, errors = run(capsys, "--run_id", stage_run.info.run_id, "--tracking_uri", uri, *tokenizer,
                            "--suites", "validation", "--eval.val_batches", "1")
    assert code == 0 and not errors, errors
    val_loss = json.loads(out[out.index("{"):])["val_loss"]
    history = client.get_metric_history(stage_run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(7, pytest.approx(val_loss))]
    assert client.get_run(stage_run.info.run_id).info.status == "FINISHED"

    # A stage whose `ppl` suite measured past its seq_len (64) read longer rows (PPL_SPLIT): the run's tags,
    # as the stage writes them, bring them back, so evaluating the run measures as far again.
    from forge_platform.stage import PPL_SPLIT, stage_run_tags

    data_root = Path(manifest).parents[1]
    long_rows = tmp_path / PPL_SPLIT
    pack_folder(data_root / "corpus", str(data_root / "tokenizer" / "tokenizer.model"), long_rows, seq_len=256,
                rows_per_shard=16)
    model_cfg = json.loads((checkpoint / "model_config.json").read_text())
    from forge_models import ModelConfig

    tags = stage_run_tags(ModelConfig(**model_cfg), {"val": manifest, PPL_SPLIT: long_rows / "manifest.json"})
    long_run = client.create_run(experiment, tags={CHECKPOINT_TAG: str(checkpoint), **tags})
    client.set_terminated(long_run.info.run_id)
    ppl = ("--suites", "validation,ppl", "--eval.val_batches", "1", "--eval.ppl_rows", "1", "--eval.ppl_bucket", "64",
           "--eval.ppl_max_position", "256")
    code, out, errors = run(capsys, "--run_id", long_run.info.run_id, "--tracking_uri", uri, *tokenizer, *ppl)
    assert code == 0 and not errors, errors
    metrics = json.loads(out[out.index("{"):])
    assert metrics["pos_max_position"] == 256 and metrics["pos_192_256_tokens"] > 0, metrics
    assert metrics["val_loss"] == pytest.approx(val_loss)  # validation still reads the stage's own rows
    assert client.get_metric_history(long_run.info.run_id, "pos_192_256_loss")[0].step == 7
    # A --val_manifest naming the data leaves the run's longer rows out: ppl stops at that data's 64 tokens.
    code, out, errors = run(capsys, "--run_id", long_run.info.run_id, "--tracking_uri", uri, *tokenizer, *ppl,
                            "--val_manifest", manifest)
    assert code == 0 and not errors, errors
    assert json.loads(out[out.index("{"):])["pos_max_position"] <= 64

    parent = client.create_run(experiment)
    code, _, errors = run(capsys, "--run_id", parent.info.run_id, "--tracking_uri", uri, "--suites", "validation")
    assert code == 2 and errors and re.search(rf"run_id = '{parent.info.run_id}' .* has no forge.checkpoint tag", errors[0])
    code, _, errors = run(capsys, "--run_id", "0" * 32, "--tracking_uri", uri, "--suites", "validation")
    assert code == 2 and errors and f"run_id = '{'0' * 32}': not found at tracking.uri" in errors[0]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, errors = run(capsys, "--run_id", stage_run.info.run_id, "--suites", "validation")
    assert code == 2 and errors and "tracking_uri: must be given with run_id" in errors[0]


def test_a_campaign_stage_whose_evaluation_cannot_be_built_is_refused_before_training(tokenizer_and_manifest) -> None:
    """eval.length_multiples resolve against each stage's seq_len; half of 256 tokens cannot hold a
    phonebook with its examples: refused naming the stage, before anything trains (it failed after
    the stage had trained)."""
    from forge_platform.config_loader import ConfigError
    from forge_platform.config_sections import StageConfig
    from forge_platform.evaluation import check_stage_evaluations

    tokenizer, _ = tokenizer_and_manifest
    fine = StageConfig(name="long", seq_len=2048, eval=EvalConfig(suites=["phonebook"], length_multiples=[0.5, 1]))
    check_stage_evaluations(tokenizer, [fine])
    short = StageConfig(name="short", seq_len=256, eval=EvalConfig(suites=["phonebook"], length_multiples=[0.5, 1]))
    with pytest.raises(ConfigError, match=r"stage 'short', eval: phonebook \(standard\): a length of 128 tokens is too short"):
        check_stage_evaluations(tokenizer, [fine, short])
    with pytest.raises(ConfigError, match=r"stage 'long', eval: .*no_such_task"):
        check_stage_evaluations(tokenizer, [dataclasses.replace(fine, eval=EvalConfig(suites=["lm-eval:no_such_task"]))])
