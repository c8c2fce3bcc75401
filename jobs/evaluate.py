"""Evaluate a checkpoint: held-out loss, Phonebook, RULER, perplexity by position, lm-eval tasks.

    # laptop (CPU, reference path); the tokenizer is found in the campaign folder above the checkpoint
    python -m jobs.evaluate --checkpoint runs/demo/checkpoints/demo-extend-1024/checkpoint_000000 \
        --val_manifest runs/demo/data/extend-1024/val/manifest.json \
        --suites validation,phonebook,ruler,ppl,lm-eval:forge_phonebook \
        --eval.phonebook_lengths 512,1024 --eval.ruler_lengths 1024 --eval.ppl_max_position 2048

    # a stage's MLflow run: its checkpoint and held-out data from the run's tags (the ppl suite's
    # longer rows too, when the stage packed them: --ppl_manifest names them by hand); the metrics
    # are added to that run at the checkpoint's step
    python -m jobs.evaluate --run_id 3f2a... --tracking_uri http://127.0.0.1:5000 --suites phonebook,ruler \
        --eval.phonebook_lengths 4096,16384

    # one node with a GPU: the same command runs there on the kernel path (bf16)
    # a cluster: `ray job submit --working-dir . -- python -m jobs.evaluate ...` runs the evaluation
    # as a Ray task that takes one GPU; the checkpoint, its tokenizer and the held-out data may be on
    # an object store (credentials from the environment; docs/deploy.md), e.g.
    python -m jobs.evaluate --checkpoint s3://bucket/runs/demo/checkpoints/demo-extend-1024/step_00000040 \
        --val_manifest s3://bucket/runs/demo/data/extend-1024/val/manifest.json --suites validation,phonebook

Bad input (no tokenizer, an unknown suite or task, a length the memory cannot hold, characters the
tokenizer cannot encode, a checkpoint or manifest that is not there, a store that refuses the
credentials or has no such bucket) is one line on stderr and exit code 2. `--help` lists every field.
"""

import sys

from forge_platform.evaluation import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main(__doc__))
