"""Starting Ray locally when the caller has not: the one place that knows the 2-core pitfalls."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise a local Ray if none is running; a caller's (or cluster's) Ray is left alone.

    Ray gets at least 4 logical CPUs: on a 2-core machine, actors holding every logical CPU leave
    none for Ray Data's read tasks and the pipeline hangs silently (see CPU_STACK.md). Token auth
    is disabled only for this local, single-machine instance, which runs without the dashboard.
    Ray's metrics stay on: docs/configuration.md ("Ray on a small machine") says what turning them
    off saves, a choice left to the user (RAY_enable_metrics_collection=0).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # address="local": a Ray of our own, never one left running on this machine.
    ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=True)
