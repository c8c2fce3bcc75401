"""Activation bytes per token, per layer type, for memory plans (the memory twin of flops.py).

What one layer keeps from its forward for its backward ("saved"), and what its backward holds on
top while it runs ("working": gradients of its intermediates, the kernels' scratch). Counted per
token of a micro-batch, from what each forward path hands to autograd, for training with
bf16 autocast over fp32 weights (`act_bytes` 2) or in fp32 (`act_bytes` 4). Weights, gradients
and optimizer state are not here: they depend on how the platform shards them.

Every layer is `x + mixer(norm(x))`; the residual stream x stays fp32 (the weights are fp32,
so the sum is), 4 bytes per channel. Its `block_input` is saved by the layer's norm, or by the
recompute wrapper when the layer is recomputed: it is counted once, separately from `saved`.

Widths per token (d = d_model, tp = tensor-parallel degree, which narrows everything inside a
mixer; a = act_bytes):
- norm: its output, cast once (a d), and the reciprocal RMS (4).
- Mamba-2 (I = expand*d, G groups, N state, H heads of P, Q chunk): the fused in-projection
  output zxbcdt a(2I + 2GN + H) = a*W and the scan output a*I (mamba_ssm's fused call saves both
  and recomputes conv and gate in its backward), the gated norm's 1/rms 4G. Working, as measured
  (the kernels' backward remakes the conv output and the gated norm, and holds the gradients of
  all of them): a(3W + 4I), the fp32 chunk states 4HPN/Q, and the output's gradient a*d.
- Attention (H heads, G kv groups, E head dim): q, k, v after RoPE a(HE + 2GE), the output a*HE
  (o_proj reads it as a view), the log-sum-exp 4H; with RoPE the fp32 cos and sin made for q and
  for k (16E). Working, as measured: a*HE/2, plus q's fp32 gradient through RoPE 4HE.
- MLP (F hidden): the compiled layer keeps the in-projections' outputs and the product the
  down-projection reads, a*F each (gate, up, product for SwiGLU); its backward holds a*F more.
  Run eagerly (no compiled layer, e.g. under TP hooks) the activation is kept too (not measured).

Measured on one H200 (benchmarks/models/measure_activation_memory.py, hybrid-2b-anchor and
transformer-2b-bench at 8K-16K tokens, bytes per token): Mamba-2 saved 32,932 (these formulas:
32,932), working 108,033 (106,880); SwiGLU MLP 53,252 (53,252), 15,872 (16,384); attention
14,428 (14,404), 2,112 (2,048); with RoPE 16,476 (16,452), 10,688 (10,240).
- Mamba-1 (I channels, R dt rank, N state): in_proj output a*2I, conv output a*I, the dt/B/C
  projection a(R + 2N), dt a*I, the scan output a*I. Not measured on a GPU (no preset uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_models.config import ModelConfig

RESIDUAL_BYTES = 4
"""Bytes per channel of the residual stream (fp32 weights make the sum fp32)."""


@dataclass(frozen=True)
class LayerActivations:
    """Bytes per token of one layer (its mixer and pre-norm, without the block input)."""

    saved: int
    """Kept from the forward until this layer's backward."""
    working: int
    """Held on top of `saved` while this layer's backward runs."""


def _norm_bytes(cfg: ModelConfig, act_bytes: int) -> int:
    return act_bytes * cfg.d_model + 4


def mamba2_activations(cfg: ModelConfig, act_bytes: int, tp: int = 1) -> LayerActivations:
    """One Mamba-2 layer on the fused kernel path."""
    m = cfg.mamba2
    inner, heads, gn = cfg.mamba2_d_inner // tp, cfg.mamba2_num_heads // tp, m.ngroups * m.d_state // tp
    projection = 2 * inner + 2 * gn + heads
    saved = act_bytes * (projection + inner) + 4 * (m.ngroups // tp)
    chunk_states = 4 * heads * m.head_dim * m.d_state // m.chunk_size
    working = act_bytes * (3 * projection + 4 * inner) + chunk_states
    return LayerActivations(_norm_bytes(cfg, act_bytes) + saved, working + act_bytes * cfg.d_model)


def mamba_activations(cfg: ModelConfig, act_bytes: int, tp: int = 1) -> LayerActivations:
    """One Mamba-1 layer (approximate: see the module docstring)."""
    inner, rank, n = cfg.mamba_d_inner // tp, cfg.mamba_dt_rank, cfg.mamba.d_state
    saved = act_bytes * (2 * inner + inner + (rank + 2 * n) + inner + inner)
    return LayerActivations(_norm_bytes(cfg, act_bytes) + saved, saved + act_bytes * cfg.d_model)


def attention_activations(cfg: ModelConfig, act_bytes: int, tp: int = 1) -> LayerActivations:
    """One attention layer (flash / flex attention: nothing quadratic in the length is kept)."""
    a = cfg.attention
    q_width, kv_width, heads = a.num_heads * a.head_dim // tp, a.num_kv_groups * a.head_dim // tp, a.num_heads // tp
    saved = act_bytes * (q_width + 2 * kv_width) + act_bytes * q_width + 4 * heads
    working = act_bytes * q_width // 2
    if a.rope:  # cos and sin in fp32, made for q and for k; q's gradient through them in fp32
        saved += 2 * 2 * 4 * a.head_dim
        working += 4 * q_width
    return LayerActivations(_norm_bytes(cfg, act_bytes) + saved, working)


def mlp_activations(cfg: ModelConfig, act_bytes: int, tp: int = 1, fused: bool = True) -> LayerActivations:
    """One MLP layer: `fused` is the compiled layer (CUDA, `compile_pointwise`, no TP hooks)."""
    hidden = cfg.mlp_hidden_size // tp
    projections = 2 if cfg.mlp.activation == "swiglu" else 1
    if fused:  # the compiled layer keeps the in-projections' outputs and the down-projection's input
        return LayerActivations(_norm_bytes(cfg, act_bytes) + act_bytes * (projections + 1) * hidden,
                                act_bytes * hidden)
    # Eagerly each op keeps its own input: the activation's, the product's, the down-projection's.
    saved = act_bytes * (2 * projections + 1) * hidden
    return LayerActivations(_norm_bytes(cfg, act_bytes) + saved, act_bytes * (projections + 1) * hidden)


def layer_activations(cfg: ModelConfig, kind: str, act_bytes: int, tp: int = 1,
                      fused_mlp: bool = True) -> LayerActivations:
    """Bytes per token of one layer of `kind` ("mamba2", "mamba", "attention", "mlp")."""
    if kind == "mamba2":
        return mamba2_activations(cfg, act_bytes, tp)
    if kind == "mamba":
        return mamba_activations(cfg, act_bytes, tp)
    if kind == "attention":
        return attention_activations(cfg, act_bytes, tp)
    if kind == "mlp":
        return mlp_activations(cfg, act_bytes, tp, fused_mlp)
    raise ValueError(f"kind={kind!r} is invalid: allowed 'mamba2', 'mamba', 'attention', 'mlp'")


def block_input_bytes(cfg: ModelConfig) -> int:
    """Bytes per token of one layer's input (the fp32 residual stream)."""
    return RESIDUAL_BYTES * cfg.d_model


def loss_bytes(cfg: ModelConfig, act_bytes: int, tokens: int, tp: int = 1, chunk: int = 0) -> dict[str, int]:
    """LM head + cross-entropy for `tokens` tokens: {"saved", "working"} in bytes (not per token).

    `chunk` > 0 is the chunked loss (`LanguageModel.loss`): the final hidden states and one fp32
    log-sum-exp per token are kept, and one chunk's logits, their fp32 softmax and gradient are
    live at a time. `chunk` 0 materialises the logits (B, L, V/tp): in the compute dtype, their
    fp32 upcast for the cross-entropy and the fp32 gradient.
    """
    vocab = cfg.vocab_size // tp
    hidden = tokens * (act_bytes * cfg.d_model + 4)
    if chunk > 0:
        return {"saved": hidden, "working": min(chunk, tokens) * vocab * (act_bytes + 8)}
    return {"saved": hidden + tokens * vocab * act_bytes, "working": tokens * vocab * 8}
