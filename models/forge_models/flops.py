"""FLOP counts per token, per layer type, for MFU.

Convention: one multiply-add = 2 FLOPs; training = 3 x forward (backward = 2 x forward);
norms, activations, gating and softmax are not counted (they are memory-bound and small).
`seq_len` is the attention context: the row length for one document per row. For rows of packed
documents attention runs within each document only, so `attention_context(seq_idx)` gives the
length that makes the formula exact for them (the row length overstates it: a 64K row of 6K-token
documents does a tenth of the attention work of one 64K document).

Forward FLOPs per token, by layer (d = d_model):
- Mamba-2 (I = expand*d, H heads of P, G groups, N state, W conv, Q chunk):
  matmul 2d(2I + 2GN + H) + 2Id; conv 2W(I + 2GN);
  SSD scan, as the chunked algorithm computes it: intra-chunk C.B^T per group 2QGN and its
  product with x 2QHP (full Q x Q blocks, as the kernels compute them), chunk states 2HPN,
  state passing 2HPN/Q, state-to-output 2HPN.
- Mamba-1 (I channels, N state, R dt rank): matmul 2d*2I + 2I(R + 2N) + 2RI + 2Id; conv 2WI;
  selective scan 5IN (decay*h + input: 3, C.h reduce: 2).
- Attention (H heads, G kv groups, E head dim): matmul 2d(HE + 2GE) + 2HEd; quadratic
  2 * 2HE * L/2 = 2HEL (QK^T and AV, causal halves the average context).
- MLP (F hidden): GELU 2*2dF; SwiGLU 3*2dF.
- LM head 2dV per token (embedding lookup: 0).

`anchor_training_flops` is the device anchors' convention: 6 * N * tokens + 6 * B * L^2 * H * E
per attention layer (no SSD scan term), used to compare MFU with the measured anchors.
"""

from __future__ import annotations

import torch

from forge_models.config import ModelConfig
from forge_models.ops.ssd import doc_starts
from forge_models.patterns import count_layers


def mamba2_flops(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs per token of one Mamba-2 layer: {"matmul", "conv", "scan"}."""
    m, d = cfg.mamba2, cfg.d_model
    inner, heads = cfg.mamba2_d_inner, cfg.mamba2_num_heads
    gn = m.ngroups * m.d_state
    hpn = heads * m.head_dim * m.d_state
    return {
        "matmul": 2 * d * (2 * inner + 2 * gn + heads) + 2 * inner * d,
        "conv": 2 * m.d_conv * (inner + 2 * gn),
        "scan": 2 * m.chunk_size * gn + 2 * m.chunk_size * inner + 4 * hpn + (2 * hpn) // m.chunk_size,
    }


def mamba_flops(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs per token of one Mamba-1 layer: {"matmul", "conv", "scan"}."""
    d, inner, n, rank = cfg.d_model, cfg.mamba_d_inner, cfg.mamba.d_state, cfg.mamba_dt_rank
    return {
        "matmul": 2 * d * 2 * inner + 2 * inner * (rank + 2 * n) + 2 * rank * inner + 2 * inner * d,
        "conv": 2 * cfg.mamba.d_conv * inner,
        "scan": 5 * inner * n,
    }


def attention_flops(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of one attention layer: {"matmul", "attention"} (causal)."""
    a, d = cfg.attention, cfg.d_model
    q_width, kv_width = a.num_heads * a.head_dim, a.num_kv_groups * a.head_dim
    return {
        "matmul": 2 * d * (q_width + 2 * kv_width) + 2 * q_width * d,
        "attention": 2 * q_width * seq_len,
    }


def mlp_flops(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs per token of one MLP layer: {"matmul"}."""
    num_mats = 3 if cfg.mlp.activation == "swiglu" else 2
    return {"matmul": num_mats * 2 * cfg.d_model * cfg.mlp_hidden_size}


def layer_flops(cfg: ModelConfig, kind: str, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of one layer of `kind` ("mamba2", "mamba", "attention", "mlp")."""
    if kind == "mamba2":
        return mamba2_flops(cfg)
    if kind == "mamba":
        return mamba_flops(cfg)
    if kind == "attention":
        return attention_flops(cfg, seq_len)
    if kind == "mlp":
        return mlp_flops(cfg)
    raise ValueError(f"kind={kind!r} is invalid: allowed 'mamba2', 'mamba', 'attention', 'mlp'")


def forward_flops_by_kind(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token summed over the stack, per layer kind, plus "lm_head"."""
    out = {}
    for kind, count in count_layers(cfg.pattern).items():
        out[kind] = count * sum(layer_flops(cfg, kind, seq_len).values())
    out["lm_head"] = 2 * cfg.d_model * cfg.vocab_size
    return out


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Total forward FLOPs per token at context `seq_len`."""
    return sum(forward_flops_by_kind(cfg, seq_len).values())


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs per token (3 x forward)."""
    return 3 * forward_flops_per_token(cfg, seq_len)


def anchor_training_flops(cfg: ModelConfig, num_params: int, batch: int, seq_len: int) -> int:
    """The anchor convention for one step of batch x seq_len tokens:
    6 * N * tokens + 6 * B * L^2 * H * E per attention layer (SSD scan not counted)."""
    num_attention = count_layers(cfg.pattern)["attention"]
    a = cfg.attention
    return 6 * num_params * batch * seq_len + num_attention * 6 * batch * seq_len**2 * a.num_heads * a.head_dim


def attention_context(seq_idx_BL: torch.Tensor) -> float:
    """The `seq_len` at which the causal-attention term counts packed rows exactly: sum(n^2) / sum(n)
    over their documents of n tokens (a row of one document gives its length). Documents are runs of
    equal seq_idx, as the mixers reset them (forge_models.model)."""
    if seq_idx_BL.numel() == 0:
        return 0.0
    starts = doc_starts(seq_idx_BL)
    starts[:, 0] = True
    # Run lengths of the flattened rows; a new row always starts a run.
    positions = torch.nonzero(starts.flatten()).flatten()
    lengths = torch.diff(positions, append=torch.tensor([starts.numel()], device=positions.device)).double()
    return float((lengths * lengths).sum() / lengths.sum())
