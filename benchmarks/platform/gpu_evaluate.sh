#!/usr/bin/env bash
# The evaluation suites at long context on one GPU, through the job users submit (`jobs.evaluate`):
# a small hybrid ($MODEL, default hybrid-130m) is first trained for $STEPS steps at 4K tokens per row by
# `jobs.pretrain` on the stdlib's sources (one file = one document), then evaluated with
# validation, Phonebook, RULER and perplexity by position at $LENGTHS tokens. Each suite's wall time
# is on stderr ("[eval] <suite>: N s"); the log (metrics JSON at its end) goes to $OUT.
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_evaluate.sh
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-eval
mkdir -p "$work"
model=${MODEL:-hybrid-130m}
steps=${STEPS:-200}
lengths=${LENGTHS:-4096,16384,32768,131072}

echo "== packing the stdlib's sources into 4K rows (train) and 128K rows (held-out long documents)"
python3 - "$work" <<'PY'
import os, sys, sysconfig
from forge_platform.cluster import ensure_ray
from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline, train_tokenizer
work = sys.argv[1]
stdlib = sysconfig.get_paths()["stdlib"]
ensure_ray(16, workspace=work)
tok = train_tokenizer(TokenizerConfig(model_type="bpe", vocab_size=32000, sample_bytes=8_000_000, show_progress=False),
                      [stdlib], f"{work}/tokenizer", include_suffixes=[".py"])
for n in (4096, 131072):
    if not os.path.exists(f"{work}/data{n}/manifest.json"):
        cfg = DataPipelineConfig(inputs=[stdlib], output_dir=f"{work}/data{n}", include_suffixes=[".py"],
                                 tokenizer=TokenizerConfig(model_path=tok), packing=PackingConfig(seq_len=n),
                                 shard_tokens=max(16_777_216, n), num_tokenize_actors=8)
        print(f"packed {n}: {run_pipeline(cfg).counts['rows']} rows")
PY
tokenizer=$(find "$work/tokenizer" -name "*.model" | head -n 1)

echo "== jobs.pretrain $model: $steps steps at 4K x 8 rows"
python3 -m jobs.pretrain --config jobs/specs/pretrain.toml --name eval-model --output_dir "$work/run" \
    --train_manifest "$work/data4096/manifest.json" --tracking.backend console \
    --model.preset "$model" --model.vocab_size 32000 --model.compile_pointwise true \
    --parallel.num_workers 1 --parallel.use_gpu true --parallel.cpus_per_worker 4 --parallel.max_failures 0 \
    --stage.seq_len 4096 --stage.train.steps "$steps" --stage.train.micro_batch_size 8 \
    --stage.train.precision bf16 --stage.train.log_every 25 --stage.checkpoint.every_steps 100000 \
    --stage.checkpoint.save_final true > "$out/eval-pretrain.log" 2>&1
grep -E "step [0-9]+:|final loss|took" "$out/eval-pretrain.log" | tail -n 4
checkpoint=$(dirname "$(find "$work/run" -name model.pt | sort | tail -n 1)")

echo "== jobs.evaluate $checkpoint at $lengths tokens"
python3 -m jobs.evaluate --checkpoint "$checkpoint" --tokenizer "$tokenizer" \
    --val_manifest "$work/data131072/manifest.json" --suites validation,phonebook,ruler,ppl \
    --eval.val_batches 2 --eval.phonebook_lengths "$lengths" --eval.phonebook_queries 4 \
    --eval.ruler_lengths "$lengths" --eval.ruler_samples 2 --eval.ruler_depths 0.0,0.5,1.0 \
    --eval.ppl_rows 2 --eval.ppl_bucket 4096 --eval.ppl_max_position 131072 \
    2>&1 | tee "$out/eval.log" | grep -vE "it/s\]|s/it\]" | tail -n 40
