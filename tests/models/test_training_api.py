"""The platform-facing API: loss, weight-decay groups, fp32 tags, import hygiene."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F

from forge_models import IGNORE_INDEX, build_model, get_preset, keep_fp32_names, language_model_loss, no_weight_decay_names


def test_loss_is_mean_over_non_ignored() -> None:
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :3] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(language_model_loss(logits, labels), expected)
    assert language_model_loss(logits, torch.full_like(labels, IGNORE_INDEX)).item() == 0.0


def test_no_weight_decay_covers_norms_and_ssm_params() -> None:
    model = build_model(get_preset("hybrid-debug"))
    skip = no_weight_decay_names(model)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        expect_skip = leaf in {"A_log", "D", "dt_bias", "bias"} or "norm" in name or leaf.endswith("_bias")
        assert (name in skip) == expect_skip, name
    assert {n.rsplit(".", 1)[-1] for n in keep_fp32_names(model)} == {"A_log", "D", "dt_bias"}


def test_mamba1_dt_bias_and_A_log_skip_decay() -> None:
    model = build_model(get_preset("mamba-debug"))
    skip = no_weight_decay_names(model)
    assert "layers.0.mixer.A_log" in skip and "layers.0.mixer.dt_proj.bias" in skip
    assert "layers.0.mixer.dt_proj.weight" not in skip


def test_import_does_not_load_kernels_or_platform() -> None:
    code = (
        "import sys, forge_models; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mamba_ssm', 'causal_conv1d', 'forge_platform', 'forge_data')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tied_embeddings_share_the_weight() -> None:
    import dataclasses

    cfg = dataclasses.replace(get_preset("hybrid-debug"), tie_embeddings=True)
    model = build_model(cfg)
    assert model.lm_head is None
    untied = build_model(get_preset("hybrid-debug"))
    assert untied.num_parameters() - model.num_parameters() == cfg.vocab_size * cfg.d_model


def test_tp_plan_covers_every_mixer_parameter() -> None:
    """Each mixer parameter has a split, and each split divides the parameter evenly at tp=2;
    Mamba-1, which has no plan, is refused by the same check that names indivisible sizes."""
    import pytest

    from forge_models.tp_plan import MIXER_SPLITS, check_tensor_parallel

    for preset in ("hybrid-debug", "transformer-debug"):
        model = build_model(get_preset(preset))
        check_tensor_parallel(model.config, 2)
        for block in model.layers:
            table = MIXER_SPLITS[block.spec.kind]
            for name, p in block.mixer.named_parameters():
                assert name in table, (block.spec.kind, name)
                dim = table[name]
                assert dim is None or p.shape[dim] % 2 == 0, (name, p.shape)
    with pytest.raises(ValueError, match="Mamba-1"):
        check_tensor_parallel(get_preset("mamba-debug"), 2)
    with pytest.raises(ValueError, match="mamba2.ngroups=2"):
        check_tensor_parallel(get_preset("hybrid-debug"), 4)
