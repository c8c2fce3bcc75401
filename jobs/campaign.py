"""Run a whole campaign: tokenizer, packed data, pretraining and context extension, evaluation, MLflow.

Laptop (local Ray and a local MLflow server, bundled data; what `bash scripts/demo.sh` runs):
    python -m jobs.campaign --config jobs/specs/demo.toml

One node or a cluster (Ray picks up RAY_ADDRESS; point tracking at the cluster's MLflow):
    ray job submit --working-dir . -- python -m jobs.campaign --config jobs/specs/demo.toml \
        --tracking.uri http://mlflow.forge.svc.cluster.local:5000 --parallel.num_workers 8 --parallel.use_gpu true

Any field can be overridden: `--stages.0.train.steps 20`; `--help` lists them all.
"""

import sys

from forge_platform.campaign import run_campaign
from forge_platform.cli import job_main
from forge_platform.job_config import CampaignConfig

if __name__ == "__main__":
    sys.exit(job_main(CampaignConfig, run_campaign, __doc__))
