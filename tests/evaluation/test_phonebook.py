"""Phonebook: names unique up to a 256K-token book, books sized in tokens, both formats, depth,
seeding, and the scores, end to end through the suite with a scorer that reads the book."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import pytest
from forge_eval import EvalConfig, EvalInputs, evaluate_model, make_questions, questions_of_length, score_number
from forge_eval.names import name_at, name_pool_size, sample_names
from forge_eval.scoring import ContinuationScore

LINE = re.compile(r"^(\w+ \w+): (\d{3}-\d{3}-\d{4})$", re.M)


def test_names_are_distinct_and_the_pool_holds_a_256k_book() -> None:
    names = sample_names(random.Random(0), 40_000)  # more than a 256K-token book holds (~22K at 12 tokens a line)
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in names[:1000])
    assert name_pool_size() > 10**9
    # distinct indices give distinct names across the mixed-radix boundaries, too
    edges = [0, 1, 7, 8, 9, name_pool_size() // 2, name_pool_size() - 1]
    assert len({name_at(i) for i in edges}) == len(edges)
    with pytest.raises(ValueError, match="outside"):
        name_at(name_pool_size())


@pytest.mark.parametrize("length", [256, 1024, 8192, 262144])
def test_books_fill_a_length_in_tokens(tokenizer_and_manifest, length: int) -> None:
    tokenizer, _ = tokenizer_and_manifest
    questions = questions_of_length(tokenizer, length, 2)
    for q in questions:
        tokens = len(tokenizer.encode(q.prompt))
        entries = LINE.findall(q.prompt.split("\n\n")[0])
        assert len(entries) == q.num_entries and len({n for n, _ in entries}) == q.num_entries
        line_tokens = tokens / q.num_entries
        assert length - 3 * line_tokens <= tokens <= length, (tokens, line_tokens)
        assert q.answer == dict(entries)[q.prompt.rsplit("of ", 1)[1].split("?")[0]]


def test_formats_depth_and_seed(tokenizer_and_manifest) -> None:
    tokenizer, _ = tokenizer_and_manifest
    standard = questions_of_length(tokenizer, 1024, 3, seed=1)
    assert [q.prompt for q in standard] == [q.prompt for q in questions_of_length(tokenizer, 1024, 3, seed=1)]
    assert standard[0].prompt != questions_of_length(tokenizer, 1024, 3, seed=2)[0].prompt
    # queries spread over the book: first line, middle, last line
    assert [q.depth for q in standard][::2] == [0.0, 1.0] and 0.4 < standard[1].depth < 0.6
    first = standard[0]
    book = LINE.findall(first.prompt)
    assert first.prompt.startswith("Phonebook:\n") and book[0][1] == first.answer
    assert first.prompt.count("Question:") == 3  # two in-context examples, then the query
    last = questions_of_length(tokenizer, 1024, 1, fmt="reversed", depth=1.0)[0]
    name = last.prompt.split("Find the phone number of ")[1].split(" in this")[0]
    entries = LINE.findall(last.prompt.split("\n\n")[1])
    assert entries[-1] == (name, last.answer)  # query first, the queried line at the very bottom
    with pytest.raises(ValueError, match="format 'sideways'"):
        questions_of_length(tokenizer, 1024, 1, fmt="sideways")
    by_entries = make_questions(16, 2, depth=0.0, num_examples=0)
    assert all(q.num_entries == 16 and "Question:" in q.prompt for q in by_entries)


def test_score_number() -> None:
    assert score_number(" 555-123-4567\nNext", "555-123-4567") == (True, 1.0)
    assert score_number("555-123-4560", "555-123-4567") == (False, 0.9)
    assert score_number("5", "555-123-4567") == (False, 0.1)
    assert score_number("", "555-123-4567") == (False, 0.0)


class BookReader:
    """A Scorer that answers from the book it is shown (or with fixed wrong digits): it checks the
    harness's plumbing (prompts, answer slots, decoding, scoring) without a model."""

    def __init__(self, tokenizer, knows: bool) -> None:
        self.tokenizer, self.knows = tokenizer, knows

    def _answer(self, prompt_ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(prompt_ids)
        name = text.rsplit("Answer: ", 1)[1].rstrip(":")
        number = dict(LINE.findall(text))[name] if self.knows else "000-000-0000"
        return " " + number

    def greedy(self, prompts, max_new_tokens, desc=""):
        return [self.tokenizer.encode(self._answer(p))[:max_new_tokens] for p in prompts]

    def score(self, requests, desc=""):
        return [ContinuationScore(0.0, tuple(self.tokenizer.encode(self._answer(c)))) for c, _ in requests]


@pytest.mark.parametrize("mode", ["generate", "teacher_forcing"])
def test_the_suite_scores_a_reader_that_knows_at_one_and_one_that_guesses_at_chance(
        model, tokenizer_and_manifest, mode: str) -> None:
    tokenizer, _ = tokenizer_and_manifest
    cfg = EvalConfig(suites=["phonebook"], phonebook_entries=[8], phonebook_lengths=[512],
                     phonebook_formats=["standard", "reversed"], phonebook_queries=4, answer_mode=mode)
    right = evaluate_model(model, cfg, EvalInputs(tokenizer=tokenizer, scorer=BookReader(tokenizer, True)))
    assert {k: v for k, v in right.items() if k.endswith("accuracy")} == {
        f"phonebook_{p}_{m}": 1.0 for p in ("8", "standard_512", "reversed_512") for m in ("accuracy", "digit_accuracy")}
    assert right["phonebook_standard_512_entries"] > 8
    wrong = evaluate_model(model, cfg, EvalInputs(tokenizer=tokenizer, scorer=BookReader(tokenizer, False)))
    assert wrong["phonebook_8_accuracy"] == 0.0
    assert 0.0 <= wrong["phonebook_8_digit_accuracy"] < 0.3  # zeros match a random number's digits ~1 in 10
