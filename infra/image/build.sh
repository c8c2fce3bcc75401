#!/usr/bin/env bash
# Builds the three images from the repository root and tags them with versions, never `latest`:
#   hybrid-forge-gpu:<package version>    every Ray pod (infra/kubernetes)
#   hybrid-forge-mlflow:<mlflow version>  the tracking server (infra/mlflow)
#   hybrid-forge-cpu:<package version>    the test suite, as CI runs it
# Usage: infra/image/build.sh [--registry REGISTRY] [--push] [gpu|cpu|mlflow ...]   (default: all three)
#   e.g. infra/image/build.sh --registry us-docker.pkg.dev/my-project/hybrid-forge --push gpu mlflow
# The tags must match the overlays' `images:` entries (infra/kubernetes/overlays/*/kustomization.yaml).
set -euo pipefail
usage() { sed -n '2,8p' "${BASH_SOURCE[0]}"; }
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

registry="" push=false targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="${2:?--registry needs a value}/"; shift 2 ;;
    --push) push=true; shift ;;
    gpu|cpu|mlflow) targets+=("$1"); shift ;;
    *) usage; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(gpu mlflow cpu)
cd "$script_dir/../.."

package_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
mlflow_version=$(sed -n 's/^mlflow==\(.*\)$/\1/p' constraints-cpu.txt)
[ -n "$package_version" ] && [ -n "$mlflow_version" ] || { echo "build.sh: cannot read the versions" >&2; exit 1; }

for target in "${targets[@]}"; do
  case "$target" in
    mlflow) tag="$mlflow_version" ;;
    *) tag="$package_version" ;;
  esac
  image="${registry}hybrid-forge-${target}:${tag}"
  echo "[build] $image from infra/image/Dockerfile.$target"
  # BuildKit reads infra/image/Dockerfile.<target>.dockerignore beside the Dockerfile.
  DOCKER_BUILDKIT=1 docker build -f "infra/image/Dockerfile.$target" -t "$image" .
  if $push; then
    docker push "$image"
    # The digest to pin in a kustomization (`images: - name: ... digest: sha256:...`).
    docker image inspect --format '{{index .RepoDigests 0}}' "$image"
  fi
done
