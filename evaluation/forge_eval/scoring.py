"""The one narrow interface the suites call a model through: `Scorer`.

Suites never call the model directly. They hand a `Scorer` lists of token ids and get back either
greedy continuations (`greedy`) or, for a known answer, its log-likelihood and the model's own
top choice at each of its tokens under teacher forcing (`score`). `ModelScorer` implements both
on any forge_models `LanguageModel` through today's reference `forge_models.generate`; a faster
decoder slots in as another `Scorer` without touching a suite.

Batching: `greedy` runs prompts of equal length together (a task may left-fill its prompts with a
neutral token so a batch shares one length); `score` packs several requests into one row as
separate documents (`seq_idx`), exactly as training packs documents, so one forward pass scores
many answers and none sees another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from forge_models import generate
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class ContinuationScore:
    """What teacher forcing says about one (context, continuation) request."""

    logprob: float
    """Sum of log p(continuation token | everything before it), nats."""
    greedy_ids: tuple[int, ...]
    """The model's top choice at each continuation position (given the true tokens before it)."""

    def is_greedy(self, continuation: Sequence[int]) -> bool:
        """Whether greedy decoding would have produced exactly `continuation`."""
        return list(self.greedy_ids) == list(continuation)


class Scorer(Protocol):
    """How suites query a model (reference generation today, a fast decoder later)."""

    def greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, desc: str = "") -> list[list[int]]:
        """Greedy continuation (up to `max_new_tokens` ids, prompt excluded) of each prompt."""
        ...

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "") -> list[ContinuationScore]:
        """Teacher-forced score of each (context ids, continuation ids)."""
        ...


class ModelScorer:
    """`Scorer` over a forge_models LanguageModel, in its own dtype, on its own device."""

    def __init__(self, model: nn.Module, max_batch_tokens: int = 16384, fill_id: int | None = None,
                 progress: bool = True) -> None:
        """`max_batch_tokens`: tokens per forward (rows x length); a longer single request still runs
        alone. `fill_id`: token prepended to shorter prompts so prompts of nearly equal length share
        a batch (None: only prompts of exactly equal length do)."""
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.fill_id = fill_id
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc or "eval", unit="prompt", disable=not self.progress or total < 2,
                    leave=False, dynamic_ncols=True)

    def _batches(self, prompts: Sequence[Sequence[int]], extra: int) -> list[list[int]]:
        """Indices of prompts grouped into batches of one length (after filling) within the token budget."""
        if self.fill_id is None:
            groups: dict[int, list[int]] = defaultdict(list)
            for i, p in enumerate(prompts):
                groups[len(p)].append(i)
            ordered = [groups[k] for k in sorted(groups)]
        else:  # longest first: a batch's first prompt sets the length the others are filled to
            ordered = [sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))]
        batches = []
        for group in ordered:
            current: list[int] = []
            for i in group:
                width = len(prompts[current[0]] if current else prompts[i]) + extra
                if current and (len(current) + 1) * width > self.max_batch_tokens:
                    batches.append(current)
                    current = []
                current.append(i)
            if current:
                batches.append(current)
        return batches

    @torch.no_grad()
    def greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, desc: str = "") -> list[list[int]]:
        """Greedy decoding through `forge_models.generate`, one call per batch of equal-length prompts."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model.eval()
        out: list[list[int]] = [[] for _ in prompts]
        with self._bar(len(prompts), desc) as bar:
            for batch in self._batches(prompts, max_new_tokens):
                width = max(len(prompts[i]) for i in batch)
                rows = [[self.fill_id] * (width - len(prompts[i])) + list(prompts[i]) for i in batch]
                ids = torch.tensor(rows, dtype=torch.long, device=self.device)
                generated = generate(self.model, ids, max_new_tokens=max_new_tokens, temperature=0.0)
                for row, i in enumerate(batch):
                    out[i] = generated[row, width:].tolist()
                bar.update(len(batch))
        return out

    @torch.no_grad()
    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "") -> list[ContinuationScore]:
        """Requests packed as documents into rows of up to `max_batch_tokens`; logits only where scored."""
        for context, continuation in requests:
            if not context or not continuation:
                raise ValueError("a scored request needs a non-empty context and continuation")
        self.model.eval()
        out: list[ContinuationScore | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        rows: list[list[int]] = []
        used: list[int] = []
        for i in order:  # first fit, longest first
            size = len(requests[i][0]) + len(requests[i][1]) - 1
            row = next((r for r in range(len(rows)) if used[r] + size <= self.max_batch_tokens), None)
            if row is None:
                rows.append([])
                used.append(0)
                row = len(rows) - 1
            rows[row].append(i)
            used[row] += size
        with self._bar(len(requests), desc) as bar:
            for row in rows:
                for i, result in zip(row, self._score_row([requests[i] for i in row])):
                    out[i] = result
                bar.update(len(row))
        return [s for s in out if s is not None]

    def _score_row(self, requests: list[tuple[Sequence[int], Sequence[int]]]) -> list[ContinuationScore]:
        ids: list[int] = []
        seq: list[int] = []
        targets: list[tuple[int, list[int]]] = []  # (row offset of the first scored logit, continuation)
        for doc, (context, continuation) in enumerate(requests):
            tokens = list(context) + list(continuation)[:-1]  # the last token is only ever a target
            targets.append((len(ids) + len(context) - 1, list(continuation)))
            ids += tokens
            seq += [doc] * len(tokens)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        seq_idx = torch.tensor([seq], dtype=torch.int32, device=self.device)
        hidden = self.model.hidden_states(input_ids, seq_idx=seq_idx)[0]
        weight = self.model.lm_head_weight()
        results = []
        for start, continuation in targets:
            logits = torch.nn.functional.linear(hidden[start:start + len(continuation)], weight).float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(continuation, device=logits.device)
            total = float(logprobs.gather(-1, target[:, None]).sum())
            results.append(ContinuationScore(total, tuple(logits.argmax(-1).tolist())))
        return results
