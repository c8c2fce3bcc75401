"""The small long-context campaign's figures from its log: the loss-per-stage plot and a table per stage.

    python benchmarks/platform/summarize_campaign.py CAMPAIGN_LOG OUT_PNG

Reads what `jobs.campaign` printed with the console tracking backend (`gpu_campaign.sh` runs it so on
the device machine, which has no MLflow server): each stage's memory plan, its logged steps
(`[stage] step N: loss=...`, printed once or twice by Ray's log forwarding: duplicates are dropped),
and the held-out metrics after each stage's `=== stage '...': evaluating ===` line. The plot is the
same one a campaign logs to its MLflow parent run (`forge_platform.tracking.plots`).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from forge_platform.tracking.plots import plot_loss_per_stage

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP = re.compile(r"\[([\w.-]+)\] step (\d+): (.*)")
PLAN_HEAD = re.compile(r"^stage '([\w.-]+)': (\d+) tokens x micro-batch (\d+), recompute (\w+)")
EVAL_HEAD = re.compile(r"^=== stage '([\w.-]+)': evaluating ===")


def parse(log: str) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, dict], dict[str, dict[str, float]]]:
    """(steps per stage, plan per stage, held-out metrics per stage) from a campaign's console log."""
    steps: dict[str, dict[int, dict[str, float]]] = {}
    plans: dict[str, dict] = {}
    evals: dict[str, dict[str, float]] = {}
    plan_stage = eval_stage = None
    for raw in log.splitlines():
        line = ANSI.sub("", raw).strip()
        if match := STEP.search(line):
            fields = dict(kv.split("=", 1) for kv in match.group(3).split() if "=" in kv)
            steps.setdefault(match.group(1), {})[int(match.group(2))] = {k: float(v) for k, v in fields.items()}
        elif match := PLAN_HEAD.match(line):
            plan_stage = match.group(1)
            plans.setdefault(plan_stage, {"seq_len": int(match.group(2)), "micro_batch": int(match.group(3)),
                                          "recompute": match.group(4), "terms": {}})
        elif plan_stage and (match := re.match(r"^([a-zA-Z() ]+?)\s+([\d.]+) GiB", line)):
            plans[plan_stage]["terms"].setdefault(match.group(1), float(match.group(2)))
        elif match := EVAL_HEAD.match(line):
            eval_stage = match.group(1)
        elif eval_stage and line.startswith("val_loss="):
            evals[eval_stage] = {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split())}
            eval_stage = None
    return steps, plans, evals


def main() -> None:
    log_path, png_path = sys.argv[1:3]
    steps, plans, evals = parse(Path(log_path).read_text(errors="replace"))
    histories = {stage: [(n, v["loss"]) for n, v in sorted(points.items())] for stage, points in steps.items()}
    plot_loss_per_stage(histories, png_path, title="hybrid-130m: 4K pretraining, then 16K, 32K, 128K")
    print("| stage | tokens per row x micro-batch | recompute (auto) | steps | first / last logged loss | "
          "held-out loss | tokens/s (median) | peak GiB | plan GiB | plan / peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for stage, points in steps.items():
        plan = plans.get(stage, {})
        terms = plan.get("terms", {})
        # The plan's allocation: its peak less the allocator's slack and the CUDA context, which
        # torch.cuda.max_memory_allocated (the logged figure) does not see.
        allocation = terms.get("peak (predicted)", 0.0) - terms.get("allocator slack", 0.0) - terms.get("CUDA context", 0.0)
        ordered = [points[n] for n in sorted(points)]
        peak = max(p.get("memory_gib", 0.0) for p in ordered)
        rate = statistics.median(p["tokens_per_s"] for p in ordered[1:] or ordered)
        val = evals.get(stage, {}).get("val_loss", float("nan"))
        print(f"| {stage} | {plan.get('seq_len', '?'):,} x {plan.get('micro_batch', '?')} | {plan.get('recompute', '?')} | "
              f"{max(points)} | {ordered[0]['loss']:.3f} / {ordered[-1]['loss']:.3f} | {val:.3f} | {rate:,.0f} | "
              f"{peak:.2f} | {allocation:.2f} | {allocation / peak:.3f} |")
    print(f"plot: {png_path}")


if __name__ == "__main__":
    main()
