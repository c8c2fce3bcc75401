"""CPU checks of the training-speed paths: chunked LM loss and the (eager) fused pointwise blocks."""

from __future__ import annotations

import pytest
import torch

from forge_models import build_model, get_preset, language_model_loss
from forge_models.losses import chunked_lm_loss
from forge_models.ops import fused
from tests.models.helpers import rel_err


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_lm_loss_matches_full_logits(chunk: int) -> None:
    hidden = torch.randn(2, 50, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 50))
    labels[0, :5] = -100
    ref = language_model_loss(hidden @ weight.t(), labels)
    g_h, g_w = torch.autograd.grad(ref, (hidden, weight))
    out = chunked_lm_loss(hidden, weight, labels, chunk=chunk)
    c_h, c_w = torch.autograd.grad(out, (hidden, weight))
    assert rel_err(out, ref) < 1e-6
    assert rel_err(c_h, g_h) < 1e-5 and rel_err(c_w, g_w) < 1e-5


def test_chunked_lm_loss_all_ignored_is_zero() -> None:
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    out = chunked_lm_loss(hidden, torch.randn(10, 8), torch.full((1, 4), -100))
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0


def test_model_loss_equals_loss_of_logits() -> None:
    model = build_model(get_preset("hybrid-debug"))
    ids = torch.randint(0, 256, (2, 24))
    labels = ids.roll(-1, dims=1)
    ref = language_model_loss(model(ids), labels)
    assert rel_err(model.loss(ids, labels, chunk=10), ref) < 1e-6


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_fused_functions_match_modules(activation: str) -> None:
    name = "transformer-debug" if activation == "swiglu" else "hybrid-debug"
    model = build_model(get_preset(name))
    block = next(b for b in model.layers if b.spec.kind == "mlp")
    x = torch.randn(2, 9, 64)
    mlp = block.mixer
    gate = None if mlp.gate_proj is None else mlp.gate_proj.weight
    ref = block(x, None, None)
    out = fused.mlp_block(x, block.norm.weight, block.norm.eps, mlp.up_proj.weight, gate, mlp.down_proj.weight,
                          torch.float32)
    assert rel_err(out, ref) < 1e-6
    assert rel_err(fused.rms_norm(x, block.norm.weight, block.norm.eps, torch.float32), block.norm(x)) < 1e-6
