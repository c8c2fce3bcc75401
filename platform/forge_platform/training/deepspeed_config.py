"""The one function that derives DeepSpeed's config dict from a stage's job config.

Nothing else writes DeepSpeed JSON. Every value that DeepSpeed would otherwise default is set here
explicitly, because its defaults have changed between versions (0.19.8 clips gradients at 1.0
unless told otherwise).
"""

from __future__ import annotations

from typing import Any

from forge_platform.config_sections import OptimConfig, TrainConfig


def build_deepspeed_config(train: TrainConfig, optim: OptimConfig, data_parallel_size: int) -> dict[str, Any]:
    """DeepSpeed's config for one stage: batch shape, ZeRO stage, precision and clipping.

    The optimizer and the schedule are passed to `deepspeed.initialize` as objects (a plain
    `torch.optim.AdamW` and a `LambdaLR`), so no DeepSpeed op has to be JIT-compiled for them.
    """
    if data_parallel_size < 1:
        raise ValueError(f"data_parallel_size = {data_parallel_size}: must be >= 1")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * data_parallel_size,
        # At stage 0 DeepSpeed clips but never reports the norm: the train loop clips there itself.
        "gradient_clipping": optim.grad_clip if train.zero_stage > 0 else 0.0,
        "zero_optimization": {"stage": train.zero_stage},
        # bf16 is autocast over fp32 weights (the train loop's), not DeepSpeed's bf16 mode: that
        # mode casts every parameter to bf16, and Mamba's A_log, D and dt_bias must stay fp32.
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # progress is ours to print, through the metric loggers
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer is on by default and synchronizes the device at every
        # engine forward and step: a stall per micro-batch. Throughput is ours to measure.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "zero_allow_untested_optimizer": True,
    }
    if train.zero_stage in (1, 2):
        # DeepSpeed 0.19.8's own values for stages 1-2 (overlap_comm defaults on only at stage 3),
        # spelled out so they do not drift. overlap_comm was measured on 2 GPUs and not adopted
        # (benchmarks/platform/RESULTS.md, "ZeRO-2 overlap_comm").
        config["zero_optimization"].update(
            {"contiguous_gradients": True, "overlap_comm": False, "reduce_scatter": True}
        )
    return config
