"""Checkpoint metadata and the refusals: another model, a layout that cannot be resharded, another
global batch, missing files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from forge_models import build_model, get_preset
from forge_platform.config_loader import config_hash
from forge_platform.training.checkpoint_files import (
    BF16_WEIGHTS_FILE,
    CheckpointMeta,
    IncompatibleCheckpointError,
    load_weights,
    read_meta,
    save_rank_zero_files,
)
from forge_platform.training.checkpoint_manager import RunIdentity, check_resumable


def meta(**changes) -> CheckpointMeta:
    base = CheckpointMeta(step=10, tokens_seen=2560, samples_consumed=20, stage="pretrain", config_hash="c",
                          model_hash="m", tensor_parallel=1, data_parallel=2)
    return dataclasses.replace(base, **changes)


def test_rank_zero_files_round_trip(tmp_path: Path) -> None:
    cfg = get_preset("hybrid-debug")
    torch.manual_seed(0)
    model = build_model(cfg)
    save_rank_zero_files(tmp_path, meta(model_hash=config_hash(cfg)), cfg, model.state_dict())
    assert read_meta(tmp_path).model_hash == config_hash(cfg)
    torch.manual_seed(1)
    other = build_model(cfg)
    load_weights(other, tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob("*.tmp"))  # written through rename
    # the bf16 export: half the bytes, Mamba's precision-sensitive parameters still fp32, and it loads
    export = torch.load(tmp_path / BF16_WEIGHTS_FILE, weights_only=True)
    fp32 = {n for n, t in export.items() if t.dtype == torch.float32}
    assert fp32 == {n for n in export if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")} and fp32
    assert all(t.dtype == torch.bfloat16 for n, t in export.items() if n not in fp32)
    load_weights(other, tmp_path / BF16_WEIGHTS_FILE)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor.to(export[name].dtype).float()), name


def test_weights_of_another_model_are_refused_with_names(tmp_path: Path) -> None:
    cfg = get_preset("hybrid-debug")
    save_rank_zero_files(tmp_path, meta(), cfg, build_model(cfg).state_dict())
    wider = build_model(dataclasses.replace(cfg, d_model=96))
    with pytest.raises(IncompatibleCheckpointError, match=r"belong to another model: .*shape mismatch"):
        load_weights(wider, tmp_path)
    transformer = build_model(dataclasses.replace(get_preset("transformer-debug"), vocab_size=cfg.vocab_size))
    with pytest.raises(IncompatibleCheckpointError, match=r"missing .*unexpected"):
        load_weights(transformer, tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="no model weights"):
        load_weights(wider, tmp_path / "nowhere")


def identity(**changes) -> RunIdentity:
    return dataclasses.replace(RunIdentity(stage="pretrain", model_hash="m", training_hash="c"), **changes)


def test_resume_refuses_other_model_and_layout(tmp_path: Path) -> None:
    check_resumable(meta(), identity(), tensor_parallel=1, data_parallel=2)
    with pytest.raises(IncompatibleCheckpointError, match="written by another model"):
        check_resumable(meta(), identity(model_hash="other"), tensor_parallel=1, data_parallel=2)
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"tp 1 x dp 2 differs from this run's tp 2 x dp 1, and it holds no optimizer state by "
                             r"parameter name .*cannot be resharded: rerun with its layout \(parallel.num_workers 2, "
                             r"parallel.tensor_parallel 1, parallel.context_parallel 1\)"):
        check_resumable(meta(), identity(), tensor_parallel=2, data_parallel=1)
    with pytest.raises(IncompatibleCheckpointError, match="not a Hybrid Forge checkpoint"):
        read_meta(tmp_path)


def test_a_resume_names_each_changed_setting_and_allows_only_the_listed_safe_ones() -> None:
    from forge_platform.config_sections import CheckpointConfig, StageConfig, TrainConfig
    from forge_platform.training.checkpoint_manager import training_settings

    written = StageConfig(train=TrainConfig(steps=10, micro_batch_size=4, log_every=1, recompute="full"))
    settings = training_settings(written)
    assert "train.recompute" not in settings and "train.log_every" not in settings  # never the numbers
    checkpoint = meta(training=settings)

    def rerun(may_change: tuple[str, ...] = (), **train) -> RunIdentity:
        stage = dataclasses.replace(written, train=dataclasses.replace(written.train, **train))
        return identity(training=training_settings(stage), may_change=may_change)

    assert check_resumable(checkpoint, rerun(log_every=5, recompute="none"), tensor_parallel=1, data_parallel=2) == {}
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"other settings: train\.steps 10 -> 20; .*resume_may_change train\.steps"):
        check_resumable(checkpoint, rerun(steps=20), tensor_parallel=1, data_parallel=2)
    allowed = check_resumable(checkpoint, rerun(("train.steps",), steps=20), tensor_parallel=1, data_parallel=2)
    assert allowed == {"train.steps": (10, 20)}
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"global batch of 4 x 1 x 2 = 8 rows .* this run's is 2 x 1 x 2 = 4: .* must stay 8 "
                             r"\(e\.g\. train\.grad_accum_steps 2 with micro_batch_size 2 at dp 2\)"):
        check_resumable(checkpoint, rerun(("train.steps",), steps=20, micro_batch_size=2),
                        tensor_parallel=1, data_parallel=2)
    with pytest.raises(IncompatibleCheckpointError, match=r"train\.seed 0 -> 1; these cannot change on resume"):
        check_resumable(checkpoint, rerun(seed=1), tensor_parallel=1, data_parallel=2)
    optim = identity(training={**settings, "optim.lr": 1.0}, may_change=("optim.*",))
    assert check_resumable(checkpoint, optim, tensor_parallel=1, data_parallel=2) == {"optim.lr": (3e-4, 1.0)}
    # a checkpoint written before the settings were kept is still checked by its hash
    with pytest.raises(IncompatibleCheckpointError, match="hash c, this run's is other"):
        check_resumable(meta(), identity(training_hash="other", training=settings), tensor_parallel=1,
                        data_parallel=2)
    with pytest.raises(ValueError, match=r"resume_may_change: 'train.seq_len' cannot change on resume"):
        CheckpointConfig(resume_may_change=["train.seq_len"])
    CheckpointConfig(resume_may_change=["train.steps", "optim.lr", "optim.*"])


def test_a_checkpoint_with_universal_state_resumes_with_other_degrees_and_the_same_global_batch() -> None:
    from forge_platform.config_sections import StageConfig, TrainConfig
    from forge_platform.training.checkpoint_manager import training_settings

    def settings(micro: int, accum: int, zero_stage: int = 2) -> dict:
        return training_settings(StageConfig(train=TrainConfig(micro_batch_size=micro, grad_accum_steps=accum,
                                                               zero_stage=zero_stage)))

    saved = meta(tensor_parallel=2, data_parallel=2, training=settings(2, 2), universal_state=True)  # 8 rows
    # other degrees, the micro-batches regrouped so that each step reads the same 8 rows
    assert check_resumable(saved, identity(training=settings(2, 1)), tensor_parallel=1, data_parallel=4) == {
        "train.grad_accum_steps": (2, 1)}
    assert check_resumable(saved, identity(training=settings(4, 2)), tensor_parallel=2, data_parallel=1) == {
        "train.micro_batch_size": (2, 4)}
    assert check_resumable(saved, identity(training=settings(2, 2)), tensor_parallel=1, data_parallel=2,
                           context_parallel=2) == {}
    assert check_resumable(saved, identity(training=settings(1, 4)), tensor_parallel=2, data_parallel=2) == {
        "train.micro_batch_size": (2, 1), "train.grad_accum_steps": (2, 4)}
    # another global batch: the data position and the schedule would not follow; named with the products
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"global batch of 2 x 2 x 2 = 8 rows .* this run's is 2 x 2 x 4 = 16: .*must stay 8 "
                             r"\(e\.g\. train\.grad_accum_steps 1 with micro_batch_size 2 at dp 4\)"):
        check_resumable(saved, identity(training=settings(2, 2)), tensor_parallel=1, data_parallel=4)
    with pytest.raises(IncompatibleCheckpointError, match=r"2 x 2 x 2 = 8 rows .* 3 x 1 x 2 = 6: .*must stay 8$"):
        check_resumable(saved, identity(training=settings(3, 1)), tensor_parallel=1, data_parallel=2)
    # what the universal state does not cover is still refused
    with pytest.raises(IncompatibleCheckpointError, match="written by another model"):
        check_resumable(saved, identity(model_hash="other", training=settings(2, 1)), tensor_parallel=1,
                        data_parallel=4)
    # another ZeRO stage: the universal state rebuilds its partitions (test_checkpoint_reshard_options.py)
    assert check_resumable(saved, identity(training=settings(2, 1, zero_stage=3)), tensor_parallel=1,
                           data_parallel=4) == {"train.grad_accum_steps": (2, 1), "train.zero_stage": (2, 3)}
    with pytest.raises(IncompatibleCheckpointError, match=r"tp 2 x dp 2 differs from this run's tp 1 x cp 2 x dp 2"):
        check_resumable(dataclasses.replace(saved, universal_state=False), identity(training=settings(2, 2)),
                        tensor_parallel=1, data_parallel=2, context_parallel=2)
