"""FLOP counter against hand counts for a small config, and the anchor convention."""

from __future__ import annotations

from forge_models import ModelConfig, build_model
from forge_models.config import AttentionConfig, Mamba2Config, MambaConfig, MLPConfig
from forge_models.flops import (
    anchor_training_flops,
    forward_flops_by_kind,
    forward_flops_per_token,
    layer_flops,
    training_flops_per_token,
)

# d 64; Mamba-2: I 128, P 16 -> H 8, G 2, N 16, W 4, Q 8; attention 4 x 16 (2 kv); MLP GELU 256.
CFG = ModelConfig(
    vocab_size=100, d_model=64, pattern="M*+",
    mamba2=Mamba2Config(d_state=16, head_dim=16, ngroups=2, chunk_size=8),
    attention=AttentionConfig(num_heads=4, num_kv_groups=2, head_dim=16),
)


def test_mamba2_hand_count() -> None:
    got = layer_flops(CFG, "mamba2", seq_len=32)
    # in-proj: 64 -> z 128 + x 128 + B 32 + C 32 + dt 8 = 328; out-proj 128 -> 64.
    assert got["matmul"] == 2 * 64 * 328 + 2 * 128 * 64
    assert got["conv"] == 2 * 4 * (128 + 32 + 32)
    # CB^T 2*8*2*16, (CB)x 2*8*8*16, states + output 4*8*16*16, passing 2*8*16*16/8.
    assert got["scan"] == 512 + 2048 + 8192 + 512


def test_attention_and_mlp_hand_count() -> None:
    attn = layer_flops(CFG, "attention", seq_len=32)
    assert attn["matmul"] == 2 * 64 * (64 + 32 + 32) + 2 * 64 * 64
    assert attn["attention"] == 2 * 64 * 32  # 2 matmuls x 2 FLOPs x 64 channels x 16 avg keys
    assert layer_flops(CFG, "mlp", 32) == {"matmul": 2 * 2 * 64 * 256}
    swiglu = ModelConfig(vocab_size=100, d_model=64, pattern="+", mlp=MLPConfig(activation="swiglu", hidden_size=96))
    assert layer_flops(swiglu, "mlp", 32) == {"matmul": 3 * 2 * 64 * 96}


def test_mamba1_hand_count() -> None:
    cfg = ModelConfig(vocab_size=100, d_model=64, pattern="m", mamba=MambaConfig(d_state=16))
    got = layer_flops(cfg, "mamba", 32)  # I 128, R 4
    assert got["matmul"] == 2 * 64 * 256 + 2 * 128 * (4 + 32) + 2 * 4 * 128 + 2 * 128 * 64
    assert got["scan"] == 5 * 128 * 16


def test_totals() -> None:
    by_kind = forward_flops_by_kind(CFG, 32)
    assert by_kind["lm_head"] == 2 * 64 * 100 and by_kind["mamba"] == 0
    assert forward_flops_per_token(CFG, 32) == sum(by_kind.values())
    assert training_flops_per_token(CFG, 32) == 3 * forward_flops_per_token(CFG, 32)


def test_matmul_flops_are_twice_the_matrix_params() -> None:
    """Cross-check: without scan/attention/conv terms, forward matmul FLOPs = 2 x matrix params."""
    model = build_model(CFG, device="meta")
    matrix_params = sum(
        p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "conv" not in n and "embedding" not in n
    )
    matmul = sum(layer_flops(CFG, k, 32)["matmul"] for k in ("mamba2", "attention", "mlp")) + 2 * 64 * 100
    assert matmul == 2 * matrix_params


def test_anchor_convention() -> None:
    got = anchor_training_flops(CFG, num_params=1000, batch=2, seq_len=32)
    assert got == 6 * 1000 * 64 + 1 * 6 * 2 * 32**2 * 4 * 16


def test_attention_context_counts_each_document_of_a_packed_row() -> None:
    import torch
    from forge_models.flops import attention_context

    one_doc = torch.zeros(2, 1024, dtype=torch.long)
    assert attention_context(one_doc) == 1024.0  # one document per row: the row length
    # documents of 3 and 1 tokens, then of 2 and 2 (seq_idx restarts per row: still new documents)
    packed = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    assert attention_context(packed) == (9 + 1 + 4 + 4) / 8
    # two rows that each hold one document with the same seq_idx are two documents, not one of 8
    assert attention_context(torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5]])) == 4.0
    # times the row's tokens it is sum(n^2), the causal work of the documents run alone (x 1/2)
    assert attention_context(packed[:1]) * 4 == 3 * 3 + 1 * 1
