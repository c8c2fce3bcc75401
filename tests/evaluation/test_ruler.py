"""RULER-style tasks: each prompt holds what its answer needs (and nothing that answers it by chance),
fits its length, places the needle at its depth, and RULER's string match scores it."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from forge_eval import EvalConfig, EvalInputs, evaluate_model, make_samples, string_match_all
from forge_eval.ruler import TASKS
from forge_eval.scoring import ContinuationScore

NEEDLE = re.compile(r"special magic numbers for (\w+) is: (\d{7})\.")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("haystack", ["filler", "text"])
def test_every_task_fits_its_length_and_holds_its_answers(tokenizer_and_manifest, task: str, haystack: str) -> None:
    tokenizer, _ = tokenizer_and_manifest
    samples = make_samples(task, tokenizer, 768, 2, haystack, seed=3)
    assert [s.prompt for s in samples] == [s.prompt for s in make_samples(task, tokenizer, 768, 2, haystack, seed=3)]
    assert samples[0].prompt != samples[1].prompt
    for s in samples:
        tokens = len(tokenizer.encode(s.prompt))
        assert 768 * 0.8 < tokens <= 768, tokens
        body, question = s.prompt.rsplit("\n\n", 1)
        if task.startswith("niah"):
            needles = NEEDLE.findall(body)
            assert len(needles) == (1 if task == "niah_single" else 4)
            asked = re.findall(r"numbers? for ([\w ]+?) mentioned", question)[0].split(" and ")
            assert sorted(v for k, v in needles if k in asked) == sorted(s.answers)
            assert len(s.answers) == {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4,
                                      "niah_multiquery": 2}[task]
        elif task == "vt":
            value = re.search(r"assigned the value (\d+)", question).group(1)
            bound = {value}
            for name, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", body):  # in order: the chain resolves
                if rhs.removeprefix("VAR ") in bound or rhs == value:
                    bound.add(name)
            assert bound - {value} == set(s.answers) and len(s.answers) == 5
        elif task == "cwe":
            counts = Counter(re.findall(r"^\d+\. (\w+)$", body, re.M))
            assert {w for w, c in counts.items() if c == 4} == set(s.answers)
            assert max(c for w, c in counts.items() if w not in s.answers) <= 2
        else:
            counts = Counter(body.split("\n")[1].split())
            assert tuple(w for w, _ in counts.most_common(3)) == s.answers


def test_the_needle_sits_at_its_depth(tokenizer_and_manifest) -> None:
    tokenizer, _ = tokenizer_and_manifest
    for depth in (0.0, 0.25, 0.5, 1.0):
        sample = make_samples("niah_single", tokenizer, 2048, 1, "filler", depth=depth)[0]
        body = sample.prompt.split("\n\n")[1]
        where = body.index("One of the special") / len(body)
        assert abs(where - depth) < 0.05, (depth, where)
    with pytest.raises(ValueError, match="RULER task 'niah_double'"):
        make_samples("niah_double", tokenizer, 1024, 1)


def test_string_match_all() -> None:
    assert string_match_all(["The numbers are 1234567 and 7654321."], [("1234567", "7654321")]) == 1.0
    assert string_match_all(["only 1234567", "nothing"], [("1234567", "7654321"), ("42",)]) == 0.25
    assert string_match_all(["FOO, bar"], [("foo", "BAR")]) == 1.0  # case-blind, as RULER


class NeedleReader:
    """A Scorer that answers with every 7-digit number (or variable) in the prompt it is shown: it
    finds all needles, so a wrong task/answer wiring would show up as a score below 1."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def _answer(self, prompt_ids) -> str:
        text = self.tokenizer.decode(prompt_ids)
        question = text.rsplit("\n\n", 1)[1]
        if "magic number" in question:
            keys = re.findall(r"numbers? for ([\w ]+?) mentioned", question)[0].split(" and ")
            return " " + ", ".join(v for k, v in NEEDLE.findall(text) if k in keys) + "."
        return " nothing."

    def greedy(self, prompts, max_new_tokens, desc=""):
        return [self.tokenizer.encode(self._answer(p)) for p in prompts]

    def score(self, requests, desc=""):
        return [ContinuationScore(0.0, tuple(self.tokenizer.encode(self._answer(c)))) for c, _ in requests]


def test_the_suite_reports_every_task_length_and_depth(model, tokenizer_and_manifest) -> None:
    tokenizer, _ = tokenizer_and_manifest
    cfg = EvalConfig(suites=["ruler"], ruler_lengths=[512], ruler_depths=[0.0, 1.0], ruler_samples=2,
                     ruler_haystacks=["filler", "text"])
    metrics = evaluate_model(model, cfg, EvalInputs(tokenizer=tokenizer, scorer=NeedleReader(tokenizer)))
    niah = [t for t in TASKS if t.startswith("niah")]
    for task in niah:
        for haystack in ("filler", "text"):
            assert metrics[f"ruler_{task}_{haystack}_512_score"] == 1.0, task
    assert metrics["ruler_niah_single_text_512_depth0_score"] == metrics["ruler_niah_single_text_512_depth100_score"] == 1.0
    for task in ("vt", "cwe", "fwe"):
        assert metrics.get(f"ruler_{task}_512_score", metrics.get(f"ruler_{task}_filler_512_score")) == 0.0
    scores = [v for k, v in metrics.items() if re.fullmatch(r"ruler_[a-z_]+_512_score", k) and "depth" not in k]
    assert metrics["ruler_512_score"] == pytest.approx(sum(scores) / len(scores))
