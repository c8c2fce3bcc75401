"""Smoke tests: the benchmark scripts' building blocks run on CPU with debug presets."""

from __future__ import annotations

import torch

from benchmarks.models.bench_decode import decode_ms, to_inference_dtype
from benchmarks.models.bench_train import train_step_fn
from forge_models import build_model, get_preset


def test_train_step_runs_and_updates_weights() -> None:
    model = build_model(get_preset("transformer-debug"))
    before = model.lm_head.weight.detach().clone()
    train_step_fn(model, batch=1, seq_len=16, device=torch.device("cpu"), forward=model)()
    assert not torch.equal(before, model.lm_head.weight)


def test_decode_benchmark_cache_sizes() -> None:
    model = to_inference_dtype(build_model(get_preset("hybrid-debug")), torch.float32).eval()
    cpu = torch.device("cpu")
    _, small = decode_ms(model, 32, 1, 1, cpu, torch.float32)
    _, large = decode_ms(model, 128, 1, 1, cpu, torch.float32)
    assert small["mamba"] == large["mamba"]  # constant in the context
    assert large["attention"] > small["attention"]
