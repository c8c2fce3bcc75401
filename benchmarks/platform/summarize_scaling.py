"""The scaling table from the pretrain job's own logs: loss per step and tokens/s per GPU.

    python benchmarks/platform/summarize_scaling.py tp1.log tp2.log dp2.log

Layouts are named by file (tp1 = one GPU; tp2 and dp2 = two GPUs). Throughput is the median of
the logged steps after the first three (compilation and autotuning happen there).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

GPUS = {"tp1": 1, "tp2": 2, "dp2": 2}


def read_steps(path: Path) -> dict[int, dict[str, float]]:
    steps = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r"step (\d+): (.*)", line)
        if match:
            fields = dict(kv.split("=", 1) for kv in match.group(2).split() if "=" in kv)
            steps[int(match.group(1))] = {k: float(re.sub(r"\x1b\[[0-9;]*m.*", "", v)) for k, v in fields.items()}
    return steps


def main() -> None:
    runs = {Path(p).stem: read_steps(Path(p)) for p in sys.argv[1:]}
    base = runs.get("tp1", {})
    print(f"{'layout':7} {'GPUs':>4} {'tok/s':>9} {'tok/s/GPU':>10} {'MFU':>6} {'max |loss - tp1| / loss':>24}")
    for name, steps in runs.items():
        timed = [v for k, v in sorted(steps.items()) if k > 3]
        tps = statistics.median(v["tokens_per_s"] for v in timed)
        mfu = statistics.median(v["mfu"] for v in timed)
        diff = max((abs(v["loss"] - base[k]["loss"]) / base[k]["loss"] for k, v in steps.items() if k in base), default=0.0)
        gpus = GPUS.get(name, 1)
        print(f"{name:7} {gpus:>4} {tps:>9,.0f} {tps / gpus:>10,.0f} {mfu:>6.1%} {diff:>24.2e}")
    for name, steps in runs.items():
        print(f"{name} losses: " + " ".join(f"{v['loss']:.4f}" for _, v in sorted(steps.items())))


if __name__ == "__main__":
    main()
