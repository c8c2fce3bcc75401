"""Deployment policy holds on every rendered overlay, and each check catches its own break."""

from __future__ import annotations

import copy
from typing import Any, Callable

import deploy_policy as policy
import pytest
from infra_layout import CLOUDS
from kustomize_lite import Manifest


def run_checks(manifests: list[Manifest], cloud: str) -> dict[str, list[str]]:
    """Every policy check's violations, by check name."""
    expect = CLOUDS[cloud]
    return {
        "pod_security": policy.check_pod_security(manifests),
        "resources": policy.check_resources(manifests),
        "images": policy.check_images(manifests),
        "inline_secrets": policy.check_no_inline_secrets(manifests),
        "network_policies": policy.check_network_policies(manifests),
        "not_exposed": policy.check_not_exposed(manifests),
        "ray_head": policy.check_ray_head(manifests),
        "gpu_workers": policy.check_gpu_workers(manifests, expect.node_selector),
        "ray_job": policy.check_ray_job(manifests, expect.storage_scheme),
        "workload_identity": policy.check_workload_identity(manifests, expect.identity_annotation),
        "mlflow_server": policy.check_mlflow_server(manifests),
    }


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_every_policy_holds(cloud: str, rendered: dict[str, list[Manifest]]) -> None:
    violations = {name: found for name, found in run_checks(rendered[cloud], cloud).items() if found}
    assert violations == {}


def _one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    return next(m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"]))


def _head(ms: list[Manifest]) -> dict[str, Any]:
    return _one(ms, "RayCluster")["spec"]["headGroupSpec"]


def _worker(ms: list[Manifest]) -> dict[str, Any]:
    return _one(ms, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _mlflow(ms: list[Manifest]) -> dict[str, Any]:
    return _one(ms, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def _submitter(ms: list[Manifest]) -> dict[str, Any]:
    return _one(ms, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    container.setdefault("env", []).append({"name": name, "value": value})


# Each break: the check that must catch it, and a piece of the violation it must report.
BREAKS: dict[str, tuple[str, Callable[[list[Manifest]], None], str]] = {
    "root-user": ("pod_security", lambda ms: _head(ms)["template"]["spec"]["securityContext"].update(
        runAsNonRoot=False, runAsUser=0), "runAsNonRoot"),
    "privileged": ("pod_security", lambda ms: _mlflow(ms)["securityContext"].update(privileged=True), "privileged"),
    "escalation": ("pod_security", lambda ms: _submitter(ms)["securityContext"].pop("allowPrivilegeEscalation"),
                   "allowPrivilegeEscalation"),
    "capability-added": ("pod_security", lambda ms: _worker(ms)["template"]["spec"]["containers"][0][
        "securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    "autoscaler-root": ("pod_security", lambda ms: _one(ms, "RayCluster")["spec"]["autoscalerOptions"].pop(
        "securityContext"), "autoscaler"),
    "no-limits": ("resources", lambda ms: _mlflow(ms)["resources"].pop("limits"), "no limits"),
    "no-memory-request": ("resources", lambda ms: _submitter(ms)["resources"]["requests"].pop("memory"),
                          "memory"),
    "autoscaler-no-resources": ("resources", lambda ms: _one(ms, "RayCluster")["spec"]["autoscalerOptions"].pop(
        "resources"), "autoscaler"),
    "image-latest": ("images", lambda ms: _mlflow(ms).update(image="ghcr.io/mlflow/mlflow:latest"), "latest"),
    "image-untagged": ("images", lambda ms: _head(ms)["template"]["spec"]["containers"][0].update(
        image="rayproject/ray"), "no tag"),
    "env-password": ("inline_secrets", lambda ms: _set_env(_mlflow(ms), "MLFLOW_AUTH_ADMIN_PASSWORD", "hunter2"),
                     "MLFLOW_AUTH_ADMIN_PASSWORD"),
    "env-uri-with-password": ("inline_secrets", lambda ms: _set_env(
        _mlflow(ms), "MLFLOW_BACKEND_STORE_URI_COPY", "postgresql://mlflow:s3cret@db:5432/mlflow"), "credential"),
    "secret-object": ("inline_secrets", lambda ms: ms.append({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "mlflow-auth"}, "stringData": {"admin-password": "x"}}), "Secret/mlflow-auth"),
    "configmap-aws-key": ("inline_secrets", lambda ms: _one(ms, "ConfigMap")["data"].update(
        creds="key = AKIAABCDEFGHIJKLMNOP"), "ConfigMap"),
    "no-policy-for-workers": ("network_policies", lambda ms: ms.remove(_one(ms, "NetworkPolicy", "ray-worker")),
                              "gpu-h100x8"),
    "catch-all-only": ("network_policies", lambda ms: _one(ms, "NetworkPolicy", "mlflow")["spec"].update(
        podSelector={}), "Deployment/mlflow"),
    "loadbalancer": ("not_exposed", lambda ms: _one(ms, "Service", "mlflow")["spec"].update(type="LoadBalancer"),
                     "LoadBalancer"),
    "head-nodeport": ("not_exposed", lambda ms: _head(ms).update(serviceType="NodePort"), "NodePort"),
    "head-ingress": ("not_exposed", lambda ms: _head(ms).update(enableIngress=True), "enableIngress"),
    "head-gpus": ("ray_head", lambda ms: _head(ms)["rayStartParams"].pop("num-gpus"), "num-gpus"),
    "head-on-gpu-node": ("ray_head", lambda ms: _head(ms)["template"]["spec"].update(
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]), "GPU taint"),
    "four-gpus": ("gpu_workers", lambda ms: _worker(ms)["template"]["spec"]["containers"][0]["resources"][
        "limits"].update({"nvidia.com/gpu": "4"}), "must be 8"),
    "other-cloud-selector": ("gpu_workers", lambda ms: _worker(ms)["template"]["spec"].update(
        nodeSelector={"node.kubernetes.io/instance-type": "p5.48xlarge"}), "nodeSelector"),
    "no-toleration": ("gpu_workers", lambda ms: _worker(ms)["template"]["spec"].pop("tolerations"), "toleration"),
    "shm-on-disk": ("gpu_workers", lambda ms: _worker(ms)["template"]["spec"]["volumes"][0]["emptyDir"].pop(
        "medium"), "/dev/shm"),
    "object-store-too-big": ("gpu_workers", lambda ms: _worker(ms)["rayStartParams"].update(
        {"object-store-memory": str(300 * 2**30)}), "object-store-memory"),
    "replicas-out-of-bounds": ("gpu_workers", lambda ms: _worker(ms).update(maxReplicas=8), "maxReplicas"),
    "no-shutdown": ("ray_job", lambda ms: _one(ms, "RayJob")["spec"].update(shutdownAfterJobFinishes=False),
                    "shutdownAfterJobFinishes"),
    "no-deadline": ("ray_job", lambda ms: _one(ms, "RayJob")["spec"].pop("activeDeadlineSeconds"),
                    "activeDeadlineSeconds"),
    "no-backoff-limit": ("ray_job", lambda ms: _one(ms, "RayJob")["spec"].pop("backoffLimit"), "backoffLimit"),
    "local-output": ("ray_job", lambda ms: _one(ms, "RayJob")["spec"].update(
        entrypoint="python -m jobs.campaign --config /etc/forge/campaign.toml --data.inputs gs://b/raw "
                   "--output_dir runs/x"), "--output_dir"),
    "spec-not-mounted": ("ray_job", lambda ms: ms.remove(_one(ms, "ConfigMap", "campaign-spec")), "campaign.toml"),
    "no-identity": ("workload_identity", lambda ms: _one(ms, "ServiceAccount", "ray-forge")["metadata"].pop(
        "annotations"), "ray-forge"),
    "default-account": ("workload_identity", lambda ms: _mlflow_pod(ms).pop("serviceAccountName"), "None"),
    "no-basic-auth": ("mlflow_server", lambda ms: _mlflow(ms)["args"].remove("--app-name=basic-auth"),
                      "basic-auth"),
    "any-host": ("mlflow_server", lambda ms: _mlflow(ms).update(args=[
        "--app-name=basic-auth", "--serve-artifacts", "--allowed-hosts=*"]), "--allowed-hosts"),
    "store-uri-inline": ("mlflow_server", lambda ms: _mlflow(ms).update(env=[
        {"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:///mlflow.db"}]), "MLFLOW_BACKEND_STORE_URI"),
}


def _mlflow_pod(ms: list[Manifest]) -> dict[str, Any]:
    return _one(ms, "Deployment", "mlflow")["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_check_catches_its_break(name: str, rendered: dict[str, list[Manifest]]) -> None:
    check, breaker, expected = BREAKS[name]
    manifests = copy.deepcopy(rendered["gke"])
    breaker(manifests)
    found = run_checks(manifests, "gke")[check]
    assert any(expected in violation for violation in found), found


def test_every_check_has_a_break() -> None:
    assert {check for check, _, _ in BREAKS.values()} == set(run_checks([], "gke"))
