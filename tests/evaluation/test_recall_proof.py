"""The harness can see recall, and can fail: a tiny attention model trained for a minute on synthetic
phonebook text answers the harness's own Phonebook questions, while the same model untrained
scores at chance (exact match 0: a 10-digit number is never guessed; digits near 0.1 or below).

What fits in CI's budget on 2 CPU cores is a book of one entry: copying the queried number from
the context (500 steps, ~1 min on a quiet machine). Books of two entries, which also need the
right line picked, reach ~0.5 of digits but no exact match in the same budget (700 steps): they
need several times longer.
"""

from __future__ import annotations

import random
import re

import torch
from forge_data import IGNORE_INDEX, TokenizerConfig
from forge_data.tokenizer import train_from_texts
from forge_eval import EvalConfig, EvalInputs, evaluate_model, make_questions
from forge_models import AttentionConfig, ModelConfig, build_model

LINE = re.compile(r"^(\w+ \w+): (\d{3}-\d{3}-\d{4})$", re.M)
STEPS, BATCH, LR = 500, 32, 3e-3


def training_document(prompt: str) -> tuple[str, str]:
    """(the book, lookups of every name in it): synthetic phonebook text in the harness's own format,
    from the harness's own generator (other seeds than the evaluation's)."""
    book = prompt.split("\n\n")[0]
    lookups = "".join(f"Question: what is the phone number of {name}?\nAnswer: {name}: {number}\n\n"
                      for name, number in LINE.findall(book))
    return book + "\n\n", lookups


def test_a_trained_attention_model_recalls_and_an_untrained_one_scores_at_chance() -> None:
    torch.manual_seed(0)
    corpus = [a + b for a, b in (training_document(q.prompt) for q in make_questions(1, 500, seed=12345))]
    tokenizer = train_from_texts(TokenizerConfig(vocab_size=1000, byte_fallback=False, show_progress=False), corpus)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=128, pattern="**", kernels="reference",
                      attention=AttentionConfig(num_heads=4, num_kv_groups=4, head_dim=32, rope=True))
    model = build_model(cfg)
    eval_cfg = EvalConfig(suites=["phonebook"], phonebook_entries=[1], phonebook_queries=32, seed=7)

    def phonebook() -> dict[str, float]:
        return evaluate_model(model, eval_cfg, EvalInputs(tokenizer=tokenizer, progress=False))

    untrained = phonebook()
    assert untrained["phonebook_1_accuracy"] == 0.0 and untrained["phonebook_1_digit_accuracy"] <= 0.2, untrained

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    for step in range(STEPS):
        docs = [training_document(q.prompt) for q in make_questions(1, BATCH, seed=1000 + step)]
        rows = [(tokenizer.encode(book), tokenizer.encode(book + lookups)) for book, lookups in docs]
        width = max(len(ids) for _, ids in rows)
        # Right padding needs no mask: causal attention never looks ahead. Loss on the lookups only
        # (the book's numbers are random: nothing to learn there).
        x = torch.zeros(BATCH, width, dtype=torch.long)
        y = torch.full((BATCH, width), IGNORE_INDEX)
        for i, (book, ids) in enumerate(rows):
            x[i, :len(ids)] = torch.tensor(ids)
            y[i, len(book) - 1:len(ids) - 1] = torch.tensor(ids[len(book):])
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / 30)
        loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    trained = phonebook()
    assert trained["phonebook_1_accuracy"] >= 0.75 and trained["phonebook_1_digit_accuracy"] >= 0.9, trained
