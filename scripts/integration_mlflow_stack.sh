#!/usr/bin/env bash
# The production MLflow integration test alone, with its wall time: PostgreSQL (the Debian package's
# binaries under /usr/lib/postgresql/*/bin), moto's S3 server and `mlflow server` with basic auth,
# started as the cluster's Deployment starts it; the reduced campaign reading from and writing to
# s3:// and logging to that server; then the runs, metrics, artifacts and registered model checked
# through MlflowClient, a wrong password refused, and no stray local files.
# (tests/platform/test_production_mlflow.py; the stack alone, to poke at by hand:
#  PYTHONPATH=platform:models:data_pipeline:evaluation:. .venv/bin/python -m tests.platform.production_stack)
#
# Usage: bash scripts/integration_mlflow_stack.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
source scripts/workspace_env.sh
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || {
  echo "integration_mlflow_stack.sh: no PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql)" >&2
  exit 2
}
start=$(date +%s)
status=0
.venv/bin/python -m pytest tests/platform/test_production_mlflow.py -q "$@" || status=$?
echo "[integration] wall time $(( $(date +%s) - start )) s"
exit $status
