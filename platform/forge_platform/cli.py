"""The shared `main()` shape of every job: parse `--config FILE` and overrides, or print `--help`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from forge_platform.config_loader import ConfigError, describe
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
        run(cfg)
    except ConfigError as err:
        print(f"error: invalid job spec: {err}", file=sys.stderr)
        return 2
    return 0
