"""What the 32-bit offset guard costs: one Mamba-2 mixer's forward + backward on the CUDA kernels.

In one process, interleaved: the 2B mixer (hybrid-2b-anchor) at 128K tokens, batch 1, through
`mamba2_kernel_forward` (plan + offset checks, then the same single call) against the single call
itself (`_whole_rows`, the code path before the guard): the ratio must stay within 3%. Then the
calls the guard splits, which crashed before: the 8B mixer at 128K batch 1 (sequence segments)
beside the 8B mixer at 96K (one call), per token; and the 2B mixer at 128K micro-batch 2 (one row
per call) beside 128K batch 1. bf16 autocast over fp32 weights, packed documents, CUDA events,
median of the timed repeats.

One GPU:
    export FORGE_SRC_ROOTS=models; source .carry/bootstrap.sh && python3 benchmarks/models/bench_kernel_segments.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
from forge_models import get_preset
from forge_models.mamba2 import Mamba2Mixer
from forge_models.ops import mamba2_kernel
from forge_models.ops.kernel_limits import plan_mamba2_calls

K = 1024


def build_mixer(preset: str) -> Mamba2Mixer:
    cfg = get_preset(preset)
    torch.manual_seed(0)
    mixer = Mamba2Mixer(cfg).cuda()
    mixer.reset_parameters(cfg.init_std, cfg.init_std)
    return mixer


def time_fwd_bwd(fn, u: torch.Tensor, seq_idx: torch.Tensor, repeats: int) -> float:  # noqa: ANN001
    """Median seconds of forward + backward."""
    times = []
    for i in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(u, seq_idx)
        y.float().square().mean().backward()
        end.record()
        torch.cuda.synchronize()
        if i >= 2:  # the first two warm up (autotuning, allocations)
            times.append(start.elapsed_time(end) / 1e3)
        u.grad = None
    return statistics.median(times)


def packed(batch: int, length: int, d_model: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_idx = torch.zeros(batch, length, dtype=torch.int32, device="cuda")
    seq_idx[:, length // 3:] = 1  # a document boundary, and one document across any segment edge
    u = (torch.randn(batch, length, d_model, device="cuda") * 0.5).requires_grad_()
    return u, seq_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}")

    mixer = build_mixer("hybrid-2b-anchor")
    u, seq_idx = packed(1, 128 * K, mixer.out_proj.out_features)

    def single_call(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        zxbcdt = torch.nn.functional.linear(x, mixer.in_proj_weight())
        return mamba2_kernel._whole_rows(mixer, zxbcdt, -torch.exp(mixer.A_log.float()), idx, x.dtype)

    guarded = lambda x, idx: mamba2_kernel.mamba2_kernel_forward(mixer, x, idx)  # noqa: E731
    rounds = {"single call (before)": [], "guarded (now)": []}
    for _ in range(3):  # interleaved, so drift hits both alike
        rounds["single call (before)"].append(time_fwd_bwd(single_call, u, seq_idx, args.repeats))
        rounds["guarded (now)"].append(time_fwd_bwd(guarded, u, seq_idx, args.repeats))
    before, now = (statistics.median(v) for v in rounds.values())
    print(f"2B mixer, 128K x 1, fwd+bwd: before {before * 1e3:.1f} ms, now {now * 1e3:.1f} ms, "
          f"now/before {now / before:.4f} (target <= 1.03)")

    u2, seq_idx2 = packed(2, 128 * K, mixer.out_proj.out_features)
    split_rows = time_fwd_bwd(guarded, u2, seq_idx2, args.repeats)
    print(f"2B mixer, 128K x 2 (plan {plan_mamba2_calls(2, 128 * K, mamba2_kernel.mixer_widths(mixer))}): "
          f"{split_rows * 1e3:.1f} ms = {split_rows / 2 / now:.3f} x the time per row of 128K x 1")
    del mixer, u, u2

    mixer = build_mixer("hybrid-8b")
    d_model = mixer.out_proj.out_features
    per_token = {}
    for length in (96 * K, 128 * K):
        u, seq_idx = packed(1, length, d_model)
        seconds = time_fwd_bwd(lambda x, idx: mamba2_kernel.mamba2_kernel_forward(mixer, x, idx), u, seq_idx,
                               args.repeats)
        plan = plan_mamba2_calls(1, length, mamba2_kernel.mixer_widths(mixer))
        per_token[length] = seconds / length
        print(f"8B mixer, {length // K}K x 1 (plan {plan}): {seconds * 1e3:.1f} ms, "
              f"{per_token[length] * 1e9:.1f} ns/token; peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del u
    print(f"8B mixer: 128K (segmented) per token / 96K (one call) per token = "
          f"{per_token[128 * K] / per_token[96 * K]:.3f}")


if __name__ == "__main__":
    main()
