"""Connecting to Ray: the cluster a job was submitted to, or a local one started for it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import ray
from forge_models import FIXED_CONFIG_ENV

from forge_platform.config_sections import ParallelConfig


def worker_env(workspace: str | Path) -> dict[str, str]:
    """Environment for Ray workers: keep caches out of $HOME and DeepSpeed quiet on CPU. Cache folders
    the driver's environment already names are kept (the workers share the driver's caches)."""
    workspace = Path(workspace).resolve()
    env = {
        # DeepSpeed JIT-compiles C++ ops on first use: cache them in the workspace, once.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR") or str(workspace / ".cache" / "torch_extensions"),
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR") or str(workspace / ".cache" / "matplotlib"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    }
    if not _has_cuda():
        env["DS_ACCELERATOR"] = "cpu"
    # The kernel-config choice the driver made (a study's `autotune_kernels = false`): a submitted
    # job's workers do not inherit the driver's environment, only what runtime_env names.
    env.update({k: os.environ[k] for k in FIXED_CONFIG_ENV if k in os.environ})
    return env


def ensure_ray(num_cpus: int, workspace: str | Path = ".") -> None:
    """Join the cluster in RAY_ADDRESS (set by `ray job submit`), or start a local Ray.

    A local Ray gets more logical CPUs than there are training workers: with exactly as many,
    the workers hold every CPU and Ray Data's tasks never schedule (a silent hang on 2 cores).
    """
    if ray.is_initialized():
        return
    env = worker_env(workspace)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", runtime_env={"env_vars": env})
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The dashboard serves Ray's State API, which Ray Train's controller polls: without it the
    # driver's log fills with "Failed to query Ray Train Controller actor state".
    # address="local": always a new Ray of our own; a bare ray.init() would join any cluster left
    # on this machine (a `ray start` head, another job's), with other resources than asked for.
    forget_dead_cluster_address()
    dashboard_missing = _dashboard_dependency_error()
    if dashboard_missing:
        print(f"Ray's dashboard cannot start ({dashboard_missing}; `pip install 'ray[default]'` brings it): "
              "running without it, so Ray Train's state queries will log warnings", flush=True)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=not dashboard_missing,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )


def forget_dead_cluster_address() -> str:
    """Remove Ray's record of the last `ray start` cluster when nothing answers at its address, and
    return that address ('' when there was nothing to remove).

    `ray start` writes `<ray temp dir>/ray_current_cluster` and `ray stop` leaves it behind. Ray's State
    API resolves that address first, and Ray Train's placement-group cleaner queries the State API
    at every stage: with a dead address each query waits ~40 s, and every stage's end stalled 12 s
    (the cleaner's stop timeout; seen here after any test that ran `ray start`). A live address
    is left alone.
    """
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # another Ray layout: nothing to clean
        return ""
    path = Path(get_ray_address_file(None))
    try:
        address = path.read_text().strip()
    except OSError:
        return ""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return ""  # a cluster answers there
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)
    return address


def _dashboard_dependency_error() -> str:
    """Why Ray's dashboard cannot start here ('' if it can): minimal Ray installs lack its packages."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # a Ray without the check: let ray.init decide
        return ""
    error = get_dashboard_dependency_error()
    return str(error) if error else ""


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_resources(parallel: ParallelConfig, *, on_cluster: bool | None = None, poll_s: float = 5.0) -> None:
    """Refuse a worker group that this Ray cannot place (Ray Train would wait for it forever).

    A local Ray is checked once: it never grows. On a cluster (RAY_ADDRESS set) an autoscaler may
    add nodes, so the check waits up to `parallel.placement_timeout_s` for the cluster to hold the
    resources, then fails naming what was asked and what the cluster has.
    """
    on_cluster = bool(os.environ.get("RAY_ADDRESS")) if on_cluster is None else on_cluster
    need = {"CPU": parallel.num_workers * parallel.cpus_per_worker,
            "GPU": parallel.num_workers * parallel.use_gpu * parallel.gpu_share}
    deadline = time.monotonic() + (parallel.placement_timeout_s if on_cluster else 0.0)
    while True:
        have = ray.cluster_resources()
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0)}
        if not short or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
    if short:
        where = (f"in the cluster after waiting {parallel.placement_timeout_s:g} s for the autoscaler"
                 if on_cluster else "in this Ray")
        detail = ", ".join(f"{k}: {v:g} needed, {h:g} {where}" for k, (v, h) in short.items())
        fix = ("add nodes, raise parallel.placement_timeout_s, or lower parallel.num_workers / cpus_per_worker"
               if on_cluster else "raise ray_num_cpus or lower parallel.cpus_per_worker / num_workers")
        raise ValueError(
            f"parallel: {parallel.num_workers} workers x {parallel.cpus_per_worker:g} CPU"
            f"{f' + {parallel.gpu_share:g} GPU' if parallel.use_gpu else ''} cannot be placed ({detail}); {fix}"
        )
