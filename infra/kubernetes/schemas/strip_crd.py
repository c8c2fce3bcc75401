"""Cut a KubeRay CRD down to the one schema the tests validate against: its v1 `openAPIV3Schema`.

Descriptions are dropped (they are documentation, not constraints: two thirds of the bytes);
everything that constrains a manifest (types, enums, required, formats, x-kubernetes-*) is kept.
Run by hand when KubeRay is upgraded, then update PROVENANCE.md:

    python infra/kubernetes/schemas/strip_crd.py ray.io_rayclusters.yaml > infra/kubernetes/schemas/raycluster-v1.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strip_descriptions(node: Any) -> Any:
    """The schema without its `description` keys (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def v1_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The `openAPIV3Schema` of the CRD's `v1` version."""
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(f"{crd['metadata']['name']}: no v1 version in the CRD")


def main(argv: list[str]) -> int:
    """Print the stripped v1 schema of the CRD file named in argv[1] as JSON."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        crd = yaml.safe_load(f)
    schema = strip_descriptions(v1_schema(crd))
    json.dump(schema, sys.stdout, separators=(",", ":"), sort_keys=True)  # compact: 150-220 KB
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
