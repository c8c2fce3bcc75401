#!/usr/bin/env bash
# Platform overhead on one GPU: the bare training-step benchmark and the same model trained by the
# pretrain job (Ray Train + DeepSpeed ZeRO-2, bf16 autocast) in the same call; the platform's own
# tokens/s and MFU are compared with the bare figure.
#
# On the device machine, from the repo root, after `bash ../shared/device/prepare_carry.sh` here:
#     source .carry/bootstrap.sh && bash benchmarks/platform/gpu_overhead.sh
set -euo pipefail
source benchmarks/platform/gpu_env.sh
work=/tmp/forge-gpu
mkdir -p "$work"
steps=${STEPS:-12}

if [ ! -f "$work/data/manifest.json" ]; then
echo "== packing stdlib sources into 4096-token rows"
python3 -m jobs.tokenize --config jobs/specs/tokenize.toml --data.inputs "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
    --data.include_suffixes .py --data.output_dir "$work/data" --data.packing.seq_len 4096 \
    --data.tokenizer.sample_bytes 8000000 --data.shard_tokens 16777216 2>&1 | tail -n 3

fi
# The platform trains on packed documents (resets in every mixer, a block-diagonal attention mask);
# the bare step gets rows cut into documents of the data's mean length, so both do the same work.
doc_len=$(python3 -c "import json; c=json.load(open('$work/data/manifest.json'))['counts']; print(round(c['tokens_tokenized'] / c['docs_packed']))")
if [ -z "${SKIP_BARE:-}" ]; then
echo "== bare model benchmark (hybrid-2b-anchor, micro-batch x accumulation ${MB:-2}x${ACC:-2}, fast path; one document per row, then documents of $doc_len tokens)"
python3 benchmarks/models/bench_train.py --runs "hybrid-2b-anchor:${MB:-2}x${ACC:-2}:fast" --baseline "hybrid-2b-anchor:${MB:-2}x${ACC:-2}:fast" \
    --steps 6 --json "$work/bare-rows.json" 2>&1 | tail -n 2
python3 benchmarks/models/bench_train.py --runs "hybrid-2b-anchor:${MB:-2}x${ACC:-2}:fast" --baseline "hybrid-2b-anchor:${MB:-2}x${ACC:-2}:fast" \
    --steps 6 --doc-len "$doc_len" --json "$work/bare.json" 2>&1 | tail -n 2
fi
for zero in ${ZERO_STAGES:-2}; do
echo "== the platform: jobs.pretrain on 1 GPU worker, ZeRO-$zero, bf16"
python3 -m jobs.pretrain --config jobs/specs/pretrain.toml --name gpu-overhead --output_dir "$work/run" \
    --train_manifest "$work/data/manifest.json" --tracking.backend console \
    --model.preset hybrid-2b-anchor --model.vocab_size 32000 --model.compile_pointwise true \
    --parallel.num_workers 1 --parallel.use_gpu true --parallel.cpus_per_worker 4 --parallel.max_failures 0 \
    --stage.seq_len 4096 --stage.train.steps "$steps" --stage.train.micro_batch_size "${MB:-2}" --stage.train.grad_accum_steps "${ACC:-2}" \
    --stage.train.precision bf16 --stage.train.zero_stage "$zero" --stage.train.log_every 1 \
    --stage.checkpoint.every_steps 100000 --stage.checkpoint.save_final false --stage.optim.warmup_tokens 0 2>&1 | tee "$out/platform-zero$zero.log" \
    | grep -E "step [0-9]+:|final loss|Error|error" | tail -n 20
python3 benchmarks/platform/summarize_overhead.py "$work/bare.json" "$out/platform-zero$zero.log" "Ray Train + DeepSpeed, zero_stage=$zero" | tee -a "$out/summary.txt"
done
cp "$work/bare.json" "$work/bare-rows.json" "$out/" 2>/dev/null || true
