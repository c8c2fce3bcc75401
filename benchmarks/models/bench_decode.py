"""Decode speed against the memory-traffic floor: hybrid vs Transformer vs Mamba-2, and mamba_ssm as the anchor.

For each preset, batch and context: the per-token latency of the inference engine's decode step
(forge_models.inference: static buffers, CUDA graph per batch bucket on CUDA, greedy argmax fed
back as the next token), tokens/s, and beside it the traffic model (inference/traffic.py): the
bytes one step must move (bf16 weights except fp32-kept params, KV read per row, SSM + conv state
read and written, logits), the achieved bandwidth (model bytes / measured time), the floor time
at `--bandwidth-gbs` and measured / floor. Then, per (batch, context), the hybrid's measured
speedup over the Transformer beside the traffic model's predicted speedup (bytes ratio).

Caches are filled synthetically (each row's length set to the context; states as they are)
instead of running a prefill: a decode step's time does not depend on the cached values, so a
128K point costs no 128K prefill. Points whose buffers do not fit in `--memory-fraction` of the
free GPU memory are recorded as skipped. `--prefill-contexts` also times one packed prefill of a
single prompt of that length (after one warm-up call, which includes Triton's autotuning).

`--anchor`: in the same process, for every pure Mamba-2 preset measured, mamba_ssm's own
`MambaLMHeadModel` built with the same shape decodes with its CUDA-graph path. By default that
is `mamba2-2b-bench`: d_model 2048, 56 Mamba-2 layers, d_state 128, head dim 64, 8 groups,
vocab 32K, untied (the hybrid bench's depth and size, ~1.78B); mamba2-8b when asked. Theirs runs
`generate(..., cg=True, top_k=1)`, ours `InferenceEngine.generate`, timed the same way: a whole
generate call of 1 + n new tokens minus one of 1 new token, divided by n (so the prefill and
graph capture drop out; the graphs are captured by a first, untimed call). Only its pure Mamba-2 model
is compared: mamba_ssm's attention decode is wrong without flash-attn (issue #15).

Laptop (CPU smoke test of the script):
    python benchmarks/models/bench_decode.py --presets hybrid-debug transformer-debug --device cpu \
        --pair hybrid-debug transformer-debug --contexts 64 256 --batches 1 2 --steps 2
One GPU (H200, ~3 minutes):
    source .carry/bootstrap.sh && python3 benchmarks/models/bench_decode.py --anchor \
        --prefill-contexts 4096 32768 --json $OUT/decode.json && \
    python3 benchmarks/models/plot_decode.py $OUT/decode.json $OUT/decode_speedup.png
The 8B presets (points that do not fit are skipped: the Transformer's full-MHA KV is 69 GB per row at 128K):
    python3 benchmarks/models/bench_decode.py --presets hybrid-8b transformer-8b mamba2-8b \
        --pair hybrid-8b transformer-8b --batches 1 8 --anchor --anchor-batches 1 --json $OUT/decode_8b.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from collections.abc import Callable

import torch

from forge_models import ModelConfig, build_model, get_preset, keep_fp32_names
from forge_models.inference import InferenceEngine
from forge_models.inference.traffic import StepTraffic, decode_step_traffic

H200_COPY_GB_S = 4300.0  # what an H200 copies in practice (HBM3e spec 4.8 TB/s)
BENCH_ONLY_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    # Pure Mamba-2 with the hybrid bench's depth and width (56 layers, d_model 2048, ~1.78B);
    # the anchor's shape. Defined here because only this benchmark uses it.
    "mamba2-2b-bench": lambda: ModelConfig(vocab_size=32000, d_model=2048, pattern="M" * 56),
}
HYBRID, TRANSFORMER = "hybrid-2b-bench", "transformer-2b-bench"


def preset_config(name: str) -> ModelConfig:
    """A preset of forge_models or one of this benchmark's own."""
    return BENCH_ONLY_PRESETS[name]() if name in BENCH_ONLY_PRESETS else get_preset(name)


def to_inference_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype`, except the parameters tagged keep-fp32."""
    keep = keep_fp32_names(model)
    for name, p in model.named_parameters():
        if name not in keep:
            p.data = p.data.to(dtype)
    return model


def synchronize(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_decode_steps(engine: InferenceEngine, batch: int, context: int, steps: int) -> float:
    """Mean ms per decode step of `batch` rows holding `context` tokens (synthetic fill)."""
    rows = engine.bucket_for(batch, engine.buckets)
    engine.prepare(rows)
    engine.buffers.lengths[:rows] = context
    tokens = torch.zeros(rows, dtype=torch.long, device=engine.device)
    for _ in range(3):  # warm-up replays
        tokens = engine.decode_step(tokens).argmax(dim=-1)
    synchronize(engine.device)
    start = time.perf_counter()
    for _ in range(steps):
        tokens = engine.decode_step(tokens).argmax(dim=-1)
    synchronize(engine.device)
    return (time.perf_counter() - start) * 1e3 / steps


def decode_ms(model: torch.nn.Module, context: int, batch: int, steps: int, device: torch.device,
              dtype: torch.dtype) -> tuple[float, dict[str, int]]:
    """ms per decode step after `context` tokens, and the engine's buffer bytes per layer kind."""
    del dtype  # the engine decodes in the model's own dtype
    engine = InferenceEngine(model, max_batch=batch, max_seq_len=context + steps + 8,
                             cuda_graphs=device.type == "cuda")
    return time_decode_steps(engine, batch, context, steps), engine.buffers.nbytes()


def buffer_bytes_estimate(cfg: ModelConfig, batch: int, capacity: int) -> int:
    """Engine buffers plus the attention step's fp32 scores, for the does-it-fit check."""
    traffic = decode_step_traffic(cfg, batch, capacity)
    scores = 4 * batch * cfg.attention.num_heads * capacity * 3  # scores, masked, probabilities
    return traffic.kv_bytes + traffic.state_bytes + scores


def fits(cfg: ModelConfig, batch: int, capacity: int, device: torch.device, fraction: float) -> bool:
    """Whether this point's buffers fit in `fraction` of the free device memory (always on CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return buffer_bytes_estimate(cfg, batch, capacity) < fraction * free


@torch.no_grad()
def time_prefill(model: torch.nn.Module, context: int, device: torch.device) -> float:
    """ms of one packed prefill of a single `context`-token prompt (after one warm-up call)."""
    engine = InferenceEngine(model, max_batch=1, max_seq_len=context + 1, cuda_graphs=False)
    prompt = torch.randint(0, model.config.vocab_size, (context,))
    times = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        engine.prefill([prompt], 1)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def generate_delta_ms(generate: Callable[[int], object], steps: int, device: torch.device) -> float:
    """ms per new token: (a generate of 1 + steps tokens - a generate of 1 token) / steps, medians of 3."""
    generate(1 + steps)  # captures graphs, compiles, autotunes

    def timed(new_tokens: int) -> float:
        samples = []
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            generate(new_tokens)
            synchronize(device)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    return (timed(1 + steps) - timed(1)) * 1e3 / steps


@torch.no_grad()
def anchor_comparison(cfg: ModelConfig, ours: torch.nn.Module, batch: int, steps: int,
                      device: torch.device) -> dict[str, float]:
    """ms per token of mamba_ssm's MambaLMHeadModel (cg=True) and of our engine, timed alike."""
    from mamba_ssm.models.config_mamba import MambaConfig as AnchorConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    m = cfg.mamba2
    anchor_cfg = AnchorConfig(
        d_model=cfg.d_model, d_intermediate=0, n_layer=cfg.num_layers, vocab_size=cfg.vocab_size,
        ssm_cfg={"layer": "Mamba2", "d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expand,
                 "headdim": m.head_dim, "ngroups": m.ngroups, "chunk_size": m.chunk_size},
        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, tie_embeddings=cfg.tie_embeddings)
    theirs = MambaLMHeadModel(anchor_cfg, device=device, dtype=torch.bfloat16).eval()
    prompt_len = 16
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)
    theirs_ms = generate_delta_ms(lambda n: theirs.generate(prompts, max_length=prompt_len + n, cg=True, top_k=1),
                                  steps, device)
    del theirs
    gc.collect()
    torch.cuda.empty_cache()
    engine = InferenceEngine(ours, max_batch=batch, max_seq_len=prompt_len + steps + 2)
    rows = list(prompts.cpu())
    ours_ms = generate_delta_ms(lambda n: engine.generate(rows, max_new_tokens=n), steps, device)
    # ours_speed_over_anchor >= 1: ours decodes at least as fast (issue #15's target).
    return {"anchor_ms_per_token": theirs_ms, "ours_ms_per_token": ours_ms, "ours_speed_over_anchor": theirs_ms / ours_ms}


def speedups(points: list[dict], hybrid_name: str = HYBRID, transformer_name: str = TRANSFORMER) -> list[dict]:
    """Hybrid vs Transformer per (batch, context) where both were measured: measured vs predicted."""
    by_key = {(p["preset"], p["batch"], p["context"]): p for p in points if "ms_per_token" in p}
    rows = []
    for (preset, batch, context), hybrid in sorted(by_key.items()):
        other = by_key.get((transformer_name, batch, context))
        if preset != hybrid_name or other is None:
            continue
        measured = other["ms_per_token"] / hybrid["ms_per_token"]
        predicted = other["traffic"]["total_bytes"] / hybrid["traffic"]["total_bytes"]
        rows.append({"batch": batch, "context": context, "measured_speedup": measured,
                     "predicted_speedup": predicted, "measured_over_predicted": measured / predicted})
    return rows


def measure_point(model: torch.nn.Module, batch: int, context: int, capacity: int, traffic: StepTraffic,
                  args: argparse.Namespace, device: torch.device) -> dict:
    """Latency, throughput and achieved bandwidth of one (batch, context) point."""
    engine = InferenceEngine(model, max_batch=batch, max_seq_len=capacity,
                             cuda_graphs=device.type == "cuda" and not args.no_graphs,
                             compiled_pointwise=device.type == "cuda" and not args.eager_pointwise)
    ms = time_decode_steps(engine, batch, context, args.steps)
    return {"ms_per_token": ms, "tokens_per_s": batch * 1e3 / ms,
            "achieved_gb_s": traffic.total_bytes / (ms * 1e-3) / 1e9,
            "over_floor": ms / traffic.floor_ms(args.bandwidth_gbs), "buffer_bytes": engine.buffers.nbytes()}


def measure_preset(preset: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Every (batch, context) point of one preset, plus its prefill timings."""
    cfg = preset_config(preset)
    model = to_inference_dtype(build_model(cfg, device=device), dtype).eval()
    points = []
    for batch in args.batches:
        for context in args.contexts:
            capacity = context + args.steps + 8
            traffic = decode_step_traffic(cfg, batch, context)
            point = {"preset": preset, "batch": batch, "context": context, "traffic": traffic.as_dict(),
                     "floor_ms": traffic.floor_ms(args.bandwidth_gbs)}
            if not fits(cfg, batch, capacity, device, args.memory_fraction):
                point["skipped"] = "buffers do not fit in memory"
            else:
                try:
                    point.update(measure_point(model, batch, context, capacity, traffic, args, device))
                except torch.cuda.OutOfMemoryError as exc:  # the estimate was short: record and go on
                    point["skipped"] = f"out of memory: {str(exc).splitlines()[0]}"
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            points.append(point)
            print(json.dumps(point), flush=True)
    prefill = []
    for context in args.prefill_contexts:
        row = {"preset": preset, "context": context}
        try:
            ms = time_prefill(model, context, device)
            row.update(prefill_ms=ms, tokens_per_s=context * 1e3 / ms)
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        prefill.append(row)
        print(json.dumps(row), flush=True)
    anchor = []
    if args.anchor and set(cfg.pattern) == {"M"} and device.type == "cuda":  # pure Mamba-2 only
        for batch in args.anchor_batches:
            row = {"preset": preset, "batch": batch}
            try:
                row.update(anchor_comparison(cfg, model, batch, args.steps, device))
            except Exception as exc:  # noqa: BLE001 - mamba_ssm's side failing must not lose our numbers
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            anchor.append(row)
            print(json.dumps(row), flush=True)
    del model
    return {"points": points, "prefill": prefill, "anchor": anchor}


def main() -> None:
    """Time decode per preset, batch and context; print JSON lines and a summary; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=[HYBRID, TRANSFORMER, "mamba2-2b-bench"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[4096, 32768, 131072])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed decode steps per point")
    parser.add_argument("--bandwidth-gbs", type=float, default=H200_COPY_GB_S,
                        help="bandwidth of the traffic floor, GB/s (H200 copies ~4300)")
    parser.add_argument("--memory-fraction", type=float, default=0.85)
    parser.add_argument("--prefill-contexts", nargs="*", type=int, default=[])
    parser.add_argument("--anchor", action="store_true", help="also time mamba_ssm's MambaLMHeadModel (CUDA)")
    parser.add_argument("--anchor-batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--no-graphs", action="store_true", help="eager decode step (to see what the graphs save)")
    parser.add_argument("--eager-pointwise", action="store_true",
                        help="norms, RoPE and softmax unfused (to see what torch.compile saves)")
    parser.add_argument("--pair", nargs=2, default=[HYBRID, TRANSFORMER], metavar=("HYBRID", "TRANSFORMER"),
                        help="the two presets whose speedup is reported")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bandwidth_gbs": args.bandwidth_gbs,
              "torch": torch.__version__, "cuda_graphs": device.type == "cuda" and not args.no_graphs,
              "compiled_pointwise": device.type == "cuda" and not args.eager_pointwise,
              "points": [], "prefill": [], "anchor": []}
    for preset in args.presets:
        part = measure_preset(preset, args, device, dtype)
        gc.collect()  # the preset's model and engines, before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for key in ("points", "prefill", "anchor"):
            result[key] += part[key]
    result["speedups"] = speedups(result["points"], *args.pair)
    print_summary(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def print_summary(result: dict) -> None:
    """One line per point, then the speedups and the anchor, readable in a log."""
    print(f"\n# decode on {result['device']} ({result['date']}), floor at {result['bandwidth_gbs']:.0f} GB/s")
    print("| preset | batch | context | ms/token | tokens/s | model GB/step | achieved GB/s | floor ms | x floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in result["points"]:
        gb = p["traffic"]["total_bytes"] / 1e9
        if "ms_per_token" not in p:
            print(f"| {p['preset']} | {p['batch']} | {p['context']} | {p['skipped']} | | {gb:.2f} | | "
                  f"{p['floor_ms']:.3f} | |")
            continue
        print(f"| {p['preset']} | {p['batch']} | {p['context']} | {p['ms_per_token']:.3f} | {p['tokens_per_s']:.0f} | "
              f"{gb:.2f} | {p['achieved_gb_s']:.0f} | {p['floor_ms']:.3f} | {p['over_floor']:.2f} |")
    for s in result["speedups"]:
        print(f"speedup hybrid/transformer batch {s['batch']} context {s['context']}: measured "
              f"{s['measured_speedup']:.2f}, predicted {s['predicted_speedup']:.2f} "
              f"(measured/predicted {s['measured_over_predicted']:.2f})")
    for a in result["anchor"]:
        if "error" in a:
            print(f"anchor mamba_ssm {a['preset']} batch {a['batch']}: {a['error']}")
            continue
        print(f"anchor mamba_ssm {a['preset']} batch {a['batch']}: theirs {a['anchor_ms_per_token']:.3f} ms/token, "
              f"ours {a['ours_ms_per_token']:.3f}; ours is {a['ours_speed_over_anchor']:.2f}x as fast")
    for p in result["prefill"]:
        if "error" in p:
            print(f"prefill {p['preset']} {p['context']} tokens: {p['error']}")
            continue
        print(f"prefill {p['preset']} {p['context']} tokens: {p['prefill_ms']:.1f} ms ({p['tokens_per_s']:.0f} tok/s)")


if __name__ == "__main__":
    main()
