"""docs/deploy.md agrees with the manifests: the Secrets it has people create are exactly the ones
the pods read (with every key they need), and it installs the KubeRay version the schemas are from."""

from __future__ import annotations

import re
import shlex
from typing import Any, Iterator

from infra_layout import KUBERNETES, REPO
from kustomize_lite import Manifest

DOC = REPO / "docs" / "deploy.md"


def _secret_refs(node: Any) -> Iterator[tuple[str, str | None, bool]]:
    """(secret, key, optional) for every secretKeyRef and secret volume item under `node`."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            yield ref["name"], ref["key"], bool(ref.get("optional"))
        if "secret" in node and isinstance(node["secret"], dict) and "secretName" in node["secret"]:
            items = node["secret"].get("items") or [{"key": None}]
            for item in items:
                yield node["secret"]["secretName"], item["key"], bool(node["secret"].get("optional"))
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_refs(item)


def _documented_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the doc's `kubectl create secret generic` commands."""
    text = DOC.read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        if "create secret generic" not in line:
            continue
        words = shlex.split(line.split("#")[0])
        name = words[words.index("generic") + 1]
        keys = secrets.setdefault(name, set())
        for word in words:
            for flag in ("--from-literal=", "--from-file="):
                if word.startswith(flag):
                    keys.add(word[len(flag):].split("=")[0].rsplit("/", 1)[-1])
    return secrets


def test_doc_creates_exactly_the_secrets_the_pods_read(rendered: dict[str, list[Manifest]]) -> None:
    documented = _documented_secrets()
    for manifests in rendered.values():
        referenced = list(_secret_refs(manifests))
        assert {name for name, _, _ in referenced} == set(documented)
        for name, key, optional in referenced:
            assert optional or key is None or key in documented[name], f"{name}: key {key} not created in the doc"


def test_doc_installs_the_kuberay_version_of_the_schemas() -> None:
    provenance = (KUBERNETES / "schemas" / "PROVENANCE.md").read_text()
    version = re.search(r"KubeRay \(https://github.com/ray-project/kuberay\) v(\d+\.\d+\.\d+)", provenance).group(1)
    assert f"helm install kuberay-operator kuberay/kuberay-operator --version {version}" in DOC.read_text()
