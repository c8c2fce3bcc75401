#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the demo campaign on embedded defaults:
# a local Ray, a local MLflow server (127.0.0.1, SQLite), the bundled corpora.
# Extra arguments are overrides, e.g. `bash scripts/demo.sh --stages.0.train.steps 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
source scripts/workspace_env.sh
exec .venv/bin/python -m jobs.campaign --config jobs/specs/demo.toml "$@"
