"""Suites named `lm-eval:<task>`: an lm-evaluation-harness task run on the model through `ForgeLM`.

lm_eval is imported only when such a suite runs (or its names are checked), so forge_eval stays
light for everyone else. Metrics: `lmeval_<task>_<metric>` for each of the task's numeric results
(lm-eval's filter suffix `,none` dropped; stderr kept as `..._stderr`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from forge_eval.config import EvalConfig
from forge_eval.inputs import EvalInputs


def _manager(tasks: Sequence[str]) -> Any:
    try:
        from forge_eval.lm_eval_adapter import TASKS_DIR, task_manager
    except ImportError as err:
        raise ValueError(f"suites lm-eval:{','.join(tasks)} need lm_eval==0.4.13 (the test extra): {err}") from None
    ours = {path.stem for path in TASKS_DIR.glob("*.yaml")}
    # Indexing lm-eval's own tasks takes seconds: only when a task is not one of ours.
    return task_manager(include_defaults=not set(tasks) <= ours)


def check_lm_eval_tasks(tasks: Sequence[str]) -> None:
    """Refuse unknown lm-eval task names in one line, listing ours."""
    if not tasks:
        return
    known = set(_manager(tasks).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        from forge_eval.lm_eval_adapter import TASKS_DIR

        ours = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
        raise ValueError(f"eval.suites: unknown lm-eval task(s) {', '.join(unknown)}; ours are {ours} "
                         "(or any task lm-eval 0.4.13 knows)")


def run_lm_eval(task: str, model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """One lm-eval task on `model` (needs the tokenizer); numeric results as metrics."""
    import lm_eval

    from forge_eval.lm_eval_adapter import ForgeLM

    if inputs.tokenizer is None:
        raise ValueError(f"suite 'lm-eval:{task}' needs the model's tokenizer: none was given")
    lm = ForgeLM(model=model, tokenizer=inputs.tokenizer, scorer=inputs.scorer, max_length=cfg.lm_eval_max_length)
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=_manager([task]),
                                  limit=cfg.lm_eval_limit or None, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
                                  torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed)
    metrics = {}
    for name, value in out["results"].get(task, {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "," in name:
            metric, _ = name.split(",", 1)
            metrics[f"lmeval_{task}_{metric}"] = float(value)
    return metrics
