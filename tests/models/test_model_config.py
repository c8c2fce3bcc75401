"""ModelConfig: validation errors name field, value and allowed range; presets are fresh copies."""

from __future__ import annotations

import dataclasses

import pytest

from forge_models import PRESETS, ModelConfig, build_model, get_preset
from forge_models.config import AttentionConfig, Mamba2Config, MLPConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0}, r"^model\.d_model = 0: must be > 0$"),
        ({"pattern": "M?"}, r"^model\.pattern = 'M\?': must be .*'\?' at position 1"),
        ({"kernels": "triton"}, "model.kernels = 'triton': must be one of .*auto"),
        ({"d_model": 64, "pattern": "M", "mamba2": Mamba2Config(head_dim=48)}, "model.mamba2.head_dim = 48: must be"),
        ({"d_model": 64, "pattern": "M", "mamba2": Mamba2Config(head_dim=16, ngroups=3)},
         "model.mamba2.ngroups = 3: must be"),
    ],
)
def test_invalid_model_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AttentionConfig(num_heads=6, num_kv_groups=4), "model.attention.num_kv_groups = 4: must be"),
        (lambda: AttentionConfig(backend="xformers"), "model.attention.backend = 'xformers': must be one of"),
        (lambda: MLPConfig(activation="relu"), "model.mlp.activation = 'relu': must be one of"),
        (lambda: Mamba2Config(dt_min=0.5, dt_max=0.1), "model.mamba2.dt_min = 0.5: must be"),
    ],
)
def test_invalid_section_config(build, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        build()


def test_built_from_plain_dicts() -> None:
    """A generic loader hands nested sections over as dicts; they become dataclasses."""
    as_dict = dataclasses.asdict(get_preset("hybrid-debug"))
    cfg = ModelConfig(**as_dict)
    assert cfg == get_preset("hybrid-debug")
    assert isinstance(cfg.mamba2, Mamba2Config)


def test_replace_revalidates() -> None:
    cfg = get_preset("hybrid-debug")
    assert dataclasses.replace(cfg, vocab_size=100).vocab_size == 100
    with pytest.raises(ValueError, match="pattern"):
        dataclasses.replace(cfg, pattern="M#")


def test_field_types_are_plain() -> None:
    """Only plain types, a Literal of fixed choices or nested dataclasses: what the platform's generic
    loader supports."""
    import typing

    plain = {int, float, str, bool}
    for cls in (ModelConfig, Mamba2Config, AttentionConfig, MLPConfig):
        for name, hint in typing.get_type_hints(cls).items():
            ok = hint in plain or dataclasses.is_dataclass(hint) or typing.get_origin(hint) is typing.Literal
            assert ok, (cls.__name__, name, hint)


def test_presets_are_fresh_and_unknown_names_listed() -> None:
    a = get_preset("hybrid-debug")
    a.mamba2.d_state = 999
    assert get_preset("hybrid-debug").mamba2.d_state != 999
    with pytest.raises(KeyError, match="hybrid-debug"):
        get_preset("nope")
    assert {"hybrid-debug", "mamba2-debug", "mamba-debug", "transformer-debug", "hybrid-8b"} <= set(PRESETS)


def test_forced_cuda_kernels_fail_clearly_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="kernels='cuda' was forced"):
        build_model(dataclasses.replace(get_preset("hybrid-debug"), kernels="cuda"))
