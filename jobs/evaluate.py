"""Evaluate a checkpoint: held-out loss and Phonebook accuracy through real generation.

    python -m jobs.evaluate --checkpoint runs/demo/checkpoints/demo-extend-1024/checkpoint_... \
        --val_manifest runs/demo/data/extend-1024/val/manifest.json \
        --tokenizer runs/demo/tokenizer/tokenizer.model --eval.phonebook_entries 4,16,64
"""

import sys

from forge_platform.cli import job_main
from forge_platform.job_config import EvaluateConfig
from forge_platform.single_jobs import run_evaluate

if __name__ == "__main__":
    sys.exit(job_main(EvaluateConfig, run_evaluate, __doc__))
