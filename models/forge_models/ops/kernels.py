"""Choosing between the reference path and the CUDA kernels; the kernels are imported lazily.

Nothing here imports mamba_ssm or causal_conv1d at module level: CPU machines never have them
and `import forge_models` must work there. The decision is made per call from the config's
`kernels` field and the device of the input, so one model object serves both paths.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

import torch

KERNEL_MODULES = ("mamba_ssm.ops.triton.ssd_combined", "causal_conv1d")

FIXED_CONFIG_ENV = {"MAMBA_DETERMINISTIC": "1", "TRITON_CACHE_AUTOTUNING": "0"}
"""mamba_ssm's Triton kernels with one config each instead of autotuning: its deterministic mode
takes the cheapest config when cached autotuning is off, and makes its SSD backward reductions
deterministic (causal_conv1d's weight and bias gradients still are not: atomic adds, seen on an
H100). Autotuning took 114 s of a 6M model's first step on an H200, in every process; a small model
is launch-bound whatever the tile sizes. mamba_ssm reads these when its modules are imported, so
they must be set before (`use_fixed_kernel_configs`) and reach every Ray worker."""


def use_fixed_kernel_configs() -> None:
    """Set `FIXED_CONFIG_ENV` in this process (Ray workers started after it inherit it: see
    forge_platform.cluster.worker_env). Refused once mamba_ssm's Triton kernels are imported here:
    their configs were chosen then, and the setting would silently not apply."""
    imported = sorted(m for m in sys.modules if m.startswith("mamba_ssm.ops.triton"))
    if imported and any(os.environ.get(k) != v for k, v in FIXED_CONFIG_ENV.items()):
        raise RuntimeError(f"fixed kernel configs asked for after {imported[0]} was imported: its "
                           "autotuning configs are chosen at import; set them before anything imports mamba_ssm")
    os.environ.update(FIXED_CONFIG_ENV)


@functools.cache
def kernel_import_error() -> str | None:
    """None when the CUDA kernels import, else the reason they do not."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    for name in KERNEL_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a CUDA op that fails to load
            return f"import {name} failed: {exc!r}"
    return None


def check_kernels_choice(choice: str) -> None:
    """Fail early (at build time) when kernels="cuda" is forced but cannot work here."""
    if choice == "cuda" and (reason := kernel_import_error()) is not None:
        raise RuntimeError(
            f"kernels='cuda' was forced but the CUDA kernels are unavailable ({reason}); "
            "install the 'cuda' extra (mamba-ssm, causal-conv1d) on a GPU machine or use kernels='auto'"
        )


def kernel_path(choice: str, device: torch.device) -> tuple[str, bool]:
    """Which path a model built with `kernels=choice` takes on `device`, in words, and whether that
    deserves a warning: `kernels="auto"` on a GPU where the kernels fail to import falls back to the
    reference path, which is correct but several times slower (a broken mamba-ssm install)."""
    if choice == "reference":
        return "reference (kernels='reference')", False
    if device.type != "cuda":
        return f"reference ({device.type} device)", False
    reason = kernel_import_error()
    if reason is None:
        versions = ", ".join(f"{name} {_version(name)}" for name in ("mamba_ssm", "causal_conv1d"))
        return f"cuda kernels ({versions})", False
    return f"reference: the CUDA kernels are unavailable ({reason})", choice == "auto"


def _version(package: str) -> str:
    try:
        return importlib.import_module(package).__version__
    except Exception:  # noqa: BLE001 - a version is only informative
        return "?"


def use_kernels(choice: str, x: torch.Tensor) -> bool:
    """True when this call should take the kernel path for input `x`."""
    if choice == "reference":
        return False
    if choice == "cuda":
        check_kernels_choice(choice)
        if not x.is_cuda:
            raise RuntimeError(f"kernels='cuda' was forced but the input is on {x.device}")
        return True
    return x.is_cuda and kernel_import_error() is None


def ssd_kernels() -> ModuleType:
    """The mamba_ssm SSD module (`mamba_chunk_scan_combined`, `mamba_split_conv1d_scan_combined`)."""
    return importlib.import_module("mamba_ssm.ops.triton.ssd_combined")


def causal_conv1d_fn() -> Callable[..., torch.Tensor]:
    """causal_conv1d's `causal_conv1d_fn` (needs channel-last x and int32 seq_idx)."""
    return importlib.import_module("causal_conv1d").causal_conv1d_fn
