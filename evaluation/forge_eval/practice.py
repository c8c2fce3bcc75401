"""Recall practice: synthetic training documents in the formats the recall suites ask, so a small
model trained for minutes can learn the skill the suites measure (in-context lookup), the way the
paper's phonebook and Zoology's associative-recall studies train small models.

Two kinds, mixed with real text by the reproduction study (forge_platform.study):
- phonebook books with their query answered (forge_eval.phonebook.answered_book), standard and
  reversed format;
- associative recall (Zoology's multi-query associative recall, in words): a list of `key value`
  pairs, then many of its keys again, each followed by its value. Every query after the list is a
  lookup, so most of a document's tokens train recall, not only its last line.

The random stream is `practice-<seed>`: a different string from every suite's, so no book or
needle the suites ask about is trained on (names and numbers are drawn from pools of ~4e9 and ~9e8).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from forge_eval.names import SYLLABLES
from forge_eval.phonebook import FORMATS, answered_book


@dataclass
class PracticeMix:
    """How many documents of each kind, and how big."""

    phonebook_entries: list[int] = field(default_factory=lambda: [4, 48])
    """Smallest and largest book (names), drawn uniformly."""
    phonebook_examples: int = 2
    """Answered example questions before the query (as the suite's phonebook_examples)."""
    pairs: list[int] = field(default_factory=lambda: [8, 64])
    """Smallest and largest associative-recall list (key-value pairs)."""
    queries: int = 16
    """Lookups after each associative-recall list."""
    phonebook_share: float = 0.5
    """Share of the documents that are phonebooks; the rest are associative recall."""

    def __post_init__(self) -> None:
        for name in ("phonebook_entries", "pairs"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not 2 <= bounds[0] <= bounds[1]:
                raise ValueError(f"practice.{name} = {bounds}: must be [smallest, largest] with 2 <= smallest <= largest")
        if self.phonebook_examples < 0 or self.queries < 1:
            raise ValueError(f"practice.phonebook_examples = {self.phonebook_examples}, practice.queries = "
                             f"{self.queries}: must be >= 0 and >= 1")
        if not 0.0 <= self.phonebook_share <= 1.0:
            raise ValueError(f"practice.phonebook_share = {self.phonebook_share}: must be in [0, 1]")


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2))


def associative_recall(rng: random.Random, num_pairs: int, num_queries: int) -> str:
    """`num_pairs` distinct keys with a two-digit value each, then `num_queries` of them looked up."""
    keys: dict[str, str] = {}
    while len(keys) < num_pairs:
        keys.setdefault(_key(rng), f"{rng.randrange(100):02d}")
    pairs = list(keys.items())
    asked = [pairs[rng.randrange(num_pairs)] for _ in range(num_queries)]
    listed = ", ".join(f"{k} {v}" for k, v in pairs)
    lookups = "\n".join(f"{k}? {v}" for k, v in asked)
    return f"Remember: {listed}.\nRecall:\n{lookups}\n"


def practice_documents(count: int, seed: int, mix: PracticeMix | None = None) -> Iterator[str]:
    """`count` practice documents, the same ones for the same (count, seed, mix)."""
    mix = mix or PracticeMix()
    rng = random.Random(f"practice-{seed}")
    for _ in range(count):
        if rng.random() < mix.phonebook_share:
            entries = rng.randint(*mix.phonebook_entries)
            yield answered_book(rng, entries, min(mix.phonebook_examples, entries - 1), rng.choice(FORMATS))
        else:
            yield associative_recall(rng, rng.randint(*mix.pairs), mix.queries)
