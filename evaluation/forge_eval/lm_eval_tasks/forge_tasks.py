"""Datasets and scores of our local lm-eval tasks (the YAML files beside this one), built from a
seed by forge_eval: no download, so lm-eval runs them offline.

lm-eval calls `*_dataset(**metadata, **dataset_kwargs)` to build the documents and
`process_results(doc, results)` to score each generated answer.
"""

from __future__ import annotations

import math
from typing import Any

from datasets import Dataset
from forge_eval.phonebook import make_questions, score_number
from forge_eval.ruler import make_samples, string_match_all


class _ApproxTokenizer:
    """Lengths in tokens of about 4 characters each, when a task is given no tokenizer to size with."""

    def encode(self, text: str) -> list[int]:
        return [0] * math.ceil(len(text) / 4)

    def decode(self, ids: list[int]) -> str:  # never called when sizing
        raise NotImplementedError


def phonebook_dataset(num_entries: int = 8, num_questions: int = 8, seed: int = 0, num_examples: int = 2,
                      **_: Any) -> dict[str, Dataset]:
    """Phonebook (standard format) of `num_entries` names, depths spread over the book."""
    questions = make_questions(int(num_entries), int(num_questions), int(seed), num_examples=int(num_examples))
    return {"test": Dataset.from_list([{"prompt": q.prompt, "answer": q.answer} for q in questions])}


def phonebook_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the number and the share of its digits right."""
    exact, digits = score_number(results[0], doc["answer"])
    return {"exact_match": float(exact), "digit_accuracy": digits}


def niah_dataset(length: int = 1024, num_samples: int = 8, haystack: str = "filler", seed: int = 0,
                 tokenizer: str = "", **_: Any) -> dict[str, Dataset]:
    """RULER's single needle at depths spread over the haystack, prompts of about `length` tokens
    (of `tokenizer` when given a SentencePiece model path, else of ~4 characters each)."""
    if tokenizer:
        from forge_data import load_tokenizer

        sizing = load_tokenizer(tokenizer)
    else:
        sizing = _ApproxTokenizer()
    samples = []
    for i in range(int(num_samples)):
        depth = i / (int(num_samples) - 1) if int(num_samples) > 1 else 0.5
        samples += make_samples("niah_single", sizing, int(length), 1, haystack, depth, int(seed) * 1000 + i)
    return {"test": Dataset.from_list([{"prompt": s.prompt, "answers": list(s.answers)} for s in samples])}


def niah_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER's string match: the share of the needle's values the answer contains."""
    return {"string_match": string_match_all([results[0]], [doc["answers"]])}
