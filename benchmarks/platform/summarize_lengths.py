"""The pretrain job's own figures per row length, from the logs gpu_long_context.sh leaves.

    python benchmarks/platform/summarize_lengths.py OUT_DIR 4096 16384 ...

Per length: median tokens/s and MFU (against the matmul rate the job measured on the device) over
the logged steps after the first two (compilation, autotuning), MFU against the H100/H200 bf16
datasheet figure (989 TFLOP/s dense), peak memory, and tokens/s relative to the first length given.
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


def main() -> None:
    out, lengths = Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
    cfg = get_preset("hybrid-2b-anchor")
    base = None
    print("| tokens per row | tokens/s | MFU (measured matmul) | MFU (989 TFLOP/s) | peak GiB | / first length |")
    print("|---|---|---|---|---|---|")
    for n in lengths:
        log = out / f"platform-{n}.log"
        timed = [v for k, v in sorted(steps_of(log).items()) if k > 2] if log.exists() else []
        if not timed:
            print(f"| {n:,} | failed or no steps (see {log.name}) | | | | |")
            continue
        tps = statistics.median(v["tokens_per_s"] for v in timed)
        base = base or tps
        spec = tps * training_flops_per_token(cfg, n) / (SPEC_TFLOPS * 1e12)
        print(f"| {n:,} | {tps:,.0f} | {statistics.median(v['mfu'] for v in timed):.1%} | {spec:.1%} | "
              f"{max(v['memory_gib'] for v in timed):.1f} | {tps / base:.3f} |")


if __name__ == "__main__":
    main()
