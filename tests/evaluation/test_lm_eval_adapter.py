"""The lm-evaluation-harness adapter: our local tasks run end to end through `lm_eval.simple_evaluate`
offline, and its loglikelihood / rolling / generation answers are the model's own."""

from __future__ import annotations

import math

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # the test extra pins it: CI always has it
from forge_eval.lm_eval_adapter import ForgeLM, task_manager  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from tests.evaluation.test_phonebook import BookReader  # noqa: E402


@pytest.fixture(scope="module")
def manager():
    # Only our tasks (indexing lm-eval's own takes seconds); task sizes reach the tasks as metadata.
    return task_manager(include_defaults=False, metadata={"num_entries": 6, "length": 300})


def test_simple_evaluate_runs_our_tasks_offline(model, tokenizer_and_manifest, manager, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, _ = tokenizer_and_manifest
    run = dict(tasks=["forge_phonebook", "forge_niah"], task_manager=manager, limit=3)
    untrained = lm_eval.simple_evaluate(model=ForgeLM(model=model, tokenizer=tokenizer), **run)
    phonebook, niah = untrained["results"]["forge_phonebook"], untrained["results"]["forge_niah"]
    assert phonebook["sample_len"] == niah["sample_len"] == 3
    assert phonebook["exact_match,none"] == 0.0 and niah["string_match,none"] == 0.0
    assert 0.0 <= phonebook["digit_accuracy,none"] < 0.5
    # The same run with a reader that looks the number up in the book it is given: lm-eval's prompt,
    # stop strings and our scoring let a right answer through (the harness can pass as well as fail).
    reader = ForgeLM(model=model, tokenizer=tokenizer, scorer=BookReader(tokenizer, knows=True))
    knows = lm_eval.simple_evaluate(model=reader, **dict(run, tasks=["forge_phonebook"]))
    assert knows["results"]["forge_phonebook"]["exact_match,none"] == 1.0
    # the metadata reached the task: 6 names in each book
    docs = knows["samples"]["forge_phonebook"]
    assert all(d["doc"]["prompt"].split("\n\n")[0].count("\n") == 6 for d in docs)


def _request(kind: str, *args: object) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_and_rolling_are_the_models_own(model, tokenizer_and_manifest) -> None:
    tokenizer, _ = tokenizer_and_manifest
    lm = ForgeLM(model=model, tokenizer=tokenizer, max_length=64)
    text = "def loads(s):\n    return decode(s)\n"
    ids = tokenizer.encode(text)
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([[lm.prefix_token_id] + ids]))[0].float(), -1)
    expected = float(full[torch.arange(len(ids)), torch.tensor(ids)].sum())
    [rolling] = lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)])
    assert rolling == pytest.approx(expected, abs=1e-3)
    # windows shorter than the text: every token still scored exactly once, each with less context
    short = ForgeLM(model=model, tokenizer=tokenizer, max_length=8).loglikelihood_rolling(
        [_request("loglikelihood_rolling", text)])[0]
    assert math.isfinite(short) and short != pytest.approx(expected, abs=1e-3)
    context, continuation = "def loads(s):\n    return", " decode(s)"
    [(logprob, greedy)] = lm.loglikelihood([_request("loglikelihood", context, continuation)])
    head = tokenizer.encode(context)
    tail = tokenizer.encode(context + continuation)[len(head):]
    with torch.no_grad():
        logits = torch.log_softmax(model(torch.tensor([head + tail]))[0, len(head) - 1:-1].float(), -1)
    assert logprob == pytest.approx(float(logits.gather(-1, torch.tensor(tail)[:, None]).sum()), abs=1e-3)
    assert greedy == (logits.argmax(-1).tolist() == tail)
    [generated] = lm.generate_until([_request("generate_until", context, {"until": ["\n"], "max_gen_toks": 5})])
    assert "\n" not in generated and len(tokenizer.encode(generated)) <= 5
