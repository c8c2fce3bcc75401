"""Tokenize and pack raw text into Parquet shards with Ray Data, keeping document boundaries.

    python -m jobs.tokenize --config jobs/specs/tokenize.toml \
        --data.inputs datasets/tinyshakespeare --data.output_dir runs/data/shakespeare

On a cluster: `ray job submit --working-dir . -- python -m jobs.tokenize ... --data.inputs s3://bucket/raw/`.
"""

import sys

from forge_platform.cli import job_main
from forge_platform.job_config import TokenizeConfig
from forge_platform.single_jobs import run_tokenize

if __name__ == "__main__":
    sys.exit(job_main(TokenizeConfig, run_tokenize, __doc__))
