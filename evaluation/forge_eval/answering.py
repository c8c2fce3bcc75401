"""Turning a task's (prompt, answer) texts into the model's predictions, by either way of asking.

- "generate": greedy decoding of as many tokens as the answer has (plus a margin), then the text;
- "teacher_forcing": one forward pass over prompt + answer; the prediction is the model's top token
  at each answer position given the true tokens before it (far cheaper: no decode loop, and many
  requests share a forward). Exact match then means greedy decoding would produce the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from forge_eval.prompts import TextTokenizer, split_answer
from forge_eval.scoring import Scorer

ANSWER_MODES = ("generate", "teacher_forcing")


def predict(scorer: Scorer, tokenizer: TextTokenizer, prompts: Sequence[str], answers: Sequence[str], mode: str,
            desc: str = "", margin_tokens: int = 2) -> list[str]:
    """The model's answer text for each prompt (`answers` size the generation and drive teacher forcing)."""
    if mode not in ANSWER_MODES:
        raise ValueError(f"answer mode {mode!r}: must be one of {', '.join(ANSWER_MODES)}")
    if not prompts:
        return []
    pairs = [split_answer(tokenizer, prompt, answer) for prompt, answer in zip(prompts, answers, strict=True)]
    if mode == "generate":
        budget = max(len(answer) for _, answer in pairs) + margin_tokens
        return [tokenizer.decode(ids) for ids in scorer.greedy([context for context, _ in pairs], budget, desc)]
    return [tokenizer.decode(list(s.greedy_ids)) for s in scorer.score(pairs, desc)]
