"""The pretrain job's own figures per row length, from the logs gpu_long_context.sh leaves.

    python benchmarks/platform/summarize_lengths.py OUT_DIR MODEL_PRESET 4096 16384 ...

Per length: median tokens/s and MFU (against the matmul rate the job measured on the device) over
the logged steps after the first two (compilation, autotuning), MFU against the H100/H200 bf16
datasheet figure (989 TFLOP/s dense), the recompute mode the memory plan chose, peak memory
(torch's max allocated) beside the plan's predicted allocation, and tokens/s relative to the first
length given.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from forge_models import get_preset
from forge_models.flops import training_flops_per_token

SPEC_TFLOPS = 989.0


def steps_of(log: Path) -> dict[int, dict[str, float]]:
    steps = {}
    for line in log.read_text(errors="replace").splitlines():
        match = re.search(r"step (\d+): (.*)", line)
        if match:
            fields = dict(kv.split("=", 1) for kv in match.group(2).split() if "=" in kv)
            steps[int(match.group(1))] = {k: float(re.sub(r"\x1b\[[0-9;]*m.*", "", v)) for k, v in fields.items()}
    return steps


def plan_of(log: Path) -> tuple[str, float]:
    """(recompute mode, predicted allocation in GiB) from the memory plan the job printed."""
    text = log.read_text(errors="replace")
    mode = re.search(r"recompute (\w+); peak", text)
    terms = re.findall(r"^  (.+?)\s+([0-9.]+) GiB$", text, flags=re.M)
    allocated = sum(float(v) for k, v in terms if k.strip() not in ("allocator slack", "CUDA context"))
    return (mode.group(1) if mode else "?"), allocated


def main() -> None:
    out, model, lengths = Path(sys.argv[1]), sys.argv[2], [int(n) for n in sys.argv[3:]]
    cfg = get_preset(model)
    base = None
    print(f"{model}:")
    print("| tokens per row | recompute | tokens/s | MFU (measured matmul) | MFU (989 TFLOP/s) | peak GiB "
          "| plan GiB | plan / peak | / first length |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in lengths:
        log = out / f"platform-{model}-{n}.log"
        timed = [v for k, v in sorted(steps_of(log).items()) if k > 2] if log.exists() else []
        if not timed:
            print(f"| {n:,} | | failed or no steps (see {log.name}) | | | | | | |")
            continue
        mode, planned = plan_of(log)
        tps = statistics.median(v["tokens_per_s"] for v in timed)
        base = base or tps
        spec = tps * training_flops_per_token(cfg, n) / (SPEC_TFLOPS * 1e12)
        peak = max(v["memory_gib"] for v in timed)
        print(f"| {n:,} | {mode} | {tps:,.0f} | {statistics.median(v['mfu'] for v in timed):.1%} | {spec:.1%} | "
              f"{peak:.1f} | {planned:.1f} | {planned / peak:.3f} | {tps / base:.3f} |")


if __name__ == "__main__":
    main()
