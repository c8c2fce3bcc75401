"""Schema validation of rendered manifests, offline, the way the API server would judge them.

Built-in kinds go to `kubernetes-validate` (the Kubernetes OpenAPI schemas it ships) in strict
mode, at KUBERNETES_VERSION. RayCluster and RayJob go to KubeRay's own v1 `openAPIV3Schema`
(infra/kubernetes/schemas, see its PROVENANCE.md), made strict the way the API server's field
validation is: an object whose schema lists its properties accepts no other field, unless the
schema says `x-kubernetes-preserve-unknown-fields`. (CEL rules, `x-kubernetes-validations`, are not
evaluated here.)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.31"  # the oldest minor the overlays target (GKE and EKS both offer it)
SCHEMAS = Path(__file__).resolve().parents[2] / "infra" / "kubernetes" / "schemas"
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): "raycluster-v1.json", ("ray.io/v1", "RayJob"): "rayjob-v1.json"}


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever the API server would reject unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    """A validator for one KubeRay kind (loaded once: the schemas are 150-220 KB)."""
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft7Validator(strict(schema))


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Every schema error of one manifest, each as 'Kind/name: path: message'; [] when valid.

    A kind that neither the Kubernetes schemas nor our CRD copies know is an error: a manifest
    that nothing validates must not pass silently.
    """
    name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key in CRD_SCHEMAS:
        errors = sorted(crd_validator(*key).iter_errors(manifest), key=lambda e: list(e.absolute_path))
        return [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{name}: no schema: {e.message}"]
    return []
