#!/usr/bin/env bash
# The small long-context campaign (jobs/specs/long_context_campaign.toml: hybrid-130m, 4K -> 16K -> 32K
# -> 128K) on one GPU. It takes longer than one device call (10 minutes at most), so run it in the
# background with gpu_background.sh: the first call starts it, a second call made while the machine is
# still warm follows it to the end. It leaves the run's small files (progress, manifests' summaries,
# evaluation results) in $OUT; the log comes back as background-campaign.log. Tracking is the console
# backend: the device image has no MLflow server. summarize_campaign.py turns the log into the loss-per-stage plot.
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_background.sh campaign bash benchmarks/platform/gpu_campaign.sh
set -uo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-campaign
mkdir -p "$work"
python3 -m jobs.campaign --config jobs/specs/long_context_campaign.toml --output_dir "$work/run" \
    --tracking.backend console ${EXTRA_ARGS:-}
status=$?
(cd "$work" && find run -name "*.json" -size -2M | tar czf "$out/campaign-files.tgz" -T - 2>/dev/null) || true
exit $status
