"""GPU: the inference engine's kernel paths equal its reference paths; CUDA-graph decode equals eager decode.

Run on the device: `source .carry/bootstrap.sh && python3 -m pytest -m gpu tests/models/test_gpu_decode.py -v`.
Tolerances (relative error ||kernel - ref|| / ||ref||): fp32 with IEEE Triton dots 1e-4 (the kernels
sum in another order than the reference, nothing else differs); bf16 2e-2 (bf16 rounding of
activations, as the training parity tests' 1e-2 on logits, with room for states summed over a
whole prompt). Autotuners are pinned to one config (test_gpu_kernels.py's fixture): seconds, not minutes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from forge_models import ModelConfig, build_model, generate, keep_fp32_names
from forge_models.config import AttentionConfig, Mamba2Config, MambaConfig
from forge_models.inference import InferenceEngine
from forge_models.inference.buffers import DecodeBuffers, KVBuffers, MambaBuffers
from forge_models.inference.decode_step import Mamba1Step, Mamba2Step
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.ops.kernels import kernel_import_error
from tests.models.helpers import rel_err
from tests.models.test_gpu_kernels import _pin_autotuners  # noqa: F401 - autouse fixture, module scope

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(kernel_import_error() is not None, reason=f"no CUDA kernels: {kernel_import_error()}"),
]

# Kernel-friendly small sizes: head dim 64, conv channels a multiple of 8, chunks crossed by prompts.
GPU_CFG = ModelConfig(
    vocab_size=512, d_model=256, pattern="M+m*+M",
    mamba2=Mamba2Config(d_state=64, head_dim=64, ngroups=2, chunk_size=64),
    mamba=MambaConfig(d_state=16),
    attention=AttentionConfig(num_heads=4, num_kv_groups=2, head_dim=64, rope=True),
)
PROMPT_LENGTHS = [100, 37, 1, 150, 224]  # 5 prompts: bucket 8, three padding rows
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _models(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights twice: kernels='auto' (CUDA kernels) and kernels='reference', cast to `dtype`
    except the fp32-kept parameters (as bench_decode.to_inference_dtype does)."""
    fast = build_model(GPU_CFG, device="cuda")
    ref = build_model(dataclasses.replace(GPU_CFG, kernels="reference"), device="cuda")
    ref.load_state_dict(fast.state_dict())
    for model in (fast, ref):
        keep = keep_fp32_names(model)
        for name, p in model.named_parameters():
            if name not in keep:
                p.data = p.data.to(dtype)
    return fast.eval(), ref.eval()


def _prompts() -> list[torch.Tensor]:
    return [torch.randint(0, GPU_CFG.vocab_size, (n,)) for n in PROMPT_LENGTHS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_prefill_equals_reference_prefill(dtype: torch.dtype) -> None:
    fast, ref = _models(dtype)
    prompts = _prompts()
    engines = [InferenceEngine(m, max_batch=8, max_seq_len=256, cuda_graphs=False) for m in (fast, ref)]
    assert engines[0].use_kernels and not engines[1].use_kernels
    logits = [e.prefill(prompts, rows=8) for e in engines]
    assert logits[0].shape == (len(prompts), GPU_CFG.vocab_size)
    assert rel_err(logits[0], logits[1]) <= TOL[dtype]
    n = len(prompts)
    for a, b in zip(engines[0].buffers.layers, engines[1].buffers.layers):
        if isinstance(a, MambaBuffers):
            assert rel_err(a.ssm[:n], b.ssm[:n]) <= TOL[dtype]
            assert rel_err(a.conv[:n], b.conv[:n]) <= TOL[dtype]
        elif isinstance(a, KVBuffers):
            assert rel_err(a.k[:n], b.k[:n]) <= TOL[dtype] and rel_err(a.v[:n], b.v[:n]) <= TOL[dtype]
    assert torch.equal(engines[0].buffers.lengths[:n].cpu(), torch.tensor(PROMPT_LENGTHS))


def test_cuda_graph_decode_equals_eager_decode() -> None:
    fast, _ = _models(torch.bfloat16)
    prompts = _prompts()
    graphed = InferenceEngine(fast, max_batch=8, max_seq_len=256 + 32, cuda_graphs=True)
    eager = InferenceEngine(fast, max_batch=8, max_seq_len=256 + 32, cuda_graphs=False)
    out_graphed = graphed.generate(prompts, max_new_tokens=32)
    out_eager = eager.generate(prompts, max_new_tokens=32)
    assert graphed.graphs is not None and graphed.graphs.captured(8)
    for a, b in zip(out_graphed, out_eager):
        assert a.shape == (32,) and torch.equal(a, b)
    # A second bucket's graph over the same buffers, after the first one ran.
    single = [prompts[3]]
    assert torch.equal(graphed.generate(single, 32)[0], eager.generate(single, 32)[0])
    assert graphed.graphs.captured(1)
    assert torch.equal(graphed.generate(prompts, 32)[2], out_graphed[2])  # bucket 8 again, unchanged


def test_kernel_engine_greedy_equals_reference_generate_fp32() -> None:
    fast, ref = _models(torch.float32)
    prompts = _prompts()[:3]
    outs = InferenceEngine(fast, max_batch=4, max_seq_len=256, cuda_graphs=True).generate(prompts, 12)
    for prompt, out in zip(prompts, outs):
        expected = generate(ref, prompt[None].cuda(), max_new_tokens=12)[0, prompt.numel():].cpu()
        assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_kernel_state_update_equals_reference_step(dtype: torch.dtype) -> None:
    fast, _ = _models(dtype)
    rows = 3
    bufs = {}
    for kernels in (True, False):
        torch.manual_seed(1)
        buffers = DecodeBuffers(fast, rows, 64, torch.device("cuda"), dtype)
        for buf in buffers.layers:  # a state as a prefill would leave it
            if isinstance(buf, MambaBuffers):
                buf.conv.normal_()
                buf.ssm.normal_()
            elif isinstance(buf, KVBuffers):
                buf.k.normal_()
                buf.v.normal_()
        buffers.lengths[:] = torch.tensor([5, 17, 40])
        bufs[kernels] = buffers
    h = torch.randn(rows, GPU_CFG.d_model, device="cuda", dtype=dtype)
    checked = 0
    for i, block in enumerate(fast.layers):
        mixer = block.mixer
        if not isinstance(mixer, (Mamba2Mixer, MambaMixer)):
            continue  # attention and MLP steps have one path
        step_class = Mamba2Step if isinstance(mixer, Mamba2Mixer) else Mamba1Step
        outs = [step_class(mixer, kernels, dtype)(h, bufs[kernels].layers[i], bufs[kernels].lengths)
                for kernels in (True, False)]
        assert rel_err(outs[0], outs[1]) <= TOL[dtype], f"layer {i} ({type(mixer).__name__}) output"
        a, b = bufs[True].layers[i], bufs[False].layers[i]
        assert rel_err(a.ssm, b.ssm) <= TOL[dtype], f"layer {i} ssm state"
        assert torch.equal(a.conv, b.conv), f"layer {i} conv state (a shift of the same inputs)"
        checked += 1
    assert checked == 3
