"""`python -m jobs.export`: a checkpoint folder in, a folder transformers loads out; a model no
transformers class reproduces, or a folder that is not a checkpoint, is one line and exit code 2."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from forge_models import build_model, get_preset
from forge_platform.config_loader import config_hash
from forge_platform.training.checkpoint_files import CheckpointMeta, save_rank_zero_files, write_json

from tests.platform.test_job_specs import run_job

transformers = pytest.importorskip("transformers")


def _meta(cfg: object) -> CheckpointMeta:
    return CheckpointMeta(step=1, tokens_seen=64, samples_consumed=1, stage="pretrain", config_hash="c",
                          model_hash=config_hash(cfg), tensor_parallel=1, data_parallel=1)


def test_export_job_writes_a_folder_transformers_loads(tmp_path: Path) -> None:
    cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=97)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    (tmp_path / "ckpt").mkdir()
    save_rank_zero_files(tmp_path / "ckpt", _meta(cfg), cfg, model.state_dict(), export_bf16=False)
    out = run_job("jobs.export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exported preset hybrid-debug" in out.stdout and "NemotronHForCausalLM" in out.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 97, (1, 13))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_a_missing_tokenizer_file_is_one_line(tmp_path: Path) -> None:
    cfg = dataclasses.replace(get_preset("mamba-debug"), vocab_size=97)
    (tmp_path / "ckpt").mkdir()
    save_rank_zero_files(tmp_path / "ckpt", _meta(cfg), cfg, build_model(cfg).state_dict(), export_bf16=False)
    out = run_job("jobs.export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"),
                  "--tokenizer", str(tmp_path / "nope.model"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: invalid job spec: tokenizer = '{tmp_path / 'nope.model'}': no such file"]


def test_a_preset_no_class_reproduces_is_one_line_naming_preset_and_value(tmp_path: Path) -> None:
    # The refusal comes before the weights are read: the 2.2B model's config alone is enough.
    cfg = get_preset("hybrid-2b-anchor")
    (tmp_path / "ckpt").mkdir()
    write_json(tmp_path / "ckpt" / "meta.json", dataclasses.asdict(_meta(cfg)))
    write_json(tmp_path / "ckpt" / "model_config.json", dataclasses.asdict(cfg))
    out = run_job("jobs.export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: preset hybrid-2b-anchor cannot be exported to transformers: model.mlp.activation = 'swiglu'"), lines
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("make", ["missing", "foreign"])
def test_a_folder_that_is_no_checkpoint_is_one_line(make: str, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    if make == "foreign":
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"not ours")
    out = run_job("jobs.export", "--checkpoint", str(folder), "--out", str(tmp_path / "hf"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(folder) in lines[0], lines
