"""The decode step's kernel path, wired to stand-ins of the two CUDA kernels, decodes like the reference.

CPU CI cannot run causal_conv1d_update or selective_state_update. The stand-ins below implement
their documented contracts (causal_conv1d: conv state (B, C, W-1) updated in place, any strides;
mamba_ssm: state updated in place, dt_bias added and softplus'd inside, D skip and silu(z) gate
applied inside), so this test checks what the GPU tests cannot check cheaply on every commit:
that the engine hands the kernels the right layouts (the (B, W-1, C) buffer as a channels-first
view), shapes and parameters, and reads their in-place state updates back. The GPU tests
(test_gpu_decode.py) check the real kernels against the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forge_models import ModelConfig, build_model, generate
from forge_models.config import AttentionConfig, Mamba2Config, MambaConfig
from forge_models.inference import InferenceEngine
from forge_models.inference import decode_step


def conv_update_stand_in(x_BC: torch.Tensor, state_BCW: torch.Tensor, weight_CW: torch.Tensor,
                         bias_C: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """causal_conv1d_update's contract for one token: shift x into the state in place, conv, activation."""
    assert activation == "silu" and state_BCW.shape == (*x_BC.shape, weight_CW.shape[1] - 1)
    window = torch.cat([state_BCW, x_BC[:, :, None]], dim=-1)
    state_BCW.copy_(window[:, :, 1:])
    out = (window * weight_CW).sum(-1) + (0 if bias_C is None else bias_C)
    return F.silu(out).to(x_BC.dtype)


def state_update_stand_in(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          dt_bias: torch.Tensor | None = None, dt_softplus: bool = False) -> torch.Tensor:
    """selective_state_update's contract: with heads (Mamba-2) or without (Mamba-1), state in place."""
    with_heads = state.dim() == 4
    if not with_heads:  # Mamba-1: one "head" of I channels, one group
        state_v, x, dt, A, B, C = state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None]
        D, z, dt_bias = D[None], None if z is None else z[:, None], dt_bias[None]
    else:
        state_v = state
    assert x.shape == dt.shape == state_v.shape[:3] and A.shape == state_v.shape[1:]
    dt = dt.float() + dt_bias.float()
    dt = F.softplus(dt) if dt_softplus else dt
    per_group = state_v.shape[1] // B.shape[1]
    B, C = B.float().repeat_interleave(per_group, dim=1), C.float().repeat_interleave(per_group, dim=1)
    new = state_v * torch.exp(dt[..., None] * A) + (dt * x.float())[..., None] * B[:, :, None, :]
    state_v.copy_(new)
    out = (new * C[:, :, None, :]).sum(-1) + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(x.dtype)
    return out if with_heads else out[:, 0]


CFG = ModelConfig(
    vocab_size=256, d_model=64, pattern="M+m*+M",
    mamba2=Mamba2Config(d_state=16, head_dim=16, ngroups=2, chunk_size=8), mamba=MambaConfig(d_state=8),
    attention=AttentionConfig(num_heads=4, num_kv_groups=2, head_dim=16, rope=True),
)


def test_kernel_wired_decode_equals_reference_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_step, "state_update_kernels", lambda: (state_update_stand_in, conv_update_stand_in))
    model = build_model(CFG).eval()
    engine = InferenceEngine(model, max_batch=3, max_seq_len=40)
    kernel_steps = [s for s in engine.program.steps if hasattr(s, "use_kernels")]
    assert len(kernel_steps) == 3
    for step in kernel_steps:  # the prefill stays on the reference (CPU); every decode step takes the kernel path
        step.use_kernels = True
    prompts = [torch.randint(0, 256, (n,)) for n in (5, 17, 1)]
    for prompt, out in zip(prompts, engine.generate(prompts, 10)):
        assert torch.equal(out, generate(model, prompt[None], 10)[0, prompt.numel():])
