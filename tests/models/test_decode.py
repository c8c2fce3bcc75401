"""Incremental decoding: prefill + one token at a time equals the full forward; Mamba state is constant-size."""

from __future__ import annotations

import pytest
import torch

from forge_models import build_model, generate, get_preset
from forge_models.cache import KVCache, MambaState
from tests.models.helpers import FAMILIES, rel_err


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("prefill", [1, 11])
def test_step_by_step_equals_full_forward(name: str, prefill: int) -> None:
    model = build_model(get_preset(name)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 21))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch=2, capacity=ids.shape[1])
        pieces = [model(ids[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            pieces.append(model(ids[:, t : t + 1], cache=cache))
    assert rel_err(torch.cat(pieces, dim=1), full) <= 1e-5
    assert cache.offset == ids.shape[1]


@pytest.mark.parametrize("name", ["hybrid-debug", "mamba-debug"])
def test_mamba_state_does_not_grow_with_context(name: str) -> None:
    model = build_model(get_preset(name)).eval()
    cache = model.allocate_cache(batch=1, capacity=64)
    sizes = []
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 5)), cache=cache)
        for _ in range(40):
            model(torch.randint(0, 256, (1, 1)), cache=cache)
            sizes.append([(s.conv.shape, s.ssm.shape) for s in cache.layers if isinstance(s, MambaState)])
    assert sizes and all(s == sizes[0] for s in sizes)
    assert cache.nbytes()["mamba"] > 0
    kv = [s for s in cache.layers if isinstance(s, KVCache)]
    assert all(s.length == 45 for s in kv)  # attention keeps one entry per token


def test_generate_greedy_matches_argmax_of_forward() -> None:
    model = build_model(get_preset("hybrid-debug"))
    prompt = torch.randint(0, 256, (3, 6))
    out = generate(model, prompt, max_new_tokens=5)
    assert out.shape == (3, 11) and torch.equal(out[:, :6], prompt)
    with torch.no_grad():  # each generated token is the argmax of a full forward over the prefix
        for t in range(6, 11):
            assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_generate_sampling_is_seeded_and_respects_top_k() -> None:
    model = build_model(get_preset("transformer-debug"))
    prompt = torch.randint(0, 256, (2, 4))
    a = generate(model, prompt, 8, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 8, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with torch.no_grad():
        top3 = model(a[:, :4])[:, -1].topk(3).indices
    assert all(a[i, 4] in top3[i] for i in range(2))


def test_generate_stops_at_eos() -> None:
    model = build_model(get_preset("mamba2-debug"))
    prompt = torch.randint(0, 256, (1, 4))
    first = generate(model, prompt, 1)[0, -1].item()  # make the greedy first token the EOS
    out = generate(model, prompt, 10, eos_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_cache_rejects_seq_idx() -> None:
    model = build_model(get_preset("hybrid-debug"))
    cache = model.allocate_cache(1, 8)
    with pytest.raises(ValueError, match="one document per row"):
        model(torch.zeros(1, 2, dtype=torch.long), seq_idx=torch.zeros(1, 2, dtype=torch.int32), cache=cache)
