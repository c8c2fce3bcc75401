#!/usr/bin/env bash
# Tensor and data parallelism over NCCL on 2 GPUs: the pretrain job at TP=1 (one GPU), TP=2 and
# DP=2 (ZeRO-2) on the same data and the same global batch, with per-step losses and tokens/s.
#
# On a 2-GPU device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_scaling.sh
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-gpu
mkdir -p "$work"
preset=${PRESET:-hybrid-2b-anchor}
steps=${STEPS:-8}
# EXTRA_ARGS: more job overrides, e.g. a small learning rate for a loss-agreement run:
#   PRESET=hybrid-130m EXTRA_ARGS="--stage.optim.lr 1e-5 --stage.optim.min_lr 1e-5" bash benchmarks/platform/gpu_scaling.sh

if [ ! -f "$work/data/manifest.json" ]; then
  echo "== packing stdlib sources into 4096-token rows"
  python3 -m jobs.tokenize --config jobs/specs/tokenize.toml \
      --data.inputs "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
      --data.include_suffixes .py --data.output_dir "$work/data" --data.packing.seq_len 4096 \
      --data.tokenizer.sample_bytes 8000000 --data.shard_tokens 16777216 2>&1 | tail -n 2
fi

# --ray_num_cpus 12: the local Ray gets 4 logical CPUs by default, too few for 2 workers x 4 CPUs
# (the 2-GPU layouts then wait forever for their worker group; Ray Train retries that without limit).
# name  workers  tp  micro-batch  accumulation   (every layout reads 4 sequences per optimizer step)
layouts="tp1 1 1 2 2
tp2 2 2 2 2
dp2 2 1 2 1"
only=${LAYOUTS:-tp1 tp2 dp2}  # a subset, e.g. LAYOUTS=dp2, when one device call cannot hold all three
while read -r name workers tp mb acc; do
  [[ " $only " == *" $name "* ]] || continue
  echo "== $name: $workers GPU(s), tensor_parallel=$tp, micro-batch $mb x accumulation $acc"
  python3 -m jobs.pretrain --config jobs/specs/pretrain.toml --name "scaling-$name" --output_dir "$work/$name" \
      --train_manifest "$work/data/manifest.json" --tracking.backend console --ray_num_cpus 12 \
      --model.preset "$preset" --model.vocab_size 32000 --model.compile_pointwise true \
      --parallel.num_workers "$workers" --parallel.tensor_parallel "$tp" --parallel.use_gpu true \
      --parallel.cpus_per_worker 4 --parallel.max_failures 0 --parallel.peak_tflops 0 \
      --stage.seq_len 4096 --stage.train.steps "$steps" --stage.train.micro_batch_size "$mb" \
      --stage.train.grad_accum_steps "$acc" --stage.train.precision bf16 --stage.train.zero_stage 2 \
      --stage.train.log_every 1 --stage.checkpoint.every_steps 100000 --stage.checkpoint.save_final false \
      --stage.optim.warmup_tokens 0 ${EXTRA_ARGS:-} > "$out/$name.log" 2>&1 || { tail -n 40 "$out/$name.log"; exit 1; }
  grep -E "step [0-9]+:" "$out/$name.log" | sort -u | tail -n 3
done <<< "$layouts"
logs=(); for name in tp1 tp2 dp2; do [ -f "$out/$name.log" ] && logs+=("$out/$name.log"); done
python3 benchmarks/platform/summarize_scaling.py "${logs[@]}" | tee "$out/scaling.txt"
