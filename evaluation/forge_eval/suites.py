"""The registry of evaluation suites, and `evaluate_model`, which runs the ones a config names.

A suite is a plain function `(model, cfg, inputs) -> {metric name: value}`. The registry is a
plain dict; an unknown name fails loudly with the valid ones. Suites run in the order the config
lists them, on the model as given (the caller builds it and loads its weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from forge_eval.phonebook import TextTokenizer, phonebook_accuracy
from forge_eval.validation import validation_loss

if TYPE_CHECKING:  # the config validates its suite names against this registry
    from forge_eval.config import EvalConfig


@dataclass(frozen=True)
class EvalInputs:
    """What the suites read besides the model."""

    val_manifest: str | None = None
    """manifest.json of held-out packed shards (the validation suite needs it)."""
    tokenizer: TextTokenizer | None = None
    """The tokenizer the model was trained with (Phonebook needs it)."""


Suite = Callable[[nn.Module, "EvalConfig", EvalInputs], dict[str, float]]


def _validation(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Held-out loss (`val_loss`, `val_perplexity`, `val_tokens`) over `cfg.val_batches` rows."""
    if not inputs.val_manifest:
        raise ValueError("suite 'validation' needs held-out data: no val_manifest was given")
    return validation_loss(model, inputs.val_manifest, cfg.val_batches)


def _phonebook(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Lookup accuracy per book size (`phonebook_{n}_accuracy`, `phonebook_{n}_prompt_tokens`).

    Skipped (no metrics) without a tokenizer or with `phonebook_queries = 0`: a stage trained on
    shards made elsewhere may not have its tokenizer at hand.
    """
    metrics: dict[str, float] = {}
    if inputs.tokenizer is None or not cfg.phonebook_queries:
        return metrics
    for entries in cfg.phonebook_entries:
        metrics.update(phonebook_accuracy(model, inputs.tokenizer, entries, cfg.phonebook_queries))
    return metrics


SUITES: dict[str, Suite] = {"validation": _validation, "phonebook": _phonebook}


def get_suite(name: str) -> Suite:
    """The suite called `name`; a KeyError listing the valid names otherwise."""
    if name not in SUITES:
        raise KeyError(f"no evaluation suite {name!r}; the suites are: {', '.join(sorted(SUITES))}")
    return SUITES[name]


def evaluate_model(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Run `cfg.suites` in order on `model` and merge their metrics."""
    metrics: dict[str, float] = {}
    for name in cfg.suites:
        metrics.update(get_suite(name)(model, cfg, inputs))
    return metrics
