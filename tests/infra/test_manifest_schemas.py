"""Every rendered manifest validates against its schema: KubeRay's CRDs, the Kubernetes API's."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
from infra_layout import CLOUDS, KUBERNETES, MLFLOW
from k8s_validation import schema_errors
from kustomize_lite import Manifest, render


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_overlay_renders_valid_manifests(cloud: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[cloud]
    kinds = sorted(m["kind"] for m in manifests)
    for kind in ("RayCluster", "RayJob", "ConfigMap", "Deployment", "Service", "Namespace"):
        assert kind in kinds, f"{cloud}: no {kind} rendered"
    assert kinds.count("NetworkPolicy") >= 4 and kinds.count("ServiceAccount") == 2
    assert [e for m in manifests for e in schema_errors(m)] == []


@pytest.mark.parametrize("folder", [KUBERNETES / "base", KUBERNETES / "campaign", MLFLOW],
                         ids=["kubernetes-base", "campaign", "mlflow"])
def test_bases_alone_are_valid(folder: Any) -> None:
    assert [e for m in render(folder) for e in schema_errors(m)] == []


def _find(manifests: list[Manifest], kind: str) -> Manifest:
    return next(m for m in manifests if m["kind"] == kind)


def _worker(manifests: list[Manifest]) -> dict[str, Any]:
    return _find(manifests, "RayCluster")["spec"]["workerGroupSpecs"][0]


# Each break, and a piece of the error it must produce.
BREAKS: dict[str, tuple[Callable[[list[Manifest]], None], str]] = {
    "raycluster-unknown-field": (
        lambda ms: _worker(ms)["template"]["spec"].update(nodeSelectr={"a": "b"}), "nodeSelectr"),
    "raycluster-wrong-type": (lambda ms: _worker(ms).update(maxReplicas="16"), "maxReplicas"),
    "raycluster-missing-required": (lambda ms: _worker(ms).pop("groupName"), "groupName"),
    "raycluster-bad-quantity": (
        lambda ms: _worker(ms)["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="lots"),
        "lots"),
    "rayjob-wrong-type": (lambda ms: _find(ms, "RayJob")["spec"].update(backoffLimit="two"), "backoffLimit"),
    "rayjob-unknown-field": (lambda ms: _find(ms, "RayJob")["spec"].update(shutdownAfterJobFinish=True),
                             "shutdownAfterJobFinish"),
    "deployment-unknown-field": (
        lambda ms: _find(ms, "Deployment")["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="x"),
        "imagePullPolicyy"),
    "networkpolicy-wrong-type": (lambda ms: _find(ms, "NetworkPolicy")["spec"].update(policyTypes="Ingress"),
                                 "policyTypes"),
    "service-missing-port": (lambda ms: _find(ms, "Service")["spec"]["ports"][0].pop("port"), "port"),
    "unknown-kind": (lambda ms: ms.append({"apiVersion": "ray.io/v1", "kind": "RayService",
                                           "metadata": {"name": "x"}}), "no schema"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_schema_validation_rejects_a_broken_manifest(name: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = copy.deepcopy(rendered["gke"])
    breaker, expected = BREAKS[name]
    breaker(manifests)
    errors = [e for m in manifests for e in schema_errors(m)]
    assert errors and any(expected in e for e in errors), errors
