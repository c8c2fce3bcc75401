"""Design guard: the repository's `platform/` folder must never shadow the standard library's `platform`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()

RAY_PROBE = r"""
import json, os, sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, runtime_env={"working_dir": sys.argv[1]})

@ray.remote
def probe():
    import platform, forge_platform
    return {"cwd": os.getcwd(), "platform": platform.__file__, "system": platform.system(),
            "has_platform_dir": os.path.isdir("platform"), "forge_platform": forge_platform.__file__}

print("PROBE", json.dumps(ray.get(probe.remote())))
"""


def test_area_folders_are_not_packages() -> None:
    for area in ("platform", "models", "data_pipeline", "evaluation"):
        assert not (REPO / area / "__init__.py").exists(), f"{area}/__init__.py makes the area folder a package"


def test_import_platform_is_stdlib_in_this_process() -> None:
    import platform

    assert Path(platform.__file__).resolve().parent == STDLIB
    assert platform.system()  # the real module works


def test_import_platform_is_stdlib_from_repo_root() -> None:
    """`python -m jobs.<name>` runs with the repository root first on sys.path."""
    out = subprocess.run(
        [sys.executable, "-c", "import platform, forge_platform; print(platform.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert Path(out.stdout.strip()).resolve().parent == STDLIB


def test_import_platform_is_stdlib_in_ray_worker_with_repo_working_dir(tmp_path: Path) -> None:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run(
        [sys.executable, "-c", RAY_PROBE, str(REPO)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"the Ray probe printed nothing:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    result = json.loads(lines[0][len("PROBE "):])
    assert result["has_platform_dir"], "the worker did not run inside the uploaded repository"
    assert Path(result["platform"]).resolve().parent == STDLIB, result
    assert result["system"] == "Linux"


def test_the_ignored_label_is_the_same_in_data_and_models() -> None:
    """forge_data writes IGNORE_INDEX where no token is to be predicted and forge_models' losses skip
    IGNORE_INDEX; neither imports the other, so the platform, where they meet, checks they agree."""
    from forge_data import IGNORE_INDEX as written
    from forge_models import IGNORE_INDEX as skipped

    assert written == skipped
