#!/usr/bin/env bash
# Runs a GPU script in a background session so it can outlive one device call (10 minutes at most):
# the first call starts it and follows its log for up to $WAIT_S seconds; a later call made while the
# machine is still warm (it is given back ~30 s after a call) finds it by NAME and follows it further.
# The script writes its results under its own $OUT (/tmp/forge-bg/NAME/out, kept across calls); each
# call copies that folder and the log into the call's $OUT, so what is done so far always comes back.
#
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_background.sh NAME SCRIPT [ARGS...]
# e.g.  ... gpu_background.sh lengths env MODEL=transformer-2b-bench bash benchmarks/platform/gpu_long_context.sh
set -uo pipefail
source benchmarks/platform/gpu_env.sh
name=$1
shift
work=/tmp/forge-bg/$name
log="$work/log"
wait_s=${WAIT_S:-540}
mkdir -p "$work/out"
if [ ! -f "$work/pid" ]; then
  echo "== starting $name in the background: $*"
  date +%s > "$work/started"
  OUT="$work/out" setsid nohup "$@" > "$log" 2>&1 < /dev/null &
  echo $! > "$work/pid"
fi
pid=$(cat "$work/pid")
deadline=$(( $(date +%s) + wait_s ))
seen=0
while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 10
  lines=$(wc -l < "$log")
  if [ "$lines" -gt "$seen" ]; then
    # Progress without the per-step flood: every line but step lines, then the newest step line.
    sed -n "$((seen + 1)),${lines}p" "$log" | grep -vE "step [0-9]+:|it/s\]|s/it\]" | cut -c1-240
    sed -n "$((seen + 1)),${lines}p" "$log" | grep -E "step [0-9]+:" | tail -n 1 | cut -c1-240
    seen=$lines
  fi
done
elapsed=$(( $(date +%s) - $(cat "$work/started") ))
if kill -0 "$pid" 2>/dev/null; then echo "== $name still running after $elapsed s"; else echo "== $name finished after $elapsed s"; fi
cp -r "$work/out/." "$out/" 2>/dev/null || true
cp "$log" "$out/background-$name.log"  # not $name.log: the script may write that name itself
