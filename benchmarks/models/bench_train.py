"""Training-step speed: fwd + bwd + AdamW at 4K tokens, tokens/s and MFU, time per layer type.

MFU is measured against the bf16 matmul rate measured in the same run (8192^3), and reported
under two FLOP conventions: the device anchors' 6*N*tokens + attention, and forge_models.flops
(which adds the SSD scan and conv). Setup follows the anchors (shared/device/README.md): fp32
master weights, autocast(bf16), AdamW(fused=True), no activation checkpointing, median of the
timed steps after warm-up, CUDA events. `--anchor` also times mamba_ssm's own hybrid built like
the anchor P28-fused (24 Mamba2 + 4 MHA, GatedMLP 8192, fused add+norm, tied), GPU only.

A run is `NAME:MBxACC[:OPTS]`: NAME a preset or `anchor` (mamba_ssm's MambaLMHeadModel shaped
like the anchor P28-fused: 24 Mamba2 + 4 MHA at [3,10,17,24], GatedMLP 8192, fused add+norm,
residual fp32, tied; GPU only), MB the micro-batch, ACC the gradient-accumulation steps per
optimizer step (tokens per step = MB * ACC * seq_len), OPTS a comma list of `compile`
(ModelConfig.compile_pointwise: fused RMSNorm / MLP layers), `chunked` (LanguageModel.loss:
chunked LM head + cross-entropy, no full logits) and `chunkN` (SSD scan chunk size N, for the
anchor too; default 256, mamba_ssm's); `fast` means compile + chunked. Every run of one call shares
the process, the matmul rate and the autotuned kernels. `--profile RUN...` adds a torch.profiler
summary of one optimizer step of that run (kernel time by category and the top kernels);
`--layer-times RUN` times one layer of each kind (fwd+bwd) with that run's options.

Laptop (CPU smoke test of the script itself, numbers meaningless):
    python benchmarks/models/bench_train.py --runs hybrid-debug:1x2 --device cpu --seq-len 64 --steps 2
One GPU (the benchmark):
    export FORGE_SRC_ROOTS=models; source .carry/bootstrap.sh && python3 benchmarks/models/bench_train.py \
        --runs anchor:2x2 hybrid-2b-anchor:2x2 hybrid-2b-anchor:4x1:fast transformer-2b-bench:4x1:fast \
        --json $OUT/train.json
    (add --doc-len 1024 to time packed rows with document resets)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from collections.abc import Callable

import torch

from forge_models import build_model, get_preset, language_model_loss, weight_decay_groups
from forge_models.flops import anchor_training_flops, mamba2_flops
from forge_models.model import Block
from forge_models.patterns import count_layers


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of fn() in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def matmul_tflops(device: torch.device, size: int = 8192) -> float:
    """Measured bf16 matmul rate (TFLOP/s): the MFU denominator of this run."""
    if device.type != "cuda":
        size = 512
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * size**3 / (ms * 1e-3) / 1e12


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU; disabled on CPU (the smoke test checks the script, not the speed)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step_fn(model: torch.nn.Module, batch: int, seq_len: int, device: torch.device,
                  forward: Callable[[torch.Tensor], torch.Tensor] | None = None, accum: int = 1,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Callable[[], None]:
    """A closure running one optimizer step of `accum` micro-batches on random tokens.

    forward(ids) -> logits, scored by language_model_loss; or loss_fn(ids, labels) -> loss.
    """
    vocab = model.config.vocab_size if hasattr(model, "config") and hasattr(model.config, "vocab_size") else 32000
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    labels = ids.roll(-1, dims=1)
    groups = weight_decay_groups(model, 0.1) if hasattr(model, "config") else model.parameters()
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    if loss_fn is None:
        forward = forward or model

        def loss_fn(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return language_model_loss(forward(ids), labels)

    def step() -> None:
        for _ in range(accum):
            with autocast(device):
                loss = loss_fn(ids, labels)
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def parse_run(spec: str) -> tuple[str, int, int, set[str]]:
    """`NAME:MBxACC[:OPTS]` -> (name, micro_batch, accum, options)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or "x" not in parts[1]:
        raise ValueError(f"run {spec!r} is invalid: allowed NAME:MBxACC[:compile,chunked,chunkN|fast]")
    mb, acc = (int(v) for v in parts[1].split("x"))
    opts = set(parts[2].split(",")) if len(parts) == 3 and parts[2] else set()
    if "fast" in opts:
        opts |= {"compile", "chunked"}
    bad = {o for o in opts - {"compile", "chunked", "fast"} if not re.fullmatch(r"chunk\d+", o)}
    if bad:
        raise ValueError(f"run {spec!r}: unknown options {sorted(bad)}")
    return parts[0], mb, acc, opts


def scan_chunk_size(opts: set[str], default: int) -> int:
    """The SSD chunk size of a run: `chunkN` option, else the model's default."""
    sizes = [int(o[len("chunk"):]) for o in opts if re.fullmatch(r"chunk\d+", o)]
    return sizes[-1] if sizes else default


def build_run(name: str, opts: set[str], device: torch.device) -> tuple[torch.nn.Module, object]:
    """The model of a run and its forge config (the anchor-identical config for `anchor`)."""
    preset = get_preset("hybrid-2b-anchor" if name == "anchor" else name)
    chunk = scan_chunk_size(opts, preset.mamba2.chunk_size)
    if name == "anchor":
        return build_anchor(device, chunk), preset
    cfg = dataclasses.replace(preset, compile_pointwise="compile" in opts,
                              mamba2=dataclasses.replace(preset.mamba2, chunk_size=chunk))
    return build_model(cfg, device=device), cfg


def build_anchor(device: torch.device, chunk_size: int = 256) -> torch.nn.Module:
    """mamba_ssm's MambaLMHeadModel shaped like the anchor P28-fused (GPU only)."""
    from mamba_ssm.models.config_mamba import MambaConfig as AnchorConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    cfg = AnchorConfig(
        d_model=2048, d_intermediate=8192, n_layer=28, vocab_size=32000,
        ssm_cfg={"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 8, "chunk_size": chunk_size},
        attn_layer_idx=[3, 10, 17, 24], attn_cfg={"num_heads": 16, "num_heads_kv": 4, "head_dim": 128},
        rms_norm=True, fused_add_norm=True, residual_in_fp32=True, tie_embeddings=True,
    )
    model = MambaLMHeadModel(cfg, device=device)
    model.config = cfg  # has vocab_size: train_step_fn reads it
    return model


def make_step(model: torch.nn.Module, name: str, opts: set[str], mb: int, acc: int, seq_len: int,
              doc_len: int, device: torch.device) -> Callable[[], None]:
    """The optimizer-step closure of a run."""
    if name == "anchor":
        return train_step_fn(model, mb, seq_len, device, lambda ids: model(ids).logits, accum=acc)
    seq_idx = None
    if doc_len > 0:  # packed documents: resets in every mixer, flex block mask in attention
        seq_idx = (torch.arange(seq_len, device=device) // doc_len).to(torch.int32)
        seq_idx = seq_idx.expand(mb, -1).contiguous()
    if "chunked" in opts:
        return train_step_fn(model, mb, seq_len, device, accum=acc,
                             loss_fn=lambda ids, labels: model.loss(ids, labels, seq_idx=seq_idx))
    return train_step_fn(model, mb, seq_len, device, lambda ids: model(ids, seq_idx=seq_idx), accum=acc)


def step_flops(cfg: object, n: int, tokens_mb: int, mb: int, acc: int, seq_len: int) -> tuple[float, float]:
    """(anchor convention 6N*tokens + attention, the same + SSD scan and conv) for one optimizer step."""
    anchor = anchor_training_flops(cfg, n, mb, seq_len) * acc
    mf = mamba2_flops(cfg)
    ssd = 3 * (mf["scan"] + mf["conv"]) * count_layers(cfg.pattern)["mamba2"] * tokens_mb * acc
    return anchor, anchor + ssd


def bench_run(spec: str, args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    """Step time, tokens/s, MFU (two conventions), peak memory for one run."""
    name, mb, acc, opts = parse_run(spec)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, cfg = build_run(name, opts, device)
    n = sum(p.numel() for p in model.parameters())
    result = {"run": spec, "params": n, "micro_batch": mb, "accum": acc, "seq_len": args.seq_len,
              "doc_len": args.doc_len if name != "anchor" else 0}
    try:
        step = make_step(model, name, opts, mb, acc, args.seq_len, args.doc_len, device)
        t0 = time.perf_counter()
        step()  # compile / autotune step, not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["first_step_s"] = time.perf_counter() - t0
        ms = time_ms(step, device, warmup=args.warmup, iters=args.steps)
    except torch.OutOfMemoryError as exc:
        result["error"] = "OOM: " + str(exc).split("\n")[0][:160]
        return result
    finally:
        if device.type == "cuda":
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    tokens = mb * acc * args.seq_len
    f_anchor, f_ssd = step_flops(cfg, n, mb * args.seq_len, mb, acc, args.seq_len)
    result.update({"step_ms": ms, "tokens_per_s": tokens / (ms * 1e-3),
                   "mfu_anchor": f_anchor / (ms * 1e-3) / (peak * 1e12),
                   "mfu_incl_ssd": f_ssd / (ms * 1e-3) / (peak * 1e12)})
    if spec in args.profile:
        result["profile"] = profile_step(step, device, args.out_dir, spec)
    return result


CATEGORIES = (  # first match wins; kernel names lower-cased
    ("optimizer", ("multi_tensor", "adam")),
    ("ssd_scan", ("_chunk_scan", "_chunk_state", "_state_passing", "_bmm_chunk", "_chunk_cumsum", "ssd")),
    ("conv1d", ("causal_conv1d",)),
    ("gated_norm", ("_layer_norm", "layer_norm", "rms")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex", "cudnn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul", "_mm_")),
    ("triton_fused", ("triton_",)),
    ("copy_cast", ("copy", "cat", "fill", "zero")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "softmax", "log_softmax", "nll", "exp")),
)


def profile_step(step: Callable[[], None], device: torch.device, out_dir: str | None, spec: str) -> dict:
    """GPU kernel time of one step by category; the top kernels go to a text file and stdout."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    by_cat: dict[str, float] = {}
    rows = []
    for evt in prof.key_averages():
        dev_us = getattr(evt, "self_device_time_total", 0) or getattr(evt, "self_cuda_time_total", 0)
        if dev_us <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        key = evt.key.lower()
        cat = next((c for c, pats in CATEGORIES if any(p in key for p in pats)), "other")
        by_cat[cat] = by_cat.get(cat, 0.0) + dev_us / 1e3
        rows.append((dev_us / 1e3, evt.count, cat, evt.key[:110]))
    rows.sort(reverse=True)
    lines = [f"profile of one optimizer step of {spec}: GPU kernel ms by category (total {sum(by_cat.values()):.1f})"]
    lines += [f"  {c:14s} {ms:9.1f}" for c, ms in sorted(by_cat.items(), key=lambda kv: -kv[1])]
    lines.append("top kernels: ms, calls, category, name")
    lines += [f"  {ms:9.2f} {cnt:6d} {cat:13s} {name}" for ms, cnt, cat, name in rows[:40]]
    text = "\n".join(lines)
    print(text, flush=True)
    if out_dir:
        safe = spec.replace(":", "_").replace(",", "-")
        with open(f"{out_dir}/profile_{safe}.txt", "w") as f:
            f.write(text + "\n\n" + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=60))
    return {k: round(v, 2) for k, v in by_cat.items()}


def layer_times(spec: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """fwd+bwd ms of one layer of each kind present (run's micro-batch and options), random input."""
    name, mb, _, opts = parse_run(spec)
    cfg = dataclasses.replace(get_preset(name), compile_pointwise="compile" in opts)
    # Only one layer of each kind is timed: build a small stack with one of each.
    kinds = []
    for c in cfg.pattern:
        if c not in kinds:
            kinds.append(c)
    model = build_model(dataclasses.replace(cfg, pattern="".join(kinds)), device=device)
    out = {}
    for block in model.layers:
        x = torch.randn(mb, args.seq_len, cfg.d_model, device=device, requires_grad=True)
        positions = torch.arange(args.seq_len, device=device).expand(mb, -1)

        def fwd_bwd(block: Block = block, x: torch.Tensor = x) -> None:
            with autocast(device):
                y = block(x, None, positions)
            y.float().sum().backward()

        out[block.spec.kind] = time_ms(fwd_bwd, device, warmup=3, iters=max(5, args.steps))
    counts = count_layers(cfg.pattern)
    out["stack_sum_ms"] = sum(out[k] * counts[k] for k in list(out))
    return out


def main() -> None:
    """Parse flags, measure the matmul peak, benchmark each run, print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["anchor:2x2", "hybrid-2b-anchor:2x2",
                                                      "hybrid-2b-anchor:4x1:fast", "transformer-2b-bench:4x1"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--doc-len", type=int, default=0, help="pack documents of this length (0: one per row)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--profile", nargs="*", default=[], help="runs (as written in --runs) to profile")
    parser.add_argument("--layer-times", nargs="*", default=[], help="runs whose per-layer times to measure")
    parser.add_argument("--baseline", default="anchor:2x2", help="the run the ratio column divides by")
    parser.add_argument("--out-dir", default=None, help="profile text files go here")
    parser.add_argument("--json", default=None, help="write results here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_tflops(device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "bf16_matmul_tflops": peak, "runs": [], "layer_ms": {}}
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "layer_ms")}), flush=True)
    for spec in args.runs:
        results["runs"].append(bench_run(spec, args, device, peak))
        print(json.dumps(results["runs"][-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    for spec in args.layer_times:
        results["layer_ms"][spec] = layer_times(spec, args, device)
        print(json.dumps({"layer_ms": spec, **results["layer_ms"][spec]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    base = next((r for r in results["runs"] if r["run"] == args.baseline and "tokens_per_s" in r), None)
    print(f"\n{results['device']}, {results['date']}, torch {results['torch']}, seq {args.seq_len}, "
          f"doc_len {args.doc_len}, bf16 matmul {peak:.1f} TFLOP/s (MFU denominator)")
    print(f"{'run':40s} {'params':>7s} {'step ms':>8s} {'tok/s':>8s} {'MFU':>6s} {'MFU+SSD':>8s} "
          f"{'peak GiB':>8s} {'ratio':>6s}")
    for r in results["runs"]:
        if "tokens_per_s" not in r:
            print(f"{r['run']:40s} {r['params'] / 1e9:6.3f}B  {r.get('error', '?')}")
            continue
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        print(f"{r['run']:40s} {r['params'] / 1e9:6.3f}B {r['step_ms']:8.1f} {r['tokens_per_s']:8.0f} "
              f"{100 * r['mfu_anchor']:5.1f}% {100 * r['mfu_incl_ssd']:7.1f}% {r.get('peak_mem_gib') or 0:8.1f} "
              f"{ratio:6.3f}")


if __name__ == "__main__":
    main()
