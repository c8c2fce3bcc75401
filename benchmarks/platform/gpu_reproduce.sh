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
#
# MLflow: the device image has none and .carry has no room for it. Before the call above, make one
# call with carry [".carry-mlflow"] (built here by benchmarks/platform/prepare_mlflow_carry.sh) that runs
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-mlflow .carry-mlflow/*.whl
# and make the next call within ~30 s, while the machine is still warm. (Or pass --tracking.backend console.)
set -euo pipefail
source benchmarks/platform/gpu_env.sh
if [ -d /tmp/site-mlflow ]; then export PYTHONPATH="$PYTHONPATH:/tmp/site-mlflow"; fi
if [[ " $* " != *" --tracking.backend console "* ]] && ! python3 -c "import mlflow" 2>/dev/null; then
  echo "gpu_reproduce: no MLflow on this machine: install it first (see this script's header), or pass --tracking.backend console" >&2
  exit 2
fi
# The spec's `autotune_kernels = false` gives mamba_ssm's Triton kernels one config each (no ~2 min of
# autotuning in every run's first step), in this process and in Ray's workers.
work=/tmp/forge-reproduce
mkdir -p "$work" "$out/results"
started=$(date +%s)
python3 -m jobs.reproduce --config jobs/specs/reproduce_recall.toml --output_dir "$work" \
    --results_page "$out/results/reproduction.md" "$@" 2>&1 | tee "$out/reproduce.log" \
    | grep -vE "it/s\]|s/it\]|INFO" | grep -vE "step [0-9]+:" | tail -n 60
echo "== wall time: $(( $(date +%s) - started )) s"
grep -E "training took|evaluation took|\[eval\]" "$out/reproduce.log" | tail -n 40 || true
cp -r "$work/mlflow" "$out/mlflow" 2>/dev/null || true  # the runs, to browse them here with `mlflow ui`
