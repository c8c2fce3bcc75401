"""CPU checks of the training-speed paths: chunked LM loss and the (eager) fused pointwise blocks."""

from __future__ import annotations

import pytest
import torch

from forge_models import build_model, get_preset, language_model_loss
from forge_models import losses
from forge_models.losses import IGNORE_INDEX, chunked_lm_loss
from forge_models.ops import fused
from tests.models.helpers import rel_err


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_lm_loss_matches_full_logits(chunk: int) -> None:
    hidden = torch.randn(2, 50, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 50))
    labels[0, :5] = IGNORE_INDEX
    ref = language_model_loss(hidden @ weight.t(), labels)
    g_h, g_w = torch.autograd.grad(ref, (hidden, weight))
    out = chunked_lm_loss(hidden, weight, labels, chunk=chunk)
    c_h, c_w = torch.autograd.grad(out, (hidden, weight))
    assert rel_err(out, ref) < 1e-6
    assert rel_err(c_h, g_h) < 1e-5 and rel_err(c_w, g_w) < 1e-5


def test_fusable_logit_gradient_equals_the_eager_one() -> None:
    """The compiled loss's backward formula (one-hot by comparison) equals the eager scatter,
    ignored tokens included; the compiled kernel itself is checked on the GPU."""
    logits = torch.randn(6, 11)
    labels = torch.tensor([3, IGNORE_INDEX, 0, 10, 3, IGNORE_INDEX])
    lse = torch.logsumexp(logits, dim=-1)
    weight = (labels != IGNORE_INDEX).float() * 0.25
    eager = losses._grad_logits_eager(logits, lse, labels, weight)
    assert rel_err(losses._grad_logits_fusable(logits, lse, labels, weight), eager) < 1e-6
    assert eager[1].abs().max() == 0 and eager[0, 3] < 0  # ignored row is zero; the label's logit goes up


def test_chunked_lm_loss_all_ignored_is_zero() -> None:
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    out = chunked_lm_loss(hidden, torch.randn(10, 8), torch.full((1, 4), IGNORE_INDEX))
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


def test_a_hooked_mlp_is_not_fused_past() -> None:
    """The fused MLP layer reads the MLP's weights without calling it; once something hooks the
    MLP (tensor parallelism does), the layer must go through the call."""
    model = build_model(get_preset("hybrid-debug"))
    mlp_layers = [layer for layer in model.layers if type(layer.mixer).__name__ == "MLP"]
    assert mlp_layers and not any(layer.is_hooked() for layer in mlp_layers)
    handle = mlp_layers[0].mixer.register_forward_pre_hook(lambda module, args: None)
    assert mlp_layers[0].is_hooked() and not mlp_layers[1].is_hooked()
    handle.remove()
    assert not mlp_layers[0].is_hooked()
    handle = mlp_layers[1].norm.register_forward_hook(lambda module, args, out: out)
    assert mlp_layers[1].is_hooked()
    handle.remove()


def test_norms_choose_their_compiled_kernel_inside_the_module() -> None:
    """compile_pointwise reaches every RMSNorm as a flag, so callers always call the module
    (on CPU the flag changes nothing: the compiled kernels are CUDA-only)."""
    import dataclasses

    from forge_models.norms import RMSNorm

    model = build_model(dataclasses.replace(get_preset("hybrid-debug"), compile_pointwise=True))
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == len(model.layers) + 1 and all(n.compiled for n in norms)
    x = torch.randn(2, 5, model.config.d_model)
    torch.testing.assert_close(model.final_norm(x), RMSNorm(model.config.d_model, compiled=False)(x))


def test_compiled_blocks_without_gradients_compile_once_for_every_length() -> None:
    # Evaluation and prefill call the compiled blocks at a new length per prompt: a static compile
    # per length hit torch's recompile limit (8) on the H200 and fell back to eager with warnings.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    weight = torch.ones(16)
    with torch.no_grad():
        for length in range(3, 15):
            x = torch.randn(1, length, 16)
            assert rel_err(fused.compiled_rms_norm(x, weight, 1e-5), fused.rms_norm(x, weight, 1e-5, x.dtype)) < 1e-6
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
