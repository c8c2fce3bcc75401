"""The part of kustomize that infra/ uses, so the tests validate what `kubectl apply -k` sends.

The tests must not depend on a kustomize binary (kubectl carries one, but not every machine has
kubectl), so this renders an overlay the way kustomize does for exactly the features our
kustomizations use, and refuses any other (a key it does not know, a strategic-merge patch, a
generated name with a hash) instead of rendering it wrongly. Where kubectl is installed (our
machine image has kubectl 1.32 with kustomize v5.5.0), test_kustomize_lite.py checks that both
render every overlay identically. Supported:

- `resources`: files (YAML, several documents) and folders holding a kustomization, rendered first;
  a file outside the kustomization's folder is refused, as kustomize's default load restrictor does;
- `configMapGenerator` with `files` (key = file name, or `key=path`) and `literals`, only with
  `generatorOptions.disableNameSuffixHash: true`;
- `patches` whose file (or inline `patch`) is a JSON 6902 list of operations, applied with the
  `jsonpatch` library to every resource matching `target` (group, version, kind, name, namespace);
- `namespace`: set on every namespaced resource (and on ServiceAccount subjects without one);
- `images`: `newName`, `newTag`, `digest` for every `containers`/`initContainers` entry at any depth,
  as kustomize's image transformer does for custom resources too.

Transformers run in kustomize's order: patches, then namespace, then images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Manifest = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "generatorOptions",
                  "images", "patches"}
# Kinds without a namespace: the namespace transformer leaves them alone.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
                  "StorageClass", "PersistentVolume", "IngressClass"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render the way kustomize would."""


def render(directory: str | Path) -> list[Manifest]:
    """Render the kustomization in `directory` (with its bases) into a list of manifests."""
    root = Path(directory).resolve()
    path = root / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(kustomization) - SUPPORTED_KEYS)
    if unknown:
        raise KustomizeError(f"{path}: {unknown} not supported (supported: {sorted(SUPPORTED_KEYS)})")

    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (root / entry).resolve()
        if target.is_dir():
            manifests += render(target)
        else:
            manifests += load_documents(_inside(root, entry))
    manifests += generate_configmaps(root, kustomization)
    for patch in kustomization.get("patches", []):
        apply_patch(manifests, _patch_operations(root, patch), patch.get("target", {}))
    if "namespace" in kustomization:
        set_namespace(manifests, kustomization["namespace"])
    for image in kustomization.get("images", []):
        set_image(manifests, image)
    _check_unique(manifests, path)
    return manifests


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _inside(root: Path, entry: str) -> Path:
    path = (root / entry).resolve()
    if not path.is_relative_to(root):
        raise KustomizeError(f"{root}: {entry!r} is outside the kustomization's folder (kustomize refuses it)")
    if not path.is_file():
        raise KustomizeError(f"{root}: {entry!r} does not exist")
    return path


def generate_configmaps(root: Path, kustomization: dict[str, Any]) -> list[Manifest]:
    """The ConfigMaps of `configMapGenerator` (names without kustomize's content hash)."""
    generators = kustomization.get("configMapGenerator", [])
    if generators and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise KustomizeError(f"{root}: configMapGenerator needs generatorOptions.disableNameSuffixHash: true here")
    configmaps = []
    for generator in generators:
        extra = sorted(set(generator) - {"name", "files", "literals"})
        if extra:
            raise KustomizeError(f"{root}: configMapGenerator {generator.get('name')}: {extra} not supported")
        data: dict[str, str] = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = _inside(root, file).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        configmaps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                           "data": data})
    return configmaps


def _patch_operations(root: Path, patch: dict[str, Any]) -> list[dict[str, Any]]:
    if "path" in patch:
        operations = yaml.safe_load(_inside(root, patch["path"]).read_text())
    else:
        operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise KustomizeError(f"{root}: patch {patch.get('path', '(inline)')} is not a JSON 6902 list of "
                             "operations (strategic-merge patches are not supported here)")
    return operations


def matches(manifest: Manifest, target: dict[str, Any]) -> bool:
    """Whether a manifest is selected by a kustomize patch `target`."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    fields = {"group": group, "version": version, "kind": manifest["kind"],
              "name": manifest["metadata"].get("name"), "namespace": manifest["metadata"].get("namespace")}
    unknown = sorted(set(target) - set(fields))
    if unknown:
        raise KustomizeError(f"patch target keys {unknown} not supported")
    return all(fields[key] == value for key, value in target.items())


def apply_patch(manifests: list[Manifest], operations: list[dict[str, Any]], target: dict[str, Any]) -> None:
    """Apply one JSON 6902 patch to every matching manifest; a patch matching none is an error."""
    hits = [i for i, manifest in enumerate(manifests) if matches(manifest, target)]
    if not hits:
        raise KustomizeError(f"patch target {target} matches no resource")
    for i in hits:
        manifests[i] = jsonpatch.apply_patch(manifests[i], operations)


def set_namespace(manifests: list[Manifest], namespace: str) -> None:
    """Put every namespaced resource (and its ServiceAccount subjects) in `namespace`."""
    for manifest in manifests:
        if manifest["kind"] in CLUSTER_SCOPED:
            continue
        manifest["metadata"]["namespace"] = namespace
        for subject in manifest.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject.setdefault("namespace", namespace)


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry's port is not a tag."""
    name, _, digest = reference.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, _, tag = name.rpartition(":")
    return name, tag, digest or None


def set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    """kustomize's `images` entry: rename / retag / pin every container using `image['name']`."""
    extra = sorted(set(image) - {"name", "newName", "newTag", "digest"})
    if extra:
        raise KustomizeError(f"images entry {image.get('name')}: {extra} not supported")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and "image" in container:
                            container["image"] = _retag(container["image"], image)
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for manifest in manifests:
        visit(manifest)


def _retag(reference: str, image: dict[str, str]) -> str:
    name, tag, digest = split_image(reference)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    result = f"{name}:{tag}" if tag else name
    return f"{result}@{digest}" if digest and "newTag" not in image else result


def _check_unique(manifests: list[Manifest], path: Path) -> None:
    seen = set()
    for manifest in manifests:
        key = (manifest["kind"], manifest["metadata"].get("namespace"), manifest["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{path}: {key} defined twice (kustomize refuses an id conflict)")
        seen.add(key)

