# Sourced by the scripts: keep every cache in the workspace, not in $HOME, and Ray local and quiet.
repo_root=$(pwd)
export TORCH_EXTENSIONS_DIR="$repo_root/.cache/torch_extensions"
export MPLCONFIGDIR="$repo_root/.cache/matplotlib"
export HF_HOME="$repo_root/.cache/huggingface"
export MLFLOW_DISABLE_TELEMETRY=true
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_USAGE_STATS_ENABLED=0
export PYTHONUNBUFFERED=1
