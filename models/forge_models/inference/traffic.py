"""The memory-traffic model of one decode step: the bytes it must move and the FLOPs it does.

Legend: b batch rows, len tokens already in context, D d_model, V vocabulary, G kv groups,
E attention head dim, H Mamba-2 heads, P head dim, N state size, C conv channels, W conv width,
I Mamba-1 channels.

At batch sizes up to a few dozen a decode step is bound by memory bandwidth, not arithmetic
(2 FLOPs per weight element per row against 2 bytes per element read once): the floor of its time
is the bytes it must move divided by the bandwidth. What one step moves, and nothing else:
- weights, read once per step whatever b is: every parameter in bf16 except those kept in fp32
  (Mamba's A_log, D, dt_bias: 4 bytes), and of the input embedding only the b rows looked up
  (when the embedding is tied the LM head reads the whole table anyway);
- the KV cache, read per row: 2 (K and V) * attention layers * G * E * len * 2 bytes, plus
  writing the new token's entry;
- Mamba state per row, read and written: the fp32 SSM state (H*P*N for Mamba-2, I*N for
  Mamba-1, 4 bytes) and the conv window ((W-1)*C, 2 bytes);
- the logits, written once and read once by the sampler: b * V * 2 bytes each way.
Activations between layers (a few b*D vectors per layer) are left out: kilobytes against gigabytes.

FLOPs: 2 per weight element per row for every matmul (the embedding lookup is none), attention
4 * H_q * E * len per row and layer (scores and weighted sum), and ~6 * H*P*N per Mamba-2 row
and layer (decay, input, output of the state update; Mamba-1 likewise with I*N).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from forge_models.config import ModelConfig
from forge_models.params import keep_fp32_names
from forge_models.patterns import parse_pattern

BF16_BYTES, FP32_BYTES = 2, 4


@dataclass(frozen=True)
class StepTraffic:
    """Bytes and FLOPs of one decode step (all rows together)."""

    weight_bytes: int
    kv_bytes: int
    state_bytes: int
    logits_bytes: int
    flops: int

    @property
    def total_bytes(self) -> int:
        """Everything the step must move."""
        return self.weight_bytes + self.kv_bytes + self.state_bytes + self.logits_bytes

    def floor_ms(self, bandwidth_gb_s: float) -> float:
        """The step's time if it moved its bytes at `bandwidth_gb_s` (GB/s, 1e9 bytes) and did nothing else."""
        return self.total_bytes / (bandwidth_gb_s * 1e9) * 1e3

    def as_dict(self) -> dict[str, int]:
        """The fields plus total_bytes, for JSON."""
        return {**asdict(self), "total_bytes": self.total_bytes}


def weight_bytes_and_matmul_params(cfg: ModelConfig, batch: int) -> tuple[int, int]:
    """(bytes of weights one step reads, parameters that take part in a matmul per row)."""
    from forge_models.model import build_model  # meta device: no memory, exact parameter names

    model = build_model(cfg, device="meta")
    keep = keep_fp32_names(model)
    read_bytes = matmul_params = 0
    for name, p in model.named_parameters():
        size = FP32_BYTES if name in keep else BF16_BYTES
        if name == "embedding.weight" and not cfg.tie_embeddings:
            read_bytes += batch * cfg.d_model * size  # only the looked-up rows
            continue
        read_bytes += p.numel() * size
        if p.dim() == 2 and "conv" not in name and "A_log" not in name:
            matmul_params += p.numel()
    return read_bytes, matmul_params


def decode_step_traffic(cfg: ModelConfig, batch: int, context: int) -> StepTraffic:
    """The traffic model of one decode step of `batch` rows that each hold `context` tokens."""
    if batch < 1 or context < 0:
        raise ValueError(f"batch={batch}, context={context}: need batch >= 1 and context >= 0")
    kinds = [spec.kind for spec in parse_pattern(cfg.pattern)]
    weights, matmul_params = weight_bytes_and_matmul_params(cfg, batch)
    a, m2, m1 = cfg.attention, cfg.mamba2, cfg.mamba
    num_attention, num_mamba2, num_mamba1 = kinds.count("attention"), kinds.count("mamba2"), kinds.count("mamba")
    kv_per_token = 2 * a.num_kv_groups * a.head_dim * BF16_BYTES
    kv = batch * num_attention * kv_per_token * (context + 1)  # read len entries, write the new one
    ssm2 = cfg.mamba2_num_heads * m2.head_dim * m2.d_state
    conv2 = (m2.d_conv - 1) * (cfg.mamba2_d_inner + 2 * m2.ngroups * m2.d_state)
    ssm1 = cfg.mamba_d_inner * m1.d_state
    conv1 = (m1.d_conv - 1) * cfg.mamba_d_inner
    state_per_row = (num_mamba2 * (ssm2 * FP32_BYTES + conv2 * BF16_BYTES)
                     + num_mamba1 * (ssm1 * FP32_BYTES + conv1 * BF16_BYTES))
    state = 2 * batch * state_per_row  # read and written back
    logits = 2 * batch * cfg.vocab_size * BF16_BYTES
    flops = batch * (2 * matmul_params + num_attention * 4 * a.num_heads * a.head_dim * (context + 1)
                     + 6 * (num_mamba2 * ssm2 + num_mamba1 * ssm1))
    return StepTraffic(weight_bytes=weights, kv_bytes=kv, state_bytes=state, logits_bytes=logits, flops=flops)


def predicted_speedup(fast: StepTraffic, slow: StepTraffic) -> float:
    """How much faster `fast` should be than `slow` if both ran at the same bandwidth: bytes ratio."""
    return slow.total_bytes / fast.total_bytes

