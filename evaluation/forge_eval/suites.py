"""The registry of evaluation suites, and `evaluate_model`, which runs the ones a config names.

A suite is a plain function `(model, cfg, inputs) -> {metric name: value}`. The registry is a
plain dict; an unknown name fails loudly with the valid ones. Suites run in the order the config
lists them, on the model as given (the caller builds it and loads its weights). Suites that ask
for answers do so through `inputs.scorer` (forge_eval.scoring.Scorer), built from the model when
the caller gives none: a faster decoder is one argument away.

Metric names (docs/configuration.md, section Evaluation):
- validation: `val_loss`, `val_perplexity`, `val_tokens`;
- validation_plain: `val_plain_loss`, `val_plain_perplexity`, `val_plain_tokens` (the same rows, no resets);
- phonebook: `phonebook_<n>_{accuracy,digit_accuracy,prompt_tokens}` per book of n names, and
  `phonebook_<format>_<tokens>_{accuracy,digit_accuracy,entries}` per book length in tokens;
- ruler: `ruler_<task>_<haystack>_<tokens>_score` (cwe and fwe have no haystack:
  `ruler_<task>_<tokens>_score`), `ruler_niah_single_<haystack>_<tokens>_depth<percent>_score` per
  needle depth, and `ruler_<tokens>_score`, the mean over tasks;
- ppl: `pos_<start>_<end>_{loss,ppl,tokens}` per position bucket and `pos_max_position`;
- lm-eval:<task>: `lmeval_<task>_<metric>` (and `..._stderr`) for the task's numeric results.

Each suite's wall time is printed on stderr (`[eval] ruler: 42.0 s`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from statistics import mean

from torch import nn

from forge_eval.answering import predict
from forge_eval.config import EvalConfig
from forge_eval.inputs import EvalInputs
from forge_eval.lm_eval_suite import run_lm_eval
from forge_eval.phonebook import PhonebookQuestion, make_questions, questions_of_length, score_number
from forge_eval.position_loss import loss_by_position
from forge_eval.prompts import TextTokenizer, check_encodable, fill_token
from forge_eval.ruler import HAYSTACK_TASKS, RulerSample, make_samples, string_match_all
from forge_eval.scoring import ModelScorer
from forge_eval.suite_names import lm_eval_task
from forge_eval.validation import validation_loss

Suite = Callable[[nn.Module, EvalConfig, EvalInputs], dict[str, float]]


def _validation(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Held-out loss (`val_loss`, `val_perplexity`, `val_tokens`) over `cfg.val_batches` rows."""
    if not inputs.val_manifest:
        raise ValueError("suite 'validation' needs held-out data: no val_manifest was given")
    return validation_loss(model, inputs.val_manifest, cfg.val_batches, cfg.batch_tokens)


def _validation_plain(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Held-out loss over the same rows as `validation`, each row one stream: no state, attention or
    position reset at document boundaries (`val_plain_*`). A model trained with resets meets unrelated
    documents before the one it predicts; one trained without them sees what it trained on."""
    if not inputs.val_manifest:
        raise ValueError("suite 'validation_plain' needs held-out data: no val_manifest was given")
    return validation_loss(model, inputs.val_manifest, cfg.val_batches, cfg.batch_tokens, document_resets=False)


def _ask(cfg: EvalConfig, inputs: EvalInputs, prompts: list[str], answers: list[str], desc: str) -> list[str]:
    assert inputs.tokenizer is not None and inputs.scorer is not None
    check_encodable(inputs.tokenizer, prompts[0] + answers[0], desc.split()[0])
    return predict(inputs.scorer, inputs.tokenizer, prompts, answers, cfg.answer_mode, desc)


def _phonebook(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Lookup accuracy per book size in names and per book length in tokens (see the module docstring).

    Skipped (no metrics) without a tokenizer or with `phonebook_queries = 0`: a stage trained on
    shards made elsewhere may not have its tokenizer at hand.
    """
    metrics: dict[str, float] = {}
    if inputs.tokenizer is None or not cfg.phonebook_queries:
        return metrics
    tokenizer = inputs.tokenizer

    def measure(questions: list, prefix: str) -> None:
        answers = [" " + q.answer for q in questions]
        predictions = _ask(cfg, inputs, [q.prompt for q in questions], answers, f"phonebook {prefix}")
        scores = [score_number(p, q.answer) for p, q in zip(predictions, questions)]
        metrics[f"{prefix}_accuracy"] = mean(float(exact) for exact, _ in scores)
        metrics[f"{prefix}_digit_accuracy"] = mean(digits for _, digits in scores)

    for entries in cfg.phonebook_entries:
        questions = make_questions(entries, cfg.phonebook_queries, cfg.seed, num_examples=cfg.phonebook_examples,
                                   depth=cfg.phonebook_depth)
        measure(questions, f"phonebook_{entries}")
        metrics[f"phonebook_{entries}_prompt_tokens"] = float(max(len(tokenizer.encode(q.prompt)) for q in questions))
    for length in cfg.phonebook_lengths:
        for prefix, questions in phonebook_books(cfg, tokenizer, length):
            measure(questions, prefix)
            metrics[f"{prefix}_entries"] = float(mean(q.num_entries for q in questions))
    return metrics


def phonebook_books(cfg: EvalConfig, tokenizer: TextTokenizer, length: int) -> Iterator[tuple[str, list[PhonebookQuestion]]]:
    """The books of `length` tokens the phonebook suite asks about, one list per format, with its
    metric prefix: the suite and `check_suites_build` build exactly these."""
    for fmt in cfg.phonebook_formats:
        yield f"phonebook_{fmt}_{length}", questions_of_length(tokenizer, length, cfg.phonebook_queries, cfg.seed, fmt,
                                                               cfg.phonebook_examples, cfg.phonebook_depth)


def _ruler(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """RULER-style tasks at every length, haystack and (single needle) depth; string-match scores."""
    if inputs.tokenizer is None:
        raise ValueError("suite 'ruler' needs the model's tokenizer: none was given")
    metrics: dict[str, float] = {}

    def measure(samples: list, name: str) -> float:
        predictions = _ask(cfg, inputs, [s.prompt for s in samples], [s.target for s in samples], name)
        metrics[f"{name}_score"] = string_match_all(predictions, [s.answers for s in samples])
        return metrics[f"{name}_score"]

    for length in cfg.ruler_lengths:
        per_task: dict[str, list[float]] = {}
        for name, task_name, samples in ruler_sample_sets(cfg, inputs.tokenizer, length):
            per_task.setdefault(task_name, []).append(measure(samples, name))
        for task_name, scores in per_task.items():  # niah_single: the mean over its depths
            metrics[f"{task_name}_score"] = mean(scores)  # every depth has ruler_samples samples
        metrics[f"ruler_{length}_score"] = mean(metrics[f"{task_name}_score"] for task_name in per_task)
    return metrics


def ruler_sample_sets(cfg: EvalConfig, tokenizer: TextTokenizer, length: int
                      ) -> Iterator[tuple[str, str, list[RulerSample]]]:
    """The RULER samples of `length` tokens the suite asks, as (metric name, task's metric name,
    samples): the single needle once per depth (the depth x length sweep), every other task once. The
    suite and `check_suites_build` build exactly these."""
    for task in cfg.ruler_tasks:
        for haystack in cfg.ruler_haystacks if task in HAYSTACK_TASKS else [None]:
            task_name = f"ruler_{task}_{haystack}_{length}" if haystack else f"ruler_{task}_{length}"
            if task == "niah_single":
                for depth in cfg.ruler_depths:
                    yield (f"{task_name}_depth{round(depth * 100)}", task_name,
                           make_samples(task, tokenizer, length, cfg.ruler_samples, haystack, depth, cfg.seed))
            else:
                yield task_name, task_name, make_samples(task, tokenizer, length, cfg.ruler_samples,
                                                         haystack or "filler", None, cfg.seed)


def check_suites_build(tokenizer: TextTokenizer, cfg: EvalConfig) -> None:
    """Build every Phonebook book and RULER sample of the shortest configured length, as the suites
    will (cheap next to asking them): a length too short for a task, or characters the tokenizer
    cannot encode, fail here in one line (ValueError) before a model is loaded or trained."""
    texts = []
    if "phonebook" in cfg.suites:
        texts += [(q.prompt + " " + q.answer, "phonebook") for q in make_questions(4, 1, cfg.seed)]
        if cfg.phonebook_lengths:
            for prefix, questions in phonebook_books(cfg, tokenizer, min(cfg.phonebook_lengths)):
                texts += [(q.prompt + " " + q.answer, prefix) for q in questions]
    if "ruler" in cfg.suites:
        for name, _, samples in ruler_sample_sets(cfg, tokenizer, min(cfg.ruler_lengths)):
            texts += [(s.prompt + s.target, name) for s in samples]
    for text, task in texts:
        check_encodable(tokenizer, text, task)


def _ppl(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Held-out loss by position bucket, up to `cfg.ppl_max_position`, on `inputs.ppl_manifest` (held-out
    rows packed that long) or else on `inputs.val_manifest`."""
    manifest = inputs.ppl_manifest or inputs.val_manifest
    if not manifest:
        raise ValueError("suite 'ppl' needs held-out data: no val_manifest was given")
    return loss_by_position(model, manifest, cfg.ppl_rows, cfg.ppl_bucket, cfg.ppl_max_position,
                            progress=inputs.progress)


SUITES: dict[str, Suite] = {"validation": _validation, "validation_plain": _validation_plain, "phonebook": _phonebook,
                           "ruler": _ruler, "ppl": _ppl}


def get_suite(name: str) -> Suite:
    """The suite called `name` (or `lm-eval:<task>`); a KeyError listing the valid names otherwise."""
    task = lm_eval_task(name)
    if task:
        return lambda model, cfg, inputs: run_lm_eval(task, model, cfg, inputs)
    if name not in SUITES:
        raise KeyError(f"no evaluation suite {name!r}; the suites are: {', '.join(sorted(SUITES))}, lm-eval:<task>")
    return SUITES[name]


def evaluate_model(model: nn.Module, cfg: EvalConfig, inputs: EvalInputs) -> dict[str, float]:
    """Run `cfg.suites` in order on `model` and merge their metrics."""
    if inputs.scorer is None:
        fill = fill_token(inputs.tokenizer) if inputs.tokenizer is not None else None
        inputs = dataclasses.replace(inputs, scorer=ModelScorer(model, cfg.batch_tokens, fill, inputs.progress))
    metrics: dict[str, float] = {}
    for name in cfg.suites:
        started = time.perf_counter()
        metrics.update(get_suite(name)(model, cfg, inputs))
        # Wall time per suite on stderr: long-context suites can take minutes, and a user choosing
        # which to run per stage wants to see where the time goes.
        print(f"[eval] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return metrics
