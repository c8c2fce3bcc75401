"""What one layer really keeps and holds in training, beside forge_models.memory's prediction.

    python benchmarks/models/measure_activation_memory.py --preset hybrid-2b-anchor --lengths 8192 16384

For each layer kind of the preset, one residual block (its pre-norm and mixer, the way the model
runs it: CUDA kernels, bf16 autocast over fp32 weights, compiled norm/MLP) gets one packed row of
documents. Measured with the CUDA allocator:
- saved: bytes allocated after the forward, less the input and the output (what autograd keeps);
- working: the backward's peak above that, less the layer's fp32 weight gradients;
- the same two when the block is recomputed (torch.utils.checkpoint): saved must drop to nothing
  but the input, working rises by what the recompute remakes.
Two lengths give bytes per token as a slope (constant terms, like the bf16 weight copies, fall
out). Also the chunked LM loss. CUDA only.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.utils.checkpoint
from forge_models import build_model, get_preset
from forge_models import memory as act


def packed_seq_idx(length: int, doc: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(length, device=device) // doc).to(torch.int32).unsqueeze(0)


def measure_block(block: torch.nn.Module, length: int, d_model: int, recompute: bool,
                  device: torch.device) -> tuple[int, int]:
    """(saved, working) bytes of one forward+backward of `block` over one row of `length`."""
    block.zero_grad(set_to_none=True)
    seq_idx = packed_seq_idx(length, 6144, device)
    positions = (torch.arange(length, device=device) % 6144).unsqueeze(0)
    x = torch.randn(1, length, d_model, device=device, requires_grad=True)
    grad_out = torch.randn(1, length, d_model, device=device)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        if recompute:
            out = torch.utils.checkpoint.checkpoint(block, x, seq_idx, positions, use_reentrant=False)
        else:
            out = block(x, seq_idx, positions)
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    saved = after - before - out.numel() * out.element_size()
    torch.cuda.reset_peak_memory_stats()
    out.backward(grad_out)
    torch.cuda.synchronize()
    grads = sum(p.grad.numel() * 4 for p in block.parameters() if p.grad is not None)
    working = torch.cuda.max_memory_allocated() - after - grads - x.numel() * 4  # less x.grad
    del out, x, grad_out
    return saved, working


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hybrid-2b-anchor")
    parser.add_argument("--lengths", type=int, nargs=2, default=[8192, 16384])
    args = parser.parse_args()
    device = torch.device("cuda")
    cfg = dataclasses.replace(get_preset(args.preset), compile_pointwise=True)
    model = build_model(cfg, device=device)
    seen: dict[str, torch.nn.Module] = {}
    for block in model.layers:
        seen.setdefault(block.spec.kind, block)
    short, long = args.lengths
    print(f"{args.preset}: bytes per token, slope between {short} and {long} tokens (one packed row, bf16 autocast)")
    print("| layer | saved (measured) | saved (plan) | working (measured) | working (plan) "
          "| recomputed: saved | recomputed: working (measured) | (plan: saved + working) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, block in seen.items():
        block.train()
        for _ in range(2):  # compile and autotune first
            measure_block(block, short, cfg.d_model, False, device)
        rows = {}
        for recompute in (False, True):
            s0, w0 = measure_block(block, short, cfg.d_model, recompute, device)
            s1, w1 = measure_block(block, long, cfg.d_model, recompute, device)
            rows[recompute] = ((s1 - s0) / (long - short), (w1 - w0) / (long - short))
        plan = act.layer_activations(cfg, kind, 2, 1, fused_mlp=True)
        (s, w), (rs, rw) = rows[False], rows[True]
        print(f"| {kind} | {s:,.0f} | {plan.saved:,} | {w:,.0f} | {plan.working:,} | {rs:,.0f} | {rw:,.0f} "
              f"| {plan.saved + plan.working:,} |")
    # The chunked loss: the final norm's output and the LM head over the whole row.
    for length in args.lengths:
        hidden = torch.randn(1, length, cfg.d_model, device=device, requires_grad=True)
        labels = torch.randint(0, cfg.vocab_size, (1, length), device=device)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            from forge_models.losses import chunked_lm_loss
            loss = chunked_lm_loss(model.final_norm(hidden), model.lm_head_weight(), labels, chunk=4096, fused=True)
        after = torch.cuda.memory_allocated()
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        plan = act.loss_bytes(cfg, 2, length, 1, 4096)
        print(f"loss at {length}: saved {after - before:,} B (plan {plan['saved']:,}), peak over the forward and "
              f"backward {peak:,} B (plan saved + working {plan['saved'] + plan['working']:,})")


if __name__ == "__main__":
    main()
