"""The shared `main()` shape of every job: parse `--config FILE` and overrides, or print `--help`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from forge_platform.config_loader import ConfigError, describe
from forge_platform.input_errors import INPUT_ERRORS
from forge_platform.job_config import load_job_config


def job_main(config_cls: type, run: Callable[[Any], Any], doc: str, argv: Sequence[str] | None = None) -> int:
    """`python -m jobs.X [--config spec.toml] [--section.field value ...]`; exit code 2 on a bad spec."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(doc.strip())
        print(f"\nFields of {config_cls.__name__} (override any with --section.field VALUE):")
        print("\n".join(describe(config_cls)))
        return 0
    path = None
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            args[i : i + 1] = ["--config", arg.split("=", 1)[1]]
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            print("error: --config needs a path", file=sys.stderr)
            return 2
        path = args[at + 1]
        del args[at : at + 2]
    try:
        cfg = load_job_config(config_cls, path, args)
    except ConfigError as err:
        print(f"error: invalid job spec: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except ConfigError as err:  # checks that need the inputs (manifests, checkpoints, the GPU's memory)
        print(f"error: invalid job spec: {err}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as err:  # the data or a checkpoint (input_errors.py): no traceback, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def plan_main(doc: str, argv: Sequence[str] | None = None) -> int:
    """`python -m jobs.plan --config spec.toml [overrides]`: every stage's memory plan.

    Exit 0 when every stage fits (or the GPU's memory is unknown), 1 when one does not, 2 on a bad spec."""
    import tomllib

    from forge_platform.job_config import CampaignConfig, PretrainConfig
    from forge_platform.memory_plan import gpu_capacity, plan_stages, unfit_message

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args or "--config" not in args or args.index("--config") + 1 >= len(args):
        print(doc.strip())
        return 0 if ("-h" in args or "--help" in args) else 2
    at = args.index("--config")
    path = args[at + 1]
    del args[at : at + 2]
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        cls = CampaignConfig if "stages" in raw else PretrainConfig
        cfg = load_job_config(cls, path, args)
    except (ConfigError, OSError, tomllib.TOMLDecodeError) as err:
        print(f"error: invalid job spec: {err}", file=sys.stderr)
        return 2
    model, stages = (cfg.planned_model, cfg.stages) if cls is CampaignConfig else (cfg.model, [cfg.stage])
    plans = plan_stages(model, stages, cfg.parallel, capacity=gpu_capacity(cfg.parallel))
    dims = cfg.parallel.dims
    print(f"memory plan of {path}: {cfg.parallel.num_workers} GPUs as {dims.describe()}, per GPU")
    for plan in plans:
        print(plan.table())
    unfit = [(s, p) for s, p in zip(stages, plans) if not p.fits]
    for stage, plan in unfit:
        print(unfit_message(model, stage, cfg.parallel, plan))
    return 1 if unfit else 0
