"""DeepSpeed's config derived from the job, the optimizer's groups, and the schedule."""

from __future__ import annotations

import pytest
from forge_platform.config_sections import OptimConfig, TrainConfig
from forge_platform.training.deepspeed_config import build_deepspeed_config
from forge_platform.training.optimizer import build_optimizer, build_schedule, lr_at
from forge_models import build_model, get_preset


def test_deepspeed_config_is_derived_from_the_job() -> None:
    train = TrainConfig(micro_batch_size=3, grad_accum_steps=4, zero_stage=1, precision="bf16")
    optim = OptimConfig(grad_clip=0.5)
    config = build_deepspeed_config(train, optim, data_parallel_size=2)
    assert config["train_batch_size"] == 3 * 4 * 2
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 4
    assert config["zero_optimization"]["stage"] == 1
    # bf16 runs as autocast over fp32 weights: DeepSpeed must not cast A_log, D, dt_bias to bf16
    assert config["bf16"] == {"enabled": False} and config["fp16"] == {"enabled": False}
    assert config["gradient_clipping"] == 0.5  # explicit: DeepSpeed 0.19.8 would default to 1.0
    off = build_deepspeed_config(TrainConfig(), OptimConfig(grad_clip=0.0), 1)
    assert off["gradient_clipping"] == 0.0 and off["bf16"]["enabled"] is False
    # stage 0: the train loop clips (and reports the norm) itself
    assert build_deepspeed_config(TrainConfig(zero_stage=0), optim, 1)["gradient_clipping"] == 0.0
    with pytest.raises(ValueError, match="data_parallel_size"):
        build_deepspeed_config(train, optim, 0)


def test_deepspeed_reads_its_throughput_timer_as_off() -> None:
    """DeepSpeed's own parser, not our dict: its default timer syncs the device every micro-batch."""
    from deepspeed.utils.config import get_timers_config

    timers = get_timers_config(build_deepspeed_config(TrainConfig(), OptimConfig(), 1))
    assert timers.enabled is False and timers.synchronized is False
    assert get_timers_config({}).synchronized is True  # what we would get by leaving it out


def test_optimizer_groups_follow_the_model_tags() -> None:
    model = build_model(get_preset("hybrid-debug"))
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert skipped | decayed == set(names.values()) and not skipped & decayed
    for leaf in ("A_log", "D", "dt_bias"):
        assert any(n.endswith("." + leaf) for n in skipped), leaf
    assert all(model.get_parameter(n).ndim == 2 for n in decayed)
    assert any("norm" in n for n in skipped)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_schedule_warms_up_linearly_then_cosine_to_min() -> None:
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_tokens=100)
    assert lr_at(0, optim, 1100) == pytest.approx(0.01)
    assert lr_at(49, optim, 1100) == pytest.approx(0.5)
    assert lr_at(100, optim, 1100) == pytest.approx(1.0)
    assert lr_at(600, optim, 1100) == pytest.approx(0.55)
    assert lr_at(1100, optim, 1100) == pytest.approx(0.1)
    assert lr_at(5000, optim, 1100) == pytest.approx(0.1)
    opt = build_optimizer(build_model(get_preset("mamba2-debug")), optim)
    schedule = build_schedule(opt, optim, tokens_per_step=50, total_steps=22)
    seen = []
    for _ in range(22):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen[0] == pytest.approx(0.01) and seen[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(seen[2:], seen[3:]))
