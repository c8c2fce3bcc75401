#!/usr/bin/env bash
# The pretrain job (Ray Train + DeepSpeed, the job users submit) at 4K, 16K, 32K, 64K and 128K tokens per row
# on one GPU: $MODEL (default hybrid-2b-anchor), bf16 autocast, compiled norm/MLP, chunked loss; 4K at
# micro-batch 4, longer rows one per step; recompute $RECOMPUTE (default auto: the memory plan picks the
# fastest mode that fits). Each length's log goes to $OUT as it finishes (the job prints its memory plan
# first); summarize_lengths.py prints the table (tokens/s, MFU, peak memory beside the plan's, ratio to 4K).
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` (--full) here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_long_context.sh
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-long
mkdir -p "$work"
lengths=${LENGTHS:-"4096 131072 32768 16384 65536"}
model=${MODEL:-hybrid-2b-anchor}
recompute=${RECOMPUTE:-auto}
steps_short=${STEPS:-8}

echo "== packing the stdlib's sources (one file = one document) at $lengths tokens per row"
python3 - "$work" $lengths <<'PY'
import sys, sysconfig, dataclasses
from forge_platform.cluster import ensure_ray
from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline, train_tokenizer
work, lengths = sys.argv[1], [int(n) for n in sys.argv[2:]]
stdlib = sysconfig.get_paths()["stdlib"]
ensure_ray(16, workspace=work)
tok = train_tokenizer(TokenizerConfig(model_type="bpe", vocab_size=32000, sample_bytes=8_000_000, show_progress=False),
                      [stdlib], f"{work}/tokenizer", include_suffixes=[".py"])
for n in lengths:
    if __import__("os").path.exists(f"{work}/data{n}/manifest.json"):
        continue
    cfg = DataPipelineConfig(inputs=[stdlib], output_dir=f"{work}/data{n}", include_suffixes=[".py"],
                             tokenizer=TokenizerConfig(model_path=tok), packing=PackingConfig(seq_len=n),
                             shard_tokens=max(16_777_216, n), num_tokenize_actors=8)
    m = run_pipeline(cfg)
    print(f"packed {n}: {m.counts['rows']} rows")
PY

for n in $lengths; do
  if [ "$n" -le 4096 ]; then mb=4; else mb=1; fi
  steps=$(( n >= 131072 ? steps_short - 2 : steps_short ))
  log="$out/platform-$model-$n.log"
  echo "== jobs.pretrain $model at $n tokens per row: micro-batch $mb, recompute $recompute, $steps steps"
  python3 -m jobs.pretrain --config jobs/specs/pretrain.toml --name "long-$n" --output_dir "$work/run$n" \
      --train_manifest "$work/data$n/manifest.json" --tracking.backend console \
      --model.preset "$model" --model.vocab_size 32000 --model.compile_pointwise true \
      --parallel.num_workers 1 --parallel.use_gpu true --parallel.cpus_per_worker 4 --parallel.max_failures 0 \
      --stage.seq_len "$n" --stage.train.steps "$steps" --stage.train.micro_batch_size "$mb" \
      --stage.train.recompute "$recompute" --stage.train.precision bf16 --stage.train.log_every 1 \
      --stage.checkpoint.every_steps 100000 --stage.checkpoint.save_final false --stage.optim.warmup_tokens 0 \
      > "$log" 2>&1 || echo "   (the run at $n failed: see $log)"
  grep -E "peak \(predicted\)|step [0-9]+:|final loss|Error|error" "$log" | tail -n 4 || true
done
python3 benchmarks/platform/summarize_lengths.py "$out" "$model" $lengths | tee "$out/summary-$model.txt"
