"""Platform overhead: the pretrain job's own tokens/s and MFU against the bare benchmark's.

    python benchmarks/platform/summarize_overhead.py BARE_JSON PLATFORM_LOG

The platform figure is the median over the logged steps after the first three (compilation and
autotuning happen there); the bare figure is bench_train.py's median of its timed steps.
"""

from __future__ import annotations

import json
import re
import statistics
import sys


def main() -> None:
    bare_path, log_path = sys.argv[1:3]
    bare = json.load(open(bare_path))
    runs = bare["runs"] if isinstance(bare, dict) and "runs" in bare else bare
    bare_run = runs[0] if isinstance(runs, list) else next(iter(runs.values()))
    bare_tps = float(bare_run["tokens_per_s"])
    steps = {}
    for line in open(log_path, errors="replace"):
        match = re.search(r"step (\d+): (.*)", line)
        if match:
            fields = dict(kv.split("=", 1) for kv in match.group(2).split() if "=" in kv)
            steps[int(match.group(1))] = {k: float(re.sub(r"\x1b\[[0-9;]*m.*", "", v)) for k, v in fields.items()}
    timed = [v for k, v in sorted(steps.items()) if k > 3]
    if not timed:
        raise SystemExit(f"no timed steps in {log_path}")
    tps = statistics.median(v["tokens_per_s"] for v in timed)
    mfu = statistics.median(v["mfu"] for v in timed)
    print(f"bare model step: {bare_tps:,.0f} tokens/s")
    label = sys.argv[3] if len(sys.argv) > 3 else "Ray Train + DeepSpeed"
    print(f"platform ({label}): {tps:,.0f} tokens/s, MFU {mfu:.1%} (forge_models.flops incl. scan)")
    print(f"platform / bare: {tps / bare_tps:.3f}  (overhead {1 - tps / bare_tps:+.1%})")
    print(f"final loss {timed[-1]['loss']:.4f}, peak memory {max(v['memory_gib'] for v in timed):.1f} GiB")


if __name__ == "__main__":
    main()
