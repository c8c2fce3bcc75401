"""forge_data runs on the Ray its caller started; it never starts one itself.

Where Ray starts, and how (logical CPUs, dashboard, auth, environment), is the platform's policy
(`forge_platform.cluster.ensure_ray`, called by every job), or a library user's own `ray.init`.
"""

from __future__ import annotations


def require_ray() -> None:
    """Fail with one clear line when no Ray is running in this process."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "forge_data needs a running Ray: call ray.init(num_cpus=N) first (the platform's jobs do), "
            "with N above the pipeline's actors (data.num_tokenize_actors), or Ray Data's read tasks find no CPU"
        )
