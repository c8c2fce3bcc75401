#!/usr/bin/env bash
# The small long-context campaign (jobs/specs/long_context_campaign.toml: hybrid-130m, 4K -> 16K -> 32K
# -> 128K) on one GPU, in a background session so it can outlive one device call (10 minutes at most):
# the first call starts it and follows it for up to $WAIT_S seconds; a second call made while the
# machine is still warm follows it to the end. Each call leaves the log and the run's small files
# (progress, manifests' summaries, evaluation results) in $OUT. Tracking is the console backend: the
# device image has no MLflow server. summarize_campaign.py turns the log into the loss-per-stage plot.
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_campaign.sh
set -uo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-campaign
mkdir -p "$work"
log="$work/campaign.log"
wait_s=${WAIT_S:-540}
if [ ! -f "$work/pid" ]; then
  echo "== starting the campaign (log: $log)"
  date +%s > "$work/started"
  setsid nohup python3 -m jobs.campaign --config jobs/specs/long_context_campaign.toml \
      --output_dir "$work/run" --tracking.backend console ${EXTRA_ARGS:-} > "$log" 2>&1 < /dev/null &
  echo $! > "$work/pid"
fi
pid=$(cat "$work/pid")
deadline=$(( $(date +%s) + wait_s ))
seen=0
while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 10
  lines=$(wc -l < "$log")
  if [ "$lines" -gt "$seen" ]; then
    sed -n "$((seen + 1)),${lines}p" "$log" | grep -vE "step [0-9]+:" | grep -E "stage|Stage|val_|phonebook|loss|rows|plan|Error|error|documents|vocabulary" | cut -c1-220
    sed -n "$((seen + 1)),${lines}p" "$log" | grep -E "step [0-9]+:" | tail -n 1 | cut -c1-220
    seen=$lines
  fi
done
if kill -0 "$pid" 2>/dev/null; then
  echo "== still running after $(( $(date +%s) - $(cat "$work/started") )) s"
else
  echo "== finished after $(( $(date +%s) - $(cat "$work/started") )) s (whole campaign, from its start)"
  tail -n 30 "$log"
fi
cp "$log" "$out/campaign.log"
(cd "$work" && find run -name "*.json" -size -2M | tar czf "$out/campaign-files.tgz" -T - 2>/dev/null) || true
