#!/usr/bin/env bash
# Creates .venv in the repository and installs Hybrid Forge with its pinned CPU stack.
# Idempotent: a second run only checks a stamp and returns in a second.
#   torch first, from the CPU wheel (an unpinned torch pulls a multi-GB CUDA build), then the
#   package and its extras under constraints-cpu.txt, the versions this repository is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python_bin --version)"
  "$python_bin" -m venv .venv
fi
stamp=.venv/.forge-installed
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import forge_platform" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi
start=$(date +%s)
echo "[setup] installing torch (CPU) ..."
# (This machine's pip configuration names local indexes that may be absent: their warnings are noise.)
quiet() { grep -v "^WARNING: Location .* is ignored" || true; }
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | quiet
echo "[setup] installing hybrid-forge and its pinned dependencies (two to three minutes on a fresh machine) ..."
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".[test]" 2>&1 | quiet
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - start )) s"
