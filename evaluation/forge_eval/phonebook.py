"""Phonebook: the paper's long-context lookup task (Waleffe et al. 2024, Section 4.3 and Figure 7).

A book of "Name: number" lines holds one line per made-up name (forge_eval.names: unique within
any book up to 256K tokens and beyond). Two formats, as in the paper:

- standard: the book, then in-context example questions answered from the book, then the query;
- reversed: the query first ("find the number of ..."), then the book, then the same examples and
  the query's answer slot: the model must hold the question while reading the book.

A book is sized either by entries or by tokens of the run's tokenizer (the largest book whose whole
prompt fits). The queried line sits at a chosen depth (0 = first line, 1 = last). Answers are scored
by exact match of the number and by per-digit accuracy (the paper's "fuzzy" recall); random digits
score 0 and 0.1. Everything is generated from a seed: every stage sees the same questions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from forge_eval.names import name_pool_size, sample_names
from forge_eval.prompts import TextTokenizer, grow_to_length

FORMATS = ("standard", "reversed")
TOKENS_PER_ENTRY_GUESS = 12.0  # only the first guess of the book's size; measured lengths correct it


@dataclass(frozen=True)
class PhonebookQuestion:
    """One prompt and the number that answers it."""

    prompt: str
    answer: str
    num_entries: int = 0
    """Lines in the book."""
    depth: float = 0.0
    """Where the queried line sits: its index / (num_entries - 1)."""


def _number(rng: random.Random) -> str:
    return f"{rng.randrange(200, 1000)}-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}"


@dataclass(frozen=True)
class _Book:
    names: list[str]
    numbers: list[str]

    @classmethod
    def draw(cls, rng: random.Random, size: int) -> "_Book":
        names = sample_names(rng, size)
        return cls(names, [_number(rng) for _ in names])

    def prompt(self, num_entries: int, target: int, examples: Sequence[int], fmt: str) -> str:
        lines = "\n".join(f"{self.names[i]}: {self.numbers[i]}" for i in range(num_entries))
        shots = "".join(f"Question: what is the phone number of {self.names[i]}?\nAnswer: {self.names[i]}: "
                        f"{self.numbers[i]}\n\n" for i in examples)
        name = self.names[target]
        query = f"Question: what is the phone number of {name}?\nAnswer: {name}:"
        if fmt == "reversed":
            return f"Find the phone number of {name} in this phonebook.\n\nPhonebook:\n{lines}\n\n{shots}{query}"
        return f"Phonebook:\n{lines}\n\n{shots}{query}"


def _check(fmt: str, depth: float | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"phonebook format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"phonebook depth {depth!r}: must be in [0, 1]")


def _depth_of(question: int, num_questions: int, depth: float | None) -> float:
    """A fixed depth, or depths spread evenly over the book (first question at the top)."""
    if depth is not None:
        return depth
    return question / (num_questions - 1) if num_questions > 1 else 0.5


def _pick(rng: random.Random, num_entries: int, depth: float, num_examples: int) -> tuple[int, list[int]]:
    target = round(depth * (num_entries - 1))
    others = [i for i in range(num_entries) if i != target]
    return target, rng.sample(others, min(num_examples, len(others)))


def make_questions(num_entries: int, num_questions: int, seed: int = 0, fmt: str = "standard",
                   num_examples: int = 2, depth: float | None = None) -> list[PhonebookQuestion]:
    """`num_questions` books of `num_entries` distinct names each, one query per book."""
    _check(fmt, depth)
    if not 1 <= num_entries <= name_pool_size():
        raise ValueError(f"phonebook entries {num_entries}: must be in [1, {name_pool_size()}]")
    rng = random.Random(f"phonebook-{num_entries}-{seed}")
    questions = []
    for q in range(num_questions):
        book = _Book.draw(rng, num_entries)
        where = _depth_of(q, num_questions, depth)
        target, examples = _pick(rng, num_entries, where, num_examples)
        questions.append(PhonebookQuestion(book.prompt(num_entries, target, examples, fmt), book.numbers[target],
                                           num_entries, target / max(num_entries - 1, 1)))
    return questions


def answered_book(rng: random.Random, num_entries: int, num_examples: int, fmt: str = "standard") -> str:
    """A book of `num_entries` names in the suite's format with its query answered: training text
    (forge_eval.practice) that teaches the format. Books come from `rng`, never from the suite's seeds."""
    _check(fmt, None)
    book = _Book.draw(rng, num_entries)
    target, examples = _pick(rng, num_entries, rng.random(), num_examples)
    return book.prompt(num_entries, target, examples, fmt) + " " + book.numbers[target] + "\n"


def questions_of_length(tokenizer: TextTokenizer, length: int, num_questions: int, seed: int = 0,
                        fmt: str = "standard", num_examples: int = 2,
                        depth: float | None = None) -> list[PhonebookQuestion]:
    """Books whose whole prompt is at most `length` tokens of `tokenizer` (the largest that fits)."""
    _check(fmt, depth)
    rng = random.Random(f"phonebook-len{length}-{fmt}-{seed}")
    questions = []
    count_tokens = lambda text: len(tokenizer.encode(text))  # noqa: E731
    capacity = int(length / 4) + 8  # no entry is shorter than ~4 tokens: enough names for any fit
    for q in range(num_questions):
        book = _Book.draw(rng, capacity)
        where = _depth_of(q, num_questions, depth)
        # The examples and the target are fixed by depth once the size is known: size first, with
        # the same examples' names as a stand-in for the final ones (they are all similar in length).
        sub = random.Random(rng.random())

        def build(n: int) -> str:
            target, examples = _pick(random.Random(0), n, where, num_examples)
            return book.prompt(n, target, examples, fmt)

        try:
            n, _, _ = grow_to_length(build, count_tokens, length, TOKENS_PER_ENTRY_GUESS, minimum=min(2, capacity))
        except ValueError as err:
            raise ValueError(f"phonebook ({fmt}): {err}") from None
        target, examples = _pick(sub, n, where, num_examples)
        prompt = book.prompt(n, target, examples, fmt)
        while count_tokens(prompt) > length and n > 2:  # other examples may be a few tokens longer
            n -= 1
            target, examples = _pick(sub, n, where, num_examples)
            prompt = book.prompt(n, target, examples, fmt)
        questions.append(PhonebookQuestion(prompt, book.numbers[target], n, target / max(n - 1, 1)))
    return questions


def score_number(prediction: str, answer: str) -> tuple[bool, float]:
    """(exact: the prediction starts with the number, share of the number's digits right in place)."""
    predicted = prediction.strip()
    digits = [i for i, c in enumerate(answer) if c.isdigit()]
    right = sum(1 for i in digits if i < len(predicted) and predicted[i] == answer[i])
    return predicted.startswith(answer), right / len(digits) if digits else float(predicted.startswith(answer))
