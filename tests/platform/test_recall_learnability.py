"""The recall learnability benchmark scores exactly the answer digits of the practice documents."""

from __future__ import annotations

import random

import pytest
import torch
from forge_data import IGNORE_INDEX, TokenizerConfig
from forge_data.tokenizer import train_from_texts
from forge_eval.phonebook import answered_book
from forge_eval.practice import PracticeMix, associative_recall, practice_documents

from benchmarks.platform.recall_learnability import answer_spans, encode_all, one_cycle, rows_of


def test_answer_spans_are_the_looked_up_values() -> None:
    rng = random.Random(0)
    lookup = associative_recall(rng, 5, 4)
    values = [line.split("? ")[1] for line in lookup.split("Recall:\n")[1].splitlines()]
    assert [lookup[a:b] for a, b in answer_spans(lookup)] == values
    for fmt in ("standard", "reversed"):
        book = answered_book(rng, 4, 2, fmt)
        answer = book.rstrip("\n").rsplit(" ", 1)[1]  # the number after the final `Answer: <name>:`
        # The answered examples above the query are in the prompt, not asked: only the last number counts.
        assert [book[a:b] for a, b in answer_spans(book)] == [answer]


def test_answer_positions_and_rows_mark_the_answer_digit_labels() -> None:
    docs = list(practice_documents(40, 0, PracticeMix(phonebook_entries=[2, 4], pairs=[2, 6], queries=3)))
    tokenizer = train_from_texts(TokenizerConfig(model_type="bpe", vocab_size=512, show_progress=False), docs)
    encoded = encode_all(tokenizer, docs, processes=1)
    for doc, (ids, positions) in zip(docs, encoded, strict=True):
        assert ids == tokenizer.encode(doc)
        digits = "".join(doc[i] for a, b in answer_spans(doc) for i in range(a, b) if doc[i].isdigit())
        assert "".join(tokenizer.decode([ids[p]]) for p in positions) == digits
    seq_len = max(len(ids) for ids, _ in encoded)
    inputs, labels, answers = rows_of(encoded, seq_len)
    for row, (ids, positions) in enumerate(encoded):
        assert torch.equal(labels[row][answers[row]], torch.tensor([ids[p] for p in positions]))
        assert torch.equal(inputs[row, :len(ids) - 1], torch.tensor(ids[:-1]))
        assert (labels[row, len(ids) - 1:] == IGNORE_INDEX).all()


def test_the_schedule_runs_every_step_count_from_four() -> None:
    # At 20 steps a 5% warm-up is one step, and OneCycleLR divided by zero (warm-up length less one).
    for steps in range(4, 61):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = one_cycle(optimizer, 1e-3, steps)
        rates = []
        for _ in range(steps):
            optimizer.step()
            rates.append(optimizer.param_groups[0]["lr"])
            schedule.step()
        assert max(rates) == pytest.approx(1e-3) and rates[0] < 1e-3 and rates[-1] < 1e-3
