"""Pretrain one stage on packed shards with Ray Train + DeepSpeed, evaluate it, track it in MLflow.

Laptop (local Ray, local MLflow):
    python -m jobs.pretrain --config jobs/specs/pretrain.toml --train_manifest runs/data/train/manifest.json

Cluster:
    ray job submit --working-dir . -- python -m jobs.pretrain --config jobs/specs/pretrain.toml \
        --train_manifest s3://bucket/data/manifest.json --tracking.uri http://mlflow.forge.svc.cluster.local:5000 \
        --parallel.use_gpu true --parallel.num_workers 16 --stage.train.precision bf16
"""

import sys

from forge_platform.cli import job_main
from forge_platform.job_config import PretrainConfig
from forge_platform.single_jobs import run_pretrain

if __name__ == "__main__":
    sys.exit(job_main(PretrainConfig, run_pretrain, __doc__))
