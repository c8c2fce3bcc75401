#!/usr/bin/env bash
# Context parallelism over NCCL on 2 GPUs (issue #19 runs it): the pretrain job on the same 128K-token
# rows and the same global batch (2 rows per optimizer step) as
#   one   1 GPU                    micro-batch 1 x accumulation 2   (the reference)
#   cp2   2 GPUs, context_parallel 2, micro-batch 1 x accumulation 2   (each GPU holds 64K tokens of each row)
#   tp2   2 GPUs, tensor_parallel 2 with sequence parallelism, micro-batch 1 x accumulation 2
# with per-step losses (cp2 and tp2 must follow `one` to bf16 rounding: the same rows, the same math),
# tokens/s, MFU and peak memory beside the memory plan's prediction (the job prints its plan first).
# $MODEL (default hybrid-2b-anchor), bf16 autocast, compiled norm/MLP, recompute auto.
#
# On a 2-GPU device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_context_parallel.sh
# Expected: cp2's and tp2's losses within ~1e-2 relative of one's (bf16; on CPU in fp32 they agree to
# 1e-5: tests/platform/test_context_parallel.py); their peak memory well under one's (block inputs halve).
# Also for issue #13's single-GPU no-regression: the `one` row is the unchanged single-GPU path (cp 1
# installs nothing); compare its tokens/s with gpu_long_context.sh's 128K row from before.
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-cp
mkdir -p "$work"
model=${MODEL:-hybrid-2b-anchor}
seq_len=${SEQ_LEN:-131072}
steps=${STEPS:-6}

if [ ! -f "$work/data$seq_len/manifest.json" ]; then
  echo "== packing the stdlib's sources (one file = one document) at $seq_len tokens per row"
  python3 - "$work" "$seq_len" <<'PY'
import sys, sysconfig
from forge_platform.cluster import ensure_ray
from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline, train_tokenizer
work, n = sys.argv[1], int(sys.argv[2])
stdlib = sysconfig.get_paths()["stdlib"]
ensure_ray(16, workspace=work)
tok = train_tokenizer(TokenizerConfig(model_type="bpe", vocab_size=32000, sample_bytes=8_000_000, show_progress=False),
                      [stdlib], f"{work}/tokenizer", include_suffixes=[".py"])
cfg = DataPipelineConfig(inputs=[stdlib], output_dir=f"{work}/data{n}", include_suffixes=[".py"],
                         tokenizer=TokenizerConfig(model_path=tok), packing=PackingConfig(seq_len=n),
                         shard_tokens=max(16_777_216, n), num_tokenize_actors=8)
print(f"packed {n}: {run_pipeline(cfg).counts['rows']} rows")
PY
fi

# --ray_num_cpus 12: the local Ray gets 4 logical CPUs by default, too few for 2 workers x 4 CPUs.
# name  workers  tp  cp  sequence_parallel
layouts="one 1 1 1 false
cp2 2 1 2 false
tp2 2 2 1 true"
only=${LAYOUTS:-one cp2 tp2}  # a subset, e.g. LAYOUTS=cp2, when one device call cannot hold all three
while read -r name workers tp cp sp; do
  [[ " $only " == *" $name "* ]] || continue
  log="$out/cp-$name.log"
  echo "== $name: $workers GPU(s), tensor_parallel=$tp, context_parallel=$cp, sequence_parallel=$sp, $seq_len tokens per row"
  python3 -m jobs.pretrain --config jobs/specs/pretrain.toml --name "cp-$name" --output_dir "$work/$name" \
      --train_manifest "$work/data$seq_len/manifest.json" --tracking.backend console --ray_num_cpus 12 \
      --model.preset "$model" --model.vocab_size 32000 --model.compile_pointwise true \
      --parallel.num_workers "$workers" --parallel.tensor_parallel "$tp" --parallel.context_parallel "$cp" \
      --parallel.sequence_parallel "$sp" \
      --parallel.use_gpu true --parallel.cpus_per_worker 4 --parallel.max_failures 0 --parallel.peak_tflops 0 \
      --stage.seq_len "$seq_len" --stage.train.steps "$steps" --stage.train.micro_batch_size 1 \
      --stage.train.grad_accum_steps 2 --stage.train.precision bf16 --stage.train.zero_stage 2 \
      --stage.train.recompute auto --stage.train.log_every 1 --stage.checkpoint.every_steps 100000 \
      --stage.checkpoint.save_final false --stage.optim.warmup_tokens 0 ${EXTRA_ARGS:-} \
      > "$log" 2>&1 || { echo "   ($name failed: see $log)"; tail -n 20 "$log"; }
  grep -E "peak \(predicted\)|step [0-9]+:" "$log" | sort -u | tail -n 3 || true
done <<< "$layouts"

python3 - "$out" <<'PY' | tee "$out/context_parallel.txt"
import statistics, sys
from pathlib import Path
sys.path.insert(0, "benchmarks/platform")
from summarize_scaling import read_steps
out = Path(sys.argv[1])
gpus = {"one": 1, "cp2": 2, "tp2": 2}
runs = {n: read_steps(out / f"cp-{n}.log") for n in gpus if (out / f"cp-{n}.log").exists()}
base = runs.get("one", {})
print(f"{'layout':7} {'GPUs':>4} {'tok/s':>9} {'tok/s/GPU':>10} {'MFU':>6} {'peak GiB':>9} {'max |loss - one| / loss':>24}")
for name, steps in runs.items():
    timed = [v for k, v in sorted(steps.items()) if k > 2] or list(steps.values())
    if not timed:
        print(f"{name:7} (no steps logged)"); continue
    tps = statistics.median(v["tokens_per_s"] for v in timed)
    mfu = statistics.median(v["mfu"] for v in timed)
    mem = max(v.get("memory_gib", 0.0) for v in timed)
    diff = max((abs(v["loss"] - base[k]["loss"]) / base[k]["loss"] for k, v in steps.items() if k in base), default=0.0)
    print(f"{name:7} {gpus[name]:>4} {tps:>9,.0f} {tps / gpus[name]:>10,.0f} {mfu:>6.1%} {mem:>9.1f} {diff:>24.2e}")
for name, steps in runs.items():
    print(f"{name} losses: " + " ".join(f"{v['loss']:.4f}" for _, v in sorted(steps.items())))
PY
