"""The kustomize subset renders what kustomize would, and refuses what it cannot render faithfully."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from infra_layout import KUBERNETES
from kustomize_lite import KustomizeError, render, split_image

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:1.0"}]}}},
}
CUSTOM = {
    "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"},
    "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h", "image": "web:1.0"}]}}}},
}


def write(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, str):
            text = content
        else:
            text = yaml.safe_dump_all(content if isinstance(content, list) else [content])
        (folder / name).write_text(text)
    return folder


def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base", {
        "kustomization.yaml": {"namespace": "forge", "resources": ["app.yaml"]},
        "app.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "forge"}}, DEPLOYMENT, CUSTOM],
    })


def test_overlay_patches_namespaces_and_retags(tmp_path: Path) -> None:
    base(tmp_path)
    overlay = write(tmp_path / "overlay", {
        "kustomization.yaml": {
            "resources": ["../base"],
            "patches": [{"path": "patch.yaml", "target": {"kind": "Deployment", "name": "web"}}],
            "images": [{"name": "web", "newName": "registry.example/web", "newTag": "2.0"}],
        },
        "patch.yaml": yaml.safe_dump([{"op": "add", "path": "/spec/template/spec/nodeSelector",
                                       "value": {"pool": "gpu"}}]),
    })
    namespace, deployment, custom = render(overlay)
    assert "namespace" not in namespace["metadata"]  # cluster-scoped
    assert deployment["metadata"]["namespace"] == custom["metadata"]["namespace"] == "forge"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert "nodeSelector" not in custom["spec"]["headGroupSpec"]["template"]["spec"]  # not the target
    # Images are rewritten in custom resources too, at any depth, as kustomize does.
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:2.0"
    assert custom["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:2.0"


def test_configmap_generator_reads_files_and_literals(tmp_path: Path) -> None:
    folder = write(tmp_path / "k", {
        "kustomization.yaml": {"configMapGenerator": [{"name": "spec", "files": ["a.toml", "renamed=b.toml"],
                                                       "literals": ["x=1"]}],
                               "generatorOptions": {"disableNameSuffixHash": True}},
        "a.toml": "a = 1\n", "b.toml": "b = 2\n",
    })
    (configmap,) = render(folder)
    assert configmap["metadata"]["name"] == "spec"
    assert configmap["data"] == {"a.toml": "a = 1\n", "renamed": "b = 2\n", "x": "1"}


@pytest.mark.parametrize("kustomization, error", [
    ({"resources": ["app.yaml"], "commonLabels": {"a": "b"}}, "not supported"),
    ({"resources": ["../outside.yaml"]}, "outside"),
    ({"resources": ["missing.yaml"]}, "does not exist"),
    ({"configMapGenerator": [{"name": "c", "literals": ["a=b"]}]}, "disableNameSuffixHash"),
    ({"resources": ["app.yaml"], "patches": [{"patch": "spec:\n  replicas: 2\n", "target": {"kind": "Deployment"}}]},
     "strategic-merge"),
    ({"resources": ["app.yaml"], "patches": [{"patch": "[]", "target": {"kind": "StatefulSet"}}]}, "matches no"),
    ({"resources": ["app.yaml", "again.yaml"]}, "defined twice"),
], ids=["unknown-key", "outside-root", "missing-file", "hashed-name", "strategic-merge", "no-target", "duplicate"])
def test_refuses_what_it_cannot_render(tmp_path: Path, kustomization: dict, error: str) -> None:
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(DEPLOYMENT))
    folder = write(tmp_path / "k", {"kustomization.yaml": kustomization, "app.yaml": DEPLOYMENT,
                                    "again.yaml": DEPLOYMENT})
    with pytest.raises(KustomizeError, match=error):
        render(folder)


def test_the_overlays_patches_change_the_base() -> None:
    base_cluster = next(m for m in render(KUBERNETES / "base") if m["kind"] == "RayCluster")
    assert "nodeSelector" not in base_cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    for cloud in ("gke", "eks"):
        cluster = next(m for m in render(KUBERNETES / "overlays" / cloud) if m["kind"] == "RayCluster")
        assert cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]
        assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] != "hybrid-forge-gpu:0.1.0"


@pytest.mark.parametrize("reference, parts", [
    ("web", ("web", None, None)),
    ("web:1.0", ("web", "1.0", None)),
    ("registry:5000/team/web", ("registry:5000/team/web", None, None)),
    ("registry:5000/web:2@sha256:" + "a" * 64, ("registry:5000/web", "2", "sha256:" + "a" * 64)),
])
def test_split_image(reference: str, parts: tuple) -> None:
    assert split_image(reference) == parts


KUBECTL = shutil.which("kubectl")


@pytest.mark.parametrize("overlay", ["gke", "gke/campaign", "eks", "eks/campaign"])
def test_renders_what_kubectl_kustomize_renders(overlay: str) -> None:
    # The machine image ships kubectl (kustomize v5 inside it): the real renderer is the reference.
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: nothing to compare kustomize_lite against")
    folder = KUBERNETES / "overlays" / overlay
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    real = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def key(manifest: dict) -> tuple:
        return manifest["kind"], manifest["metadata"].get("namespace"), manifest["metadata"]["name"]

    assert sorted(map(key, real)) == sorted(map(key, render(folder)))
    assert {key(m): m for m in real} == {key(m): m for m in render(folder)}
