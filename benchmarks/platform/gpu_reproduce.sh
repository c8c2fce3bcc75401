#!/usr/bin/env bash
# The reproduction study (issue #18) on one GPU, through the job users submit (`jobs.reproduce`): Mamba-2,
# a Transformer and a Mamba-2-Hybrid of matched size, 3 seeds each, the hybrid and Mamba-2 also without
# document resets (jobs/specs/reproduce_recall.toml; budgeted at ~20 GPU-minutes, so it outlives one
# device call: run it through gpu_background.sh and follow it across calls). The results page, its plots
# and the MLflow store come back under $OUT; `study_progress.json` lets a rerun skip the finished runs.
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && WAIT_S=540 bash benchmarks/platform/gpu_background.sh reproduce \
#         bash benchmarks/platform/gpu_reproduce.sh
# Extra arguments go to the job (e.g. --seeds 0 --stage.train.steps 300 for a first look).
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-reproduce
mkdir -p "$work" "$out/results"
started=$(date +%s)
python3 -m jobs.reproduce --config jobs/specs/reproduce_recall.toml --output_dir "$work" \
    --results_page "$out/results/reproduction.md" "$@" 2>&1 | tee "$out/reproduce.log" \
    | grep -vE "it/s\]|s/it\]|INFO" | grep -vE "step [0-9]+:" | tail -n 60
echo "== wall time: $(( $(date +%s) - started )) s"
grep -E "training took|evaluation took|\[eval\]" "$out/reproduce.log" | tail -n 40 || true
cp -r "$work/mlflow" "$out/mlflow" 2>/dev/null || true  # the runs, to browse them here with `mlflow ui`
