#!/usr/bin/env bash
# The device image has no MLflow, and .carry (Ray, causal-conv1d, mamba_ssm) leaves no room for it in
# one call's 64 MiB. So MLflow travels in a call of its own, into the machine's /tmp, which later calls
# find while the machine stays warm (~30 s between calls). Here, from the repo root:
#     bash benchmarks/platform/prepare_mlflow_carry.sh            # -> .carry-mlflow/ (~32 MiB)
# Call 1 (carry [".carry-mlflow"]):
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-mlflow .carry-mlflow/*.whl
# Call 2 and later (carry [".carry"]): source .carry/bootstrap.sh; export PYTHONPATH=$PYTHONPATH:/tmp/site-mlflow
# The wheels are MLflow's dependency closure for CPython 3.12 minus what the image (or .carry) holds.
set -euo pipefail
version=$(python3 -c "import mlflow; print(mlflow.__version__)" 2>/dev/null || .venv/bin/python -c "import mlflow; print(mlflow.__version__)")
dest=.carry-mlflow
rm -rf "$dest" && mkdir -p "$dest"
grep -qx "/$dest/" .git/info/exclude 2>/dev/null || echo "/$dest/" >> .git/info/exclude
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "mlflow==$version"
# In the device image already (its package list in the device notes, 2026-11-17), or in .carry/whl.
in_image="aiohappyeyeballs aiohttp aiosignal annotated-doc annotated-types anyio attrs certifi charset-normalizer
click cloudpickle contourpy cycler fonttools frozenlist h11 idna jinja2 joblib kiwisolver markupsafe matplotlib
multidict narwhals numpy packaging pandas pillow propcache protobuf pyarrow pydantic pydantic-core pyparsing
python-dateutil pyyaml requests scikit-learn scipy six threadpoolctl typing-extensions typing-inspection urllib3
werkzeug yarl zipp"
for wheel in "$dest"/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
  for have in $in_image; do [ "$name" = "$have" ] && rm "$wheel" && break; done
done
echo "prepare_mlflow_carry: $(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest (mlflow $version)"
