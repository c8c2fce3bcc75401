"""Decode latency per token at long context: hybrid vs Transformer.

For each context length the per-layer caches are filled synthetically (KV length set to the
context, Mamba states marked filled) instead of running a prefill: the latency of one decode
step does not depend on the cached values, and this keeps a 128K point cheap. Reported per
point: median ms per generated token (batch `--batch`, bf16 weights with Mamba's A_log, D and
dt_bias kept fp32) and the bytes held by the caches; Mamba state is constant in the context,
the KV cache grows linearly.

Laptop (CPU smoke test of the script):
    python benchmarks/models/bench_decode.py --presets hybrid-debug --device cpu --contexts 64 256 --steps 3
One GPU:
    source .carry/bootstrap.sh && python3 benchmarks/models/bench_decode.py \
        --presets hybrid-2b-bench transformer-2b-bench --contexts 4096 32768 131072 --json $OUT/decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from forge_models import build_model, get_preset, keep_fp32_names
from forge_models.cache import InferenceCache, KVCache, MambaState


def to_inference_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype`, except the parameters tagged keep-fp32."""
    keep = keep_fp32_names(model)
    for name, p in model.named_parameters():
        if name not in keep:
            p.data = p.data.to(dtype)
    return model


def fill_cache(cache: InferenceCache, context: int) -> None:
    """Pretend `context` tokens were consumed: KV length = context, Mamba states filled."""
    for state in cache.layers:
        if isinstance(state, KVCache):
            state.length = context
        elif isinstance(state, MambaState):
            state.filled = True
    cache.offset = context


@torch.no_grad()
def decode_ms(model: torch.nn.Module, context: int, batch: int, steps: int, device: torch.device,
              dtype: torch.dtype) -> tuple[float, dict[str, int]]:
    """Median ms per decode step after `context` tokens, and the cache bytes per layer kind."""
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        cache = model.allocate_cache(batch, context + 1, device=device, dtype=dtype)
        fill_cache(cache, context)
        token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(token, cache=cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[2:]), cache.nbytes()


def main() -> None:
    """Time one decode step per preset and context; print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["hybrid-2b-bench", "transformer-2b-bench"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[4096, 32768, 131072])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = []
    for preset in args.presets:
        model = to_inference_dtype(build_model(get_preset(preset), device=device), dtype).eval()
        for context in args.contexts:
            ms, nbytes = decode_ms(model, context, args.batch, args.steps, device, dtype)
            results.append({"preset": preset, "context": context, "batch": args.batch,
                            "ms_per_token": ms, "cache_bytes": nbytes})
            print(json.dumps(results[-1]), flush=True)
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
