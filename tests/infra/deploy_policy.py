"""Deployment policy over rendered manifests: each check returns its violations ([] when none).

Every check is a plain function of the manifests (and, for the cloud-specific ones, the overlay's
expectations), so the tests run each on the rendered overlays, where it must find nothing, and on
a deliberately broken copy, where it must name the break.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Iterator

Manifest = dict[str, Any]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
GPU = "nvidia.com/gpu"
# Env names whose value is a credential: such a value must come from a Secret (valueFrom).
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(ACCESS|API|AUTH)_?KEY", re.I)
# Values that are credentials whatever they are called: a URI with user:password@, an AWS key id,
# a private key, a `password = ...` line (a config file in a ConfigMap).
SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|\bAKIA[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY|"
                          r"(password|passwd|secret|token)\s*[=:]\s*\S", re.I)


@dataclass(frozen=True)
class PodTemplate:
    """A pod template inside a manifest, with where it is and which Ray role it plays."""

    where: str
    template: dict[str, Any]
    role: str  # ray-head, ray-worker, ray-submitter, or other
    group: dict[str, Any] | None = None  # the RayCluster head group or worker group spec


def ray_cluster_specs(manifest: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, RayCluster spec) of a RayCluster or of a RayJob's embedded cluster."""
    name = f"{manifest['kind']}/{manifest['metadata']['name']}"
    if manifest["kind"] == "RayCluster":
        yield name, manifest["spec"]
    elif manifest["kind"] == "RayJob" and "rayClusterSpec" in manifest["spec"]:
        yield f"{name}.rayClusterSpec", manifest["spec"]["rayClusterSpec"]


def pod_templates(manifests: list[Manifest]) -> Iterator[PodTemplate]:
    """Every pod template of the workloads: Deployments & co., Ray heads, worker groups, submitters."""
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] in WORKLOAD_KINDS:
            template = manifest if manifest["kind"] == "Pod" else manifest["spec"]["template"]
            yield PodTemplate(name, template, "other")
        for where, spec in ray_cluster_specs(manifest):
            head = spec["headGroupSpec"]
            yield PodTemplate(f"{where}.head", head["template"], "ray-head", head)
            for group in spec.get("workerGroupSpecs", []):
                yield PodTemplate(f"{where}.{group['groupName']}", group["template"], "ray-worker", group)
        if manifest["kind"] == "RayJob" and "submitterPodTemplate" in manifest["spec"]:
            yield PodTemplate(f"{name}.submitter", manifest["spec"]["submitterPodTemplate"], "ray-submitter")


def containers(pod: PodTemplate) -> Iterator[dict[str, Any]]:
    """The pod's containers and init containers."""
    spec = pod.template.get("spec", {})
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def autoscalers(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, autoscalerOptions, head pod template) of every cluster whose operator adds the
    autoscaler container to the head pod: it must meet the same rules as the containers we write."""
    for manifest in manifests:
        for where, spec in ray_cluster_specs(manifest):
            if spec.get("enableInTreeAutoscaling"):
                yield f"{where}.autoscaler", spec.get("autoscalerOptions", {}), spec["headGroupSpec"]["template"]


def check_pod_security(manifests: list[Manifest]) -> list[str]:
    """Non-root, no privileged container, no privilege escalation, every capability dropped."""
    problems = []
    checked = [(pod.where, pod.template, c) for pod in pod_templates(manifests) for c in containers(pod)]
    checked += [(where, head, {"name": "autoscaler", **options}) for where, options, head in autoscalers(manifests)]
    for where, template, container in checked:
        pod_context = template.get("spec", {}).get("securityContext", {})
        context = container.get("securityContext", {})
        label = f"{where}: container {container['name']}"
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{label}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{label}: runAsUser is 0")
        if context.get("privileged"):
            problems.append(f"{label}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{label}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{label}: capabilities not dropped (drop: [ALL])")
        if context.get("capabilities", {}).get("add"):
            problems.append(f"{label}: adds capabilities {context['capabilities']['add']}")
    return problems


def check_resources(manifests: list[Manifest]) -> list[str]:
    """Every container (the autoscaler too) requests and limits CPU and memory."""
    problems = []
    checked = [(pod.where, c["name"], c.get("resources", {})) for pod in pod_templates(manifests) for c in containers(pod)]
    checked += [(where, "autoscaler", options.get("resources", {})) for where, options, _ in autoscalers(manifests)]
    for where, name, resources in checked:
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in resources.get(kind, {})]
            if missing:
                problems.append(f"{where}: container {name}: no {kind} for {', '.join(missing)}")
    return problems


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None: it needs a tag other than latest, or a digest."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] if ":" in last else ""
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{image}: malformed digest"
    if not tag:
        return f"{image}: no tag (an untagged image is latest)"
    if tag == "latest":
        return f"{image}: tag latest"
    return None


def check_images(manifests: list[Manifest]) -> list[str]:
    """Every container image carries a version tag (not latest) or a digest."""
    problems = []
    for pod in pod_templates(manifests):
        for container in containers(pod):
            problem = image_problem(container.get("image", ""))
            if problem:
                problems.append(f"{pod.where}: container {container['name']}: {problem}")
    for where, options, _ in autoscalers(manifests):
        if "image" in options and image_problem(options["image"]):
            problems.append(f"{where}: {image_problem(options['image'])}")
    return problems


def check_no_inline_secrets(manifests: list[Manifest]) -> list[str]:
    """No credential in the manifests: env values, ConfigMap data, Secret objects, job entrypoints."""
    problems = []
    for pod in pod_templates(manifests):
        for container in containers(pod):
            for env in container.get("env", []):
                if "value" not in env:
                    continue
                if SECRET_NAME.search(env["name"]) or SECRET_VALUE.search(str(env["value"])):
                    problems.append(f"{pod.where}: container {container['name']}: env {env['name']} has an inline "
                                    "value that looks like a credential (use valueFrom.secretKeyRef)")
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] == "Secret" and (manifest.get("data") or manifest.get("stringData")):
            problems.append(f"{name}: a Secret with values in the repository (create it by hand, docs/deploy.md)")
        if manifest["kind"] == "ConfigMap":
            for key, value in manifest.get("data", {}).items():
                if SECRET_VALUE.search(value):
                    problems.append(f"{name}: data {key} holds what looks like a credential")
        if manifest["kind"] == "RayJob" and SECRET_VALUE.search(manifest["spec"].get("entrypoint", "")):
            problems.append(f"{name}: the entrypoint holds what looks like a credential")
    return problems


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def check_network_policies(manifests: list[Manifest]) -> list[str]:
    """Each component's pods are selected by a NetworkPolicy of its own (not only a catch-all)."""
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    problems = []
    for pod in pod_templates(manifests):
        labels = pod.template.get("metadata", {}).get("labels", {})
        own = [p["metadata"]["name"] for p in policies
               if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)
               and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
        if not own:
            problems.append(f"{pod.where}: no NetworkPolicy selects its pods (labels {labels})")
    return problems


def check_not_exposed(manifests: list[Manifest]) -> list[str]:
    """No Service outside the cluster; Ray heads keep a ClusterIP Service and no Ingress."""
    problems = []
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] == "Service" and manifest["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{name}: type {manifest['spec']['type']} exposes it outside the cluster")
        if manifest["kind"] == "Ingress":
            problems.append(f"{name}: an Ingress in the manifests")
        for where, spec in ray_cluster_specs(manifest):
            head = spec["headGroupSpec"]
            if head.get("serviceType") != "ClusterIP":
                problems.append(f"{where}: head serviceType {head.get('serviceType')!r}, must be ClusterIP")
            if head.get("enableIngress"):
                problems.append(f"{where}: head enableIngress exposes the dashboard")
            if head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
                problems.append(f"{where}: headService type exposes the head")
    return problems


def check_ray_head(manifests: list[Manifest]) -> list[str]:
    """The head takes no training: 0 GPUs and 0 CPUs advertised, no GPU requested or tolerated."""
    problems = []
    for pod in pod_templates(manifests):
        if pod.role != "ray-head":
            continue
        params = pod.group.get("rayStartParams", {})
        for param in ("num-gpus", "num-cpus"):
            if params.get(param) != "0":
                problems.append(f"{pod.where}: rayStartParams {param} is {params.get(param)!r}, must be '0'")
        for container in containers(pod):
            if any(GPU in container.get("resources", {}).get(kind, {}) for kind in ("requests", "limits")):
                problems.append(f"{pod.where}: container {container['name']} asks for GPUs")
        if any(t.get("key") == GPU for t in pod.template["spec"].get("tolerations", [])):
            problems.append(f"{pod.where}: tolerates the GPU taint, so it may land on a GPU node")
    return problems


def quantity_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity (integer forms: 256Gi, 8G, 1024)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", str(quantity))
    if not match:
        raise ValueError(f"{quantity!r}: not an integer memory quantity")
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def check_gpu_workers(manifests: list[Manifest], node_selector: dict[str, str]) -> list[str]:
    """GPU worker groups: 8 GPUs requested and limited, the pool's node selector and the GPU
    toleration, a memory-backed /dev/shm with a size above Ray's object store, autoscaling bounds."""
    problems = []
    workers = [pod for pod in pod_templates(manifests) if pod.role == "ray-worker"]
    if not workers:
        problems.append("no Ray worker group")
    for pod in workers:
        spec = pod.template["spec"]
        ray = [c for c in containers(pod) if c["name"] == "ray-worker"] or list(containers(pod))[:1]
        resources = ray[0].get("resources", {}) if ray else {}
        for kind in ("requests", "limits"):
            if str(resources.get(kind, {}).get(GPU)) != "8":
                problems.append(f"{pod.where}: {kind} {GPU} is {resources.get(kind, {}).get(GPU)!r}, must be 8")
        for key, value in node_selector.items():
            if spec.get("nodeSelector", {}).get(key) != value:
                problems.append(f"{pod.where}: nodeSelector {key} is {spec.get('nodeSelector', {}).get(key)!r}, "
                                f"must be {value!r}")
        if not any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in spec.get("tolerations", [])):
            problems.append(f"{pod.where}: no toleration of the {GPU} NoSchedule taint")
        shm = _shm_bytes(pod)
        if shm is None:
            problems.append(f"{pod.where}: /dev/shm is not a memory-backed emptyDir with a sizeLimit")
        else:
            store = pod.group.get("rayStartParams", {}).get("object-store-memory")
            if store is None or int(store) >= shm:
                problems.append(f"{pod.where}: object-store-memory {store} must be set and below /dev/shm ({shm} B)")
        group = pod.group
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if low is None or high is None or not low <= group.get("replicas", low) <= high:
            problems.append(f"{pod.where}: replicas {group.get('replicas')} outside [minReplicas {low}, "
                            f"maxReplicas {high}]")
    return problems


def _shm_bytes(pod: PodTemplate) -> int | None:
    spec = pod.template["spec"]
    for container in containers(pod):
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] != "/dev/shm":
                continue
            volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
            empty_dir = volume.get("emptyDir", {})
            if empty_dir.get("medium") == "Memory" and "sizeLimit" in empty_dir:
                return quantity_bytes(empty_dir["sizeLimit"])
    return None


def check_ray_job(manifests: list[Manifest], storage_scheme: str) -> list[str]:
    """The campaign RayJob: runs jobs.campaign on the ConfigMap's spec, writes to the cloud's
    object store, and ends: shutdown after the job, a TTL, a retry limit and a deadline."""
    problems = []
    jobs = [m for m in manifests if m["kind"] == "RayJob"]
    if not jobs:
        return ["no RayJob"]
    for job in jobs:
        name = f"RayJob/{job['metadata']['name']}"
        spec = job["spec"]
        if spec.get("shutdownAfterJobFinishes") is not True:
            problems.append(f"{name}: shutdownAfterJobFinishes is not true")
        for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
            if not isinstance(spec.get(field), int) or spec[field] <= 0:
                problems.append(f"{name}: {field} must be a positive number of seconds")
        if not isinstance(spec.get("backoffLimit"), int):
            problems.append(f"{name}: backoffLimit not set")
        args = shlex.split(spec.get("entrypoint", ""))
        if args[:5] != ["python", "-m", "jobs.campaign", "--config", "/etc/forge/campaign.toml"]:
            problems.append(f"{name}: entrypoint {spec.get('entrypoint')!r} does not run jobs.campaign "
                            "on /etc/forge/campaign.toml")
        for flag in ("--output_dir", "--data.inputs"):
            value = args[args.index(flag) + 1] if flag in args[:-1] else ""
            if not value.startswith(f"{storage_scheme}://"):
                problems.append(f"{name}: {flag} {value!r} is not a {storage_scheme}:// URI")
        problems += _spec_mounted(name, spec, manifests)
    return problems


def _spec_mounted(name: str, spec: dict[str, Any], manifests: list[Manifest]) -> list[str]:
    head = spec.get("rayClusterSpec", {}).get("headGroupSpec", {}).get("template", {}).get("spec", {})
    configmaps = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ConfigMap"}
    for container in head.get("containers", []):
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] != "/etc/forge":
                continue
            volume = next((v for v in head.get("volumes", []) if v["name"] == mount["name"]), {})
            source = volume.get("configMap", {}).get("name")
            if source in configmaps and "campaign.toml" in configmaps[source].get("data", {}):
                return []
            return [f"{name}: /etc/forge comes from {source!r}, not a rendered ConfigMap with campaign.toml"]
    return [f"{name}: the head does not mount the campaign spec at /etc/forge"]


def check_workload_identity(manifests: list[Manifest], annotation: str) -> list[str]:
    """Pods reach the bucket through the cloud's workload identity: every ServiceAccount that a pod
    uses is annotated; no pod mounts a credentials file from a Secret."""
    accounts = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ServiceAccount"}
    problems = []
    for pod in pod_templates(manifests):
        account = pod.template["spec"].get("serviceAccountName")
        if account not in accounts:
            problems.append(f"{pod.where}: serviceAccountName {account!r} is not one of the rendered ServiceAccounts")
        elif not accounts[account]["metadata"].get("annotations", {}).get(annotation):
            problems.append(f"ServiceAccount/{account} (used by {pod.where}): no {annotation} annotation")
    return problems


def check_mlflow_server(manifests: list[Manifest]) -> list[str]:
    """The tracking server: basic auth, artifacts served through it, allowed hosts, and its
    stores, admin credentials and CSRF signing key from Secrets."""
    deployments = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "mlflow"]
    if not deployments:
        return ["no mlflow Deployment"]
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    args = container.get("command", []) + container.get("args", [])
    problems = []
    for wanted in ("--app-name=basic-auth", "--serve-artifacts"):
        if wanted not in args:
            problems.append(f"Deployment/mlflow: {wanted} missing")
    if not any(a.startswith("--allowed-hosts=") and a.partition("=")[2] not in ("", "*") for a in args):
        problems.append("Deployment/mlflow: --allowed-hosts is not set to a list of hosts")
    env = {e["name"]: e for e in container.get("env", [])}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_AUTH_ADMIN_USERNAME",
                 "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"Deployment/mlflow: {name} does not come from a Secret")
    return problems
