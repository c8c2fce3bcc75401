"""Extend a model's context (4K -> 16K -> 32K -> 128K): a stage that starts from given weights.

    python -m jobs.extend_context --config jobs/specs/extend_context_16k.toml \
        --init_weights runs/pretrain/checkpoints/.../checkpoint_... --train_manifest runs/data16k/manifest.json

On a cluster, prefix with `ray job submit --working-dir . --`. For the whole chain in one job,
use `python -m jobs.campaign` with one `[[stages]]` per length (init_from_previous = true).
"""

import sys

from forge_platform.cli import job_main
from forge_platform.job_config import PretrainConfig
from forge_platform.single_jobs import run_extend_context

if __name__ == "__main__":
    sys.exit(job_main(PretrainConfig, run_extend_context, __doc__))
