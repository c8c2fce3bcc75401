# Sourced by the gpu_*.sh scripts on the device machine (after `source .carry/bootstrap.sh`): the
# repository's packages on the path, Ray without token auth and without buffering, DeepSpeed's JIT builds
# in /tmp, the expandable CUDA allocator (long rows fragment the default one), NVLink multicast off.
export FORGE_SRC_ROOTS=models:platform:data_pipeline:evaluation
export PYTHONPATH="$PWD/models:$PWD/platform:$PWD/data_pipeline:$PWD/evaluation:$PWD:${PYTHONPATH:-}"
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True NCCL_NVLS_ENABLE=0
out=${OUT:-/tmp/forge-out}
mkdir -p "$out"
