"""lm-evaluation-harness (0.4.13) over a Hybrid Forge model: `ForgeLM`, registered as model "forge".

    import lm_eval
    from forge_eval.lm_eval_adapter import ForgeLM, task_manager
    lm = ForgeLM(checkpoint="runs/demo/checkpoints/.../checkpoint_000001")   # tokenizer found above it
    lm_eval.simple_evaluate(model=lm, tasks=["forge_phonebook"], task_manager=task_manager())

or `lm_eval --model forge --model_args checkpoint=...,tokenizer=... --include_path <TASKS_DIR>`
after `import forge_eval.lm_eval_adapter`. Every request goes through the suites' own `Scorer`
(teacher-forced requests packed as documents into one forward; greedy generation batched by
length), so the fast decoder, when it lands, serves lm-eval too. Our Phonebook and RULER NIAH ship
as local tasks in `TASKS_DIR` (generated from a seed, no download: runs offline).

Importing this module imports lm_eval (and its `datasets`): forge_eval itself never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from forge_eval.prompts import TextTokenizer, fill_token
from forge_eval.scoring import ModelScorer, Scorer

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
"""Our local lm-eval tasks (forge_phonebook, forge_niah): pass it as `include_path`."""


def task_manager(include_defaults: bool = True, **kwargs: Any):  # noqa: ANN201 - lm_eval's TaskManager
    """An lm-eval TaskManager that knows our local tasks (and, with `include_defaults`, lm-eval's
    own, which takes seconds to index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, **kwargs)


@register_model("forge")
class ForgeLM(LM):
    """An lm-eval `LM` over a forge_models language model and its tokenizer."""

    def __init__(self, checkpoint: str = "", tokenizer: str | TextTokenizer = "", model: nn.Module | None = None,
                 max_length: int | str = 8192, batch_tokens: int | str = 16384, device: str = "",
                 scorer: Scorer | None = None, progress: bool = False, **_: Any) -> None:
        """Either `checkpoint` (a folder with model_config.json and model.pt; `tokenizer` a path or
        found above it) or `model` with a `tokenizer` object. `max_length`: the longest window
        `loglikelihood_rolling` scores at once and the context kept for generation (tokens)."""
        super().__init__()
        from forge_data import load_tokenizer

        from forge_eval.checkpoint import find_tokenizer, load_model

        if model is None:
            if not checkpoint:
                raise ValueError("ForgeLM needs checkpoint=PATH (or a model and its tokenizer)")
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_model(checkpoint, device)
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(str(find_tokenizer(checkpoint, tokenizer)))
        self.model, self.tokenizer = model, tokenizer
        self.max_length = int(max_length)
        self.scorer = scorer or ModelScorer(model, int(batch_tokens), fill_token(tokenizer), progress)
        eos = getattr(tokenizer, "eos_id", -1)
        # The token an empty context is conditioned on (lm-eval's convention: EOS, else BOS).
        self.prefix_token_id = eos if eos >= 0 else max(getattr(tokenizer, "bos_id", 0), 0)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # lm-eval puts the word boundary's space in the continuation; move trailing context spaces there too.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tokenizer.encode(continuation)
        whole = self.tokenizer.encode(context + continuation)
        head = self.tokenizer.encode(context)
        if whole[:len(head)] == head and len(whole) > len(head):
            return head, whole[len(head):]
        return head, self.tokenizer.encode(continuation)

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives it) per request, packed forwards."""
        pairs = []
        for request in requests:
            context, continuation = self._encode_pair(*request.args)
            pairs.append((context[-(self.max_length - len(continuation)):] or context[-1:], continuation))
        scores = self.scorer.score(pairs, "lm-eval loglikelihood")
        return [(s.logprob, s.is_greedy(c)) for s, (_, c) in zip(scores, pairs)]

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Whole-text log-likelihood in windows of `max_length`, every token predicted once."""
        windows, owner = [], []
        for n, request in enumerate(requests):
            tokens = self.tokenizer.encode(request.args[0])
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(window))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, score in zip(owner, self.scorer.score(windows, "lm-eval rolling")):
            totals[n] += score.logprob
        return totals

    def generate_until(self, requests: list) -> list[str]:
        """Greedy continuation cut at the first stop string; requests grouped by their token budget."""
        out: list[str] = [""] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = request.args[1] or {}
            groups.setdefault(int(kwargs.get("max_gen_toks", 256)), []).append(i)
        for budget, indices in groups.items():
            prompts = [self.tokenizer.encode(requests[i].args[0])[-(self.max_length - budget):] for i in indices]
            prompts = [p or [self.prefix_token_id] for p in prompts]
            for i, ids in zip(indices, self.scorer.greedy(prompts, budget, "lm-eval generate")):
                text = self.tokenizer.decode(ids)
                until = requests[i].args[1].get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                out[i] = text
        return out
