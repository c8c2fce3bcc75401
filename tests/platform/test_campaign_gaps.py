"""Gaps a campaign had (issues #14 and #13), each closed by the campaign's own functions, without Ray:

- loss by position past the trained length: a stage whose `ppl` suite measures up to 4x its seq_len
  gets its held-out data packed a second time at that length, and the evaluation reads it there
  (the `validation` suite still reads rows of the stage's own length);
- what decides that a stage already finished (`campaign_progress.json`): not the parallel layout,
  which checkpoints reshard across, but everything that changes the stage's result.
"""

from __future__ import annotations

import dataclasses
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from forge_data import DataPipelineConfig, TokenizerConfig
from forge_data.manifest import MANIFEST_FILE
from forge_data.tokenizer import train_from_texts
from forge_eval import EvalConfig
from forge_models import build_model, get_preset

from forge_platform.campaign import CampaignProgress, pack_stage, ppl_seq_len, stage_progress_keys, tokenize_split
from forge_platform.config_sections import ParallelConfig, StageConfig, TrainConfig
from forge_platform.evaluation import evaluate_checkpoint
from forge_platform.job_config import CampaignConfig, load_job_config
from forge_platform.stage import PPL_SPLIT, StageOutcome

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPEC = Path(__file__).resolve().parents[2] / "jobs" / "specs" / "demo.toml"
SEQ_LEN = 64


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory):
    """Two splits of standard-library sources (held out: two modules of several hundred tokens each)
    tokenized once, in process."""
    root = tmp_path_factory.mktemp("campaign_gaps")
    sources = sorted((STDLIB / "json").glob("*.py"))
    for split, files in (("train", sources[:-2]), ("val", sources[-2:])):
        (root / split).mkdir()
        for path in files:
            (root / split / path.name).write_bytes(path.read_bytes())
    tokenizer = train_from_texts(TokenizerConfig(model_type="bpe", vocab_size=400, show_progress=False),
                                 [p.read_text("utf-8") for p in sources])
    tokenizer_path = tokenizer.save(str(root / "tokenizer"))
    data = DataPipelineConfig(shard_tokens=1 << 14, tokenizer=TokenizerConfig(model_type="bpe", vocab_size=400))
    made = {split: tokenize_split(data, [str(root / split)], tokenizer_path, root / "tokens" / split, use_ray=False)
            for split in ("train", "val")}
    return root, data, made, tokenizer.vocab_size


def test_loss_by_position_reaches_past_the_stage_s_seq_len(stores, tmp_path: Path) -> None:
    root, data, made, vocab_size = stores
    eval_cfg = EvalConfig(suites=["validation", "ppl"], val_batches=2, ppl_rows=3, length_multiples=[2, 4])
    stage = StageConfig(name="short", seq_len=SEQ_LEN, eval=eval_cfg)
    assert ppl_seq_len(stage) == 4 * SEQ_LEN
    packed = pack_stage(data, stage, 0, made, root / "short")
    lengths = (packed["train"].seq_len, packed["val"].seq_len, packed[PPL_SPLIT].seq_len)
    assert lengths == (SEQ_LEN, SEQ_LEN, 4 * SEQ_LEN)
    # the same held-out documents, whole, in longer rows
    assert packed[PPL_SPLIT].counts["docs_packed"] == packed["val"].counts["docs_packed"]
    assert packed[PPL_SPLIT].counts["tokens_written"] == packed["val"].counts["tokens_written"]

    # The evaluation a stage runs (stage.train_and_evaluate -> evaluate_checkpoint), on a checkpoint folder
    # of an untrained tiny hybrid: its losses are real, near log(vocab) at every position.
    model_cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=vocab_size, kernels="reference")
    torch.manual_seed(0)
    torch.save(build_model(model_cfg).state_dict(), tmp_path / "model.pt")
    resolved = stage.eval.for_length(stage.seq_len)
    manifest = {split: str(root / "short" / split / MANIFEST_FILE) for split in ("val", PPL_SPLIT)}
    metrics = evaluate_checkpoint(tmp_path, model_cfg, resolved, manifest["val"], None,
                                  ppl_manifest=manifest[PPL_SPLIT])
    bucket = resolved.ppl_bucket
    assert bucket == 4 * SEQ_LEN // 8
    for start in range(SEQ_LEN, 4 * SEQ_LEN, bucket):  # every bucket past the trained length, up to 4x it
        name = f"pos_{start}_{start + bucket}"
        assert metrics[f"{name}_tokens"] > 0, name
        assert 0.5 * math.log(vocab_size) < metrics[f"{name}_loss"] < 2 * math.log(vocab_size), name
    assert metrics["pos_max_position"] == 4 * SEQ_LEN
    # validation still reads rows of the stage's own length: at most val_batches x seq_len labels
    assert 0 < metrics["val_tokens"] <= eval_cfg.val_batches * SEQ_LEN

    # Without the long rows (what a stage read before), positions stop at the stage's seq_len.
    short = evaluate_checkpoint(tmp_path, model_cfg, dataclasses.replace(resolved, suites=["ppl"]), manifest["val"],
                                None)
    assert short["pos_max_position"] <= SEQ_LEN and f"pos_{SEQ_LEN}_{SEQ_LEN + bucket}_loss" not in short


def test_held_out_data_is_packed_once_when_the_stage_s_rows_suffice(stores) -> None:
    root, data, made, _ = stores
    within = StageConfig(name="within", seq_len=SEQ_LEN,
                         eval=EvalConfig(suites=["ppl"], length_multiples=[0.5, 1], ppl_bucket=8))
    no_ppl = StageConfig(name="no-ppl", seq_len=SEQ_LEN, eval=EvalConfig(suites=["validation"], length_multiples=[4]))
    for stage in (within, no_ppl):
        assert ppl_seq_len(stage) == 0
        assert set(pack_stage(data, stage, 0, made, root / stage.name)) == {"train", "val"}


def test_the_demo_s_first_stage_measures_loss_by_position_up_to_1024_tokens() -> None:
    cfg = load_job_config(CampaignConfig, SPEC, [])
    pretrain = cfg.stages[0]
    assert pretrain.seq_len == 256 and ppl_seq_len(pretrain) == 1024
    resolved = pretrain.eval.for_length(pretrain.seq_len)
    assert resolved.ppl_max_position == 1024 and 1024 % resolved.ppl_bucket == 0


def _campaign(num_workers: int, tensor_parallel: int, micro_batch_size: int, **model: object) -> CampaignConfig:
    """A two-stage campaign on `num_workers` workers at `tensor_parallel`, `micro_batch_size` rows per rank."""
    stages = [StageConfig(name=name, seq_len=seq_len, init_from_previous=bool(index),
                          train=TrainConfig(steps=4, micro_batch_size=micro_batch_size, recompute="none"))
              for index, (name, seq_len) in enumerate((("pretrain", 64), ("extend", 128)))]
    base = get_preset("hybrid-debug")
    return CampaignConfig(model=dataclasses.replace(base, **model) if model else base, stages=stages,
                          parallel=ParallelConfig(num_workers=num_workers, tensor_parallel=tensor_parallel))


def _keys(cfg: CampaignConfig) -> list[str]:
    return stage_progress_keys(cfg, {"train": ["corpus/train"], "val": ["corpus/val"]}, cfg.model, "tokenizer-sha")


def test_a_finished_stage_is_skipped_when_only_the_parallel_layout_changes(tmp_path: Path) -> None:
    first = _campaign(num_workers=2, tensor_parallel=1, micro_batch_size=4)  # dp 2: 8 rows a step
    keys = _keys(first)
    checkpoint = tmp_path / "checkpoints" / "pretrain"
    checkpoint.mkdir(parents=True)
    progress = CampaignProgress(tmp_path / "campaign_progress.json")
    progress.record(StageOutcome("pretrain", "run-1", checkpoint, 2.5, {"val_loss": 2.6}), keys[0])

    # Another layout, the same global batch: TP 2 x DP 2 on 4 workers; TP 2 x DP 1 with 8 rows per rank
    # (whose memory plan may also resolve recompute otherwise).
    for rerun in (_campaign(num_workers=4, tensor_parallel=2, micro_batch_size=4),
                  _campaign(num_workers=2, tensor_parallel=2, micro_batch_size=8)):
        rerun.stages[0].train.recompute = "full"
        assert _keys(rerun) == keys
        done = CampaignProgress(tmp_path / "campaign_progress.json").finished("pretrain", _keys(rerun)[0])
        assert done is not None and done.checkpoint_dir == checkpoint and done.eval_metrics == {"val_loss": 2.6}


@pytest.mark.parametrize("change", ["model", "global batch", "earlier stage", "steps"])
def test_a_finished_stage_is_run_again_when_its_result_would_change(tmp_path: Path, change: str) -> None:
    first = _campaign(num_workers=2, tensor_parallel=1, micro_batch_size=4)
    keys = _keys(first)
    checkpoint = tmp_path / "checkpoints" / "extend"
    checkpoint.mkdir(parents=True)
    CampaignProgress(tmp_path / "p.json").record(StageOutcome("extend", "run-1", checkpoint, 2.5, {}), keys[1])
    if change == "model":
        rerun = _campaign(num_workers=2, tensor_parallel=1, micro_batch_size=4, d_model=128)
    elif change == "global batch":  # dp 4 with the same rows per rank: 16 rows a step
        rerun = _campaign(num_workers=4, tensor_parallel=1, micro_batch_size=4)
    else:
        rerun = _campaign(num_workers=2, tensor_parallel=1, micro_batch_size=4)
        rerun.stages[0 if change == "earlier stage" else 1].train.steps = 8
    assert _keys(rerun)[1] != keys[1]
    assert CampaignProgress(tmp_path / "p.json").finished("extend", _keys(rerun)[1]) is None
    assert CampaignProgress(tmp_path / "p.json").finished("extend", keys[1]) is not None
