#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the test suite (what .ci/run calls).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/platform -k config`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
source scripts/workspace_env.sh
exec .venv/bin/python -m pytest "$@"
