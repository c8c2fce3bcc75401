"""Phonebook: the paper's long-context lookup task, measured by greedy generation.

A book of `num_entries` "Name: number" lines is followed by a question about one name; the
answer is correct when the generated continuation begins with that name's number. Books are
generated from a seed, so every evaluation of every stage sees the same questions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from forge_models import generate
from torch import nn

FIRST_NAMES = ("Ada", "Ben", "Cleo", "Dara", "Emil", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena",
               "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tova", "Ugo", "Vera", "Wes", "Yara")
LAST_NAMES = ("Abbott", "Bishop", "Carver", "Dunn", "Ellis", "Frost", "Grant", "Hale", "Ives", "Jonas",
              "Keller", "Lowe", "Marsh", "Noble", "Olsen", "Pike", "Quill", "Reyes", "Stone", "Tate")


class TextTokenizer(Protocol):
    """What Phonebook needs of a tokenizer (forge_data's `Tokenizer` is one)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class PhonebookQuestion:
    prompt: str
    answer: str


def name_pool_size() -> int:
    """How many distinct names a book can hold (first x last names)."""
    return len(FIRST_NAMES) * len(LAST_NAMES)


def make_questions(num_entries: int, num_questions: int, seed: int = 0) -> list[PhonebookQuestion]:
    """`num_questions` books of `num_entries` distinct names each, one question per book."""
    rng = random.Random(f"phonebook-{num_entries}-{seed}")
    questions = []
    for _ in range(num_questions):
        names = rng.sample([f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES], num_entries)
        numbers = [f"{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}" for _ in names]
        book = "\n".join(f"{name}: {number}" for name, number in zip(names, numbers))
        target = rng.randrange(num_entries)
        prompt = f"Phonebook:\n{book}\n\nQuestion: what is the number of {names[target]}?\nAnswer: {names[target]}:"
        questions.append(PhonebookQuestion(prompt=prompt, answer=numbers[target]))
    return questions


@torch.no_grad()
def phonebook_accuracy(model: nn.Module, tokenizer: TextTokenizer, num_entries: int, num_questions: int,
                       seed: int = 0) -> dict[str, float]:
    """Fraction of questions whose greedy answer starts with the right number, and the book's length."""
    model.eval()
    correct, prompt_tokens = 0, 0
    for question in make_questions(num_entries, num_questions, seed):
        prompt_ids = tokenizer.encode(question.prompt)
        prompt_tokens = max(prompt_tokens, len(prompt_ids))
        budget = len(tokenizer.encode(" " + question.answer)) + 2
        prompt = torch.tensor([prompt_ids], device=next(model.parameters()).device)
        output = generate(model, prompt, max_new_tokens=budget, temperature=0.0)
        continuation = tokenizer.decode(output[0, len(prompt_ids):].tolist())
        correct += continuation.strip().startswith(question.answer)
    accuracy = correct / num_questions if num_questions else 0.0
    return {f"phonebook_{num_entries}_accuracy": accuracy, f"phonebook_{num_entries}_prompt_tokens": float(prompt_tokens)}
