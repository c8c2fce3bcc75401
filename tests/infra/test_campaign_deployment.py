"""The RayJob's campaign fits the cluster it asks for, and the two Ray clusters do not drift apart."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from deploy_policy import quantity_bytes
from forge_platform.job_config import CampaignConfig, load_job_config
from infra_layout import CLOUDS, KUBERNETES, REPO
from kustomize_lite import Manifest


def _one(manifests: list[Manifest], kind: str) -> Manifest:
    return next(m for m in manifests if m["kind"] == kind)


def test_configmap_spec_is_the_shipped_8b_campaign() -> None:
    # kustomize reads no file outside its folder, so the base holds a copy: it must stay the same.
    copy = (KUBERNETES / "base" / "campaign.toml").read_text()
    assert copy == (REPO / "jobs" / "specs" / "hybrid_8b_campaign.toml").read_text()


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_campaign_loads_with_the_rayjob_arguments_and_fits_its_cluster(
        cloud: str, rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    manifests = rendered[cloud]
    job = _one(manifests, "RayJob")
    spec_file = tmp_path / "campaign.toml"
    spec_file.write_text(_one(manifests, "ConfigMap")["data"]["campaign.toml"])
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:5] == ["python", "-m", "jobs.campaign", "--config", "/etc/forge/campaign.toml"]
    # The real loader, with the entrypoint's overrides: a misspelt flag fails here, not on the cluster.
    cfg = load_job_config(CampaignConfig, spec_file, args[5:])
    scheme = CLOUDS[cloud].storage_scheme
    assert cfg.output_dir.startswith(f"{scheme}://") and cfg.data.inputs[0].startswith(f"{scheme}://")
    assert cfg.tracking.uri == "http://mlflow.forge.svc.cluster.local:5000"

    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker = group["template"]["spec"]["containers"][0]["resources"]["requests"]
    gpus_per_node = int(worker["nvidia.com/gpu"])
    assert cfg.parallel.use_gpu and cfg.parallel.num_workers == group["replicas"] * gpus_per_node
    assert cfg.parallel.cpus_per_worker * gpus_per_node <= float(worker["cpu"])
    # The memory plan checks every stage against this GPU size: an H100 80GB.
    assert cfg.parallel.gpu_memory_gib == pytest.approx(79.1)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_rayjob_cluster_matches_the_raycluster(cloud: str, rendered: dict[str, list[Manifest]]) -> None:
    cluster = _one(rendered[cloud], "RayCluster")["spec"]
    job_cluster = _one(rendered[cloud], "RayJob")["spec"]["rayClusterSpec"]
    for key in ("rayVersion", "authOptions"):
        assert job_cluster[key] == cluster[key]
    assert job_cluster["headGroupSpec"] == cluster["headGroupSpec"] | {"template": _without_token(
        cluster["headGroupSpec"]["template"])}
    group, job_group = cluster["workerGroupSpecs"][0], job_cluster["workerGroupSpecs"][0]
    assert job_group["template"] == group["template"] and job_group["rayStartParams"] == group["rayStartParams"]
    # The long-lived cluster scales up to exactly the nodes the campaign's job runs on.
    assert group["maxReplicas"] == job_group["replicas"] == job_group["minReplicas"] == job_group["maxReplicas"]


def _without_token(template: dict) -> dict:
    """The head template less the service-account token only the autoscaler (RayCluster) needs."""
    spec = {k: v for k, v in template["spec"].items() if k != "automountServiceAccountToken"}
    return {**template, "spec": spec}


def test_worker_memory_holds_shm_and_fits_both_machines(rendered: dict[str, list[Manifest]]) -> None:
    for cloud, node_memory in (("gke", 1872 * 10**9), ("eks", 2048 * 2**30)):
        group = _one(rendered[cloud], "RayCluster")["spec"]["workerGroupSpecs"][0]
        memory = quantity_bytes(group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
        shm = quantity_bytes(group["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"])
        assert shm < memory < 0.85 * node_memory  # /dev/shm counts in the pod's memory; daemons need the rest
