"""The inference engine on CPU (reference ops): packed prefill == each prompt prefilled alone, engine
generation == forge_models.generate (the oracle), per-row EOS, seeded sampling, refusals.

Tolerance: fp32 relative error 1e-5 on logits and states (the packed reference scan and the
per-prompt one add the same terms in another order).
"""

from __future__ import annotations

import pytest
import torch

from forge_models import build_model, generate, get_preset
from forge_models.cache import KVCache, MambaState
from forge_models.inference import InferenceEngine, SamplingConfig
from forge_models.inference.buffers import KVBuffers, MambaBuffers
from forge_models.inference.engine import check_servable
from tests.models.helpers import FAMILIES, rel_err

LENGTHS = [7, 1, 19, 12]  # the debug Mamba-2 chunk is 8: prompts cross chunk edges, one is a single token
TOL = 1e-5


def _prompts(lengths: list[int] = LENGTHS) -> list[torch.Tensor]:
    return [torch.randint(0, 256, (n,)) for n in lengths]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("max_prefill_tokens", [4096, 20])  # one packed call, or several
def test_packed_prefill_equals_each_prompt_alone(name: str, max_prefill_tokens: int) -> None:
    model = build_model(get_preset(name)).eval()
    prompts = _prompts()
    engine = InferenceEngine(model, max_batch=4, max_seq_len=32, max_prefill_tokens=max_prefill_tokens)
    logits = engine.prefill(prompts, rows=4)
    assert logits.shape == (4, model.config.vocab_size)
    assert engine.buffers.lengths.tolist() == LENGTHS
    for i, prompt in enumerate(prompts):
        cache = model.allocate_cache(1, 32)
        with torch.no_grad():
            expected = model(prompt[None], cache=cache)[0, -1]
        assert rel_err(logits[i], expected) <= TOL
        for state, buf in zip(cache.layers, engine.buffers.layers):
            if isinstance(state, MambaState):
                assert isinstance(buf, MambaBuffers)
                assert rel_err(buf.conv[i], state.conv[0]) <= TOL
                assert rel_err(buf.ssm[i], state.ssm[0]) <= TOL
            elif isinstance(state, KVCache):
                assert isinstance(buf, KVBuffers)
                n = prompt.numel()
                assert rel_err(buf.k[i, :, :n], state.k[0, :n].transpose(0, 1)) <= TOL
                assert rel_err(buf.v[i, :, :n], state.v[0, :n].transpose(0, 1)) <= TOL
                assert not buf.k[i, :, n:].any()  # nothing written past the prompt


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_greedy_equals_reference_generate(name: str) -> None:
    model = build_model(get_preset(name)).eval()
    prompts = _prompts([5, 13, 1])  # bucket 4: one padding row decodes alongside
    outs = InferenceEngine(model, max_batch=3, max_seq_len=32).generate(prompts, max_new_tokens=10)
    for prompt, out in zip(prompts, outs):
        expected = generate(model, prompt[None], max_new_tokens=10)[0, prompt.numel():]
        assert torch.equal(out, expected)


def test_each_row_stops_at_its_own_eos() -> None:
    model = build_model(get_preset("hybrid-debug")).eval()
    prompts = _prompts([6, 3, 9])
    engine = InferenceEngine(model, max_batch=4, max_seq_len=40)
    free = engine.generate(prompts, max_new_tokens=12)
    eos = int(free[1][2])  # row 1's third greedy token
    outs = engine.generate(prompts, max_new_tokens=12, eos_id=eos)
    for prompt, out, unstopped in zip(prompts, outs, free):
        expected = generate(model, prompt[None], max_new_tokens=12, eos_id=eos)[0, prompt.numel():]
        hits = (unstopped == eos).nonzero()
        stop = 12 if hits.numel() == 0 else int(hits[0, 0]) + 1
        assert torch.equal(out, unstopped[:stop])
        assert torch.equal(out, expected[: out.numel()]) and (out.numel() == 12 or out[-1] == eos)
    assert outs[1].numel() <= 3


def test_sampling_is_reproducible_and_respects_top_k_and_top_p() -> None:
    model = build_model(get_preset("transformer-debug")).eval()
    prompts = _prompts([4, 9])
    engine = InferenceEngine(model, max_batch=2, max_seq_len=32)
    warm = SamplingConfig(temperature=1.5, seed=3)
    a, b = engine.generate(prompts, 12, sampling=warm), engine.generate(prompts, 12, sampling=warm)
    other = engine.generate(prompts, 12, sampling=SamplingConfig(temperature=1.5, seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, other))
    greedy = engine.generate(prompts, 12)
    for narrow in (SamplingConfig(temperature=1.0, top_k=1, seed=0),
                   SamplingConfig(temperature=1.0, top_p=1e-6, seed=0)):
        assert all(torch.equal(x, y) for x, y in zip(engine.generate(prompts, 12, sampling=narrow), greedy))
    top3 = engine.generate(prompts, 1, sampling=SamplingConfig(temperature=5.0, top_k=3, seed=0))
    with torch.no_grad():
        for prompt, out in zip(prompts, top3):
            assert out[0] in model(prompt[None])[0, -1].topk(3).indices


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"temperature": -0.5}, "temperature=-0.5"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"top_k": 0}, "top_k=0"),
    ({"top_p": 0.0}, "top_p=0.0"),
    ({"top_p": 1.5}, "top_p=1.5"),
])
def test_bad_sampling_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_bad_requests_are_refused_by_name() -> None:
    model = build_model(get_preset("hybrid-debug")).eval()
    engine = InferenceEngine(model, max_batch=2, max_seq_len=16)
    too_long = r"prompt 1 has 12 tokens \+ max_new_tokens 8 = 20 > the engine's max_seq_len 16"
    with pytest.raises(ValueError, match=too_long):
        engine.generate([torch.ones(3, dtype=torch.long), torch.ones(12, dtype=torch.long)], 8)
    with pytest.raises(ValueError, match="batch of 3 prompts is larger than the engine's max_batch 2"):
        engine.generate([[1], [2], [3]], 2)
    with pytest.raises(ValueError, match="prompt 0 has shape"):
        engine.generate([torch.zeros(0, dtype=torch.long)], 2)
    with pytest.raises(ValueError, match="max_batch=65: must be in"):
        InferenceEngine(model, max_batch=65, max_seq_len=16)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA model"):
        InferenceEngine(model, max_batch=1, max_seq_len=16, cuda_graphs=True)


def test_a_conv_width_the_decode_kernel_lacks_is_refused() -> None:
    cfg = get_preset("mamba2-debug")
    cfg.mamba2.d_conv = 5
    model = build_model(cfg).eval()
    check_servable(model, use_kernels=False)  # the reference ops serve any width
    with pytest.raises(ValueError, match=r"model.mamba2.d_conv = 5: the CUDA decode kernel"):
        check_servable(model, use_kernels=True)
    prompt = torch.randint(0, 256, (6,))
    out = InferenceEngine(model, max_batch=1, max_seq_len=16).generate([prompt], 4)[0]
    assert torch.equal(out, generate(model, prompt[None], 4)[0, 6:])


@pytest.mark.parametrize("name", ["hybrid-debug", "mamba-debug"])
def test_refresh_weights_after_loading_new_weights_in_place(name: str) -> None:
    model = build_model(get_preset(name)).eval()
    engine = InferenceEngine(model, max_batch=2, max_seq_len=32)
    prompts = _prompts([6, 11])
    before = engine.generate(prompts, 8)
    model.load_state_dict(build_model(get_preset(name)).state_dict())  # other weights, same tensors
    expected = [generate(model, p[None], 8)[0, p.numel():] for p in prompts]
    assert not all(torch.equal(a, b) for a, b in zip(before, expected))
    engine.refresh_weights()
    assert all(torch.equal(a, b) for a, b in zip(engine.generate(prompts, 8), expected))


def test_decode_attention_over_several_kv_chunks() -> None:
    model = build_model(get_preset("transformer-debug")).eval()
    engine = InferenceEngine(model, max_batch=2, max_seq_len=600)
    assert engine.buffers.capacity == 768  # rounded up to whole chunks of KV_CHUNK = 256 keys
    prompts = _prompts([270, 520])  # keys in two and three chunks
    for prompt, out in zip(prompts, engine.generate(prompts, 6)):
        assert torch.equal(out, generate(model, prompt[None], 6)[0, prompt.numel():])
