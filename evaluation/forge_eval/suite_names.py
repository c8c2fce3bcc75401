"""The names of the evaluation suites, apart from the suites themselves.

EvalConfig checks a config's suite names against these when it is loaded; the registry in suites.py
(which imports the config) holds the functions under the same names. Keeping the names here is
what lets the config be imported without the suites and the suites import the config.
"""

from __future__ import annotations

SUITE_NAMES = ("validation", "validation_plain", "phonebook", "ruler", "ppl")
"""Our own suites, in suites.SUITES' order."""

HELD_OUT_SUITES = ("validation", "validation_plain", "ppl")
"""The suites that read held-out packed rows (a val_manifest) and ask no question in text."""

LM_EVAL_PREFIX = "lm-eval:"
"""`lm-eval:<task>` names an lm-evaluation-harness task (forge_eval.lm_eval_suite)."""


def lm_eval_task(suite: str) -> str | None:
    """The task of an `lm-eval:<task>` suite name; None for our own suites."""
    return suite[len(LM_EVAL_PREFIX):] if suite.startswith(LM_EVAL_PREFIX) else None
