"""Presets: the paper's 8B parameter counts (meta device, nothing allocated) and the bench shape."""

from __future__ import annotations

import pytest
import torch

from forge_models import PRESETS, build_model, count_layers, get_preset
from forge_models.presets import NOMINAL_PARAMS_B, PAPER_PARAMS_B


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_B))
def test_8b_param_counts_match_the_paper(name: str) -> None:
    model = build_model(get_preset(name), device="meta")
    got = model.num_parameters() / 1e9
    assert abs(got - PAPER_PARAMS_B[name]) / PAPER_PARAMS_B[name] <= 0.005, got
    assert model.config.vocab_size == 256000 and model.config.d_model == 4096
    assert not model.config.tie_embeddings


@pytest.mark.parametrize("name", sorted(NOMINAL_PARAMS_B))
def test_ablation_sizes_near_nominal(name: str) -> None:
    model = build_model(get_preset(name), device="meta")
    assert model.config.num_layers == 24
    got = model.num_parameters() / 1e9
    assert abs(got - NOMINAL_PARAMS_B[name]) / NOMINAL_PARAMS_B[name] <= 0.03, got


def test_8b_layer_layouts() -> None:
    assert count_layers(get_preset("hybrid-8b").pattern) == {"mamba2": 24, "mamba": 0, "attention": 4, "mlp": 28}
    assert get_preset("hybrid-8b").pattern[0] == "M"
    assert count_layers(get_preset("mamba-8b").pattern)["mamba"] == 56
    assert get_preset("mamba-8b").mamba.d_state == 128
    assert count_layers(get_preset("mamba2-8b").pattern)["mamba2"] == 56
    transformer = get_preset("transformer-8b")
    assert count_layers(transformer.pattern)["attention"] == 32 and transformer.attention.rope


def test_bench_preset_shape() -> None:
    cfg = get_preset("hybrid-2b-bench")
    assert (cfg.d_model, cfg.vocab_size) == (2048, 32000)
    assert count_layers(cfg.pattern) == {"mamba2": 24, "mamba": 0, "attention": 4, "mlp": 28}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_on_meta(name: str) -> None:
    model = build_model(get_preset(name), device="meta")
    assert next(model.parameters()).device == torch.device("meta")
