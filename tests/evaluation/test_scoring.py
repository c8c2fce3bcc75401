"""ModelScorer: packing requests as documents changes no score, and batched greedy decoding is
exactly one-prompt-at-a-time decoding."""

from __future__ import annotations

import torch
from forge_eval import ModelScorer
from forge_models import generate


def test_packed_scores_equal_each_request_alone(model) -> None:
    g = torch.Generator().manual_seed(0)
    requests = [(torch.randint(4, 500, (n,), generator=g).tolist(), torch.randint(4, 500, (k,), generator=g).tolist())
                for n, k in ((30, 3), (7, 1), (50, 5), (12, 2))]
    packed = ModelScorer(model, max_batch_tokens=200, progress=False).score(requests)
    alone = ModelScorer(model, max_batch_tokens=1, progress=False).score(requests)  # one request per forward
    for p, a, (context, continuation) in zip(packed, alone, requests):
        assert abs(p.logprob - a.logprob) < 1e-4 and p.greedy_ids == a.greedy_ids
        # and both are what a plain forward over the request says
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids)[0, len(context) - 1:-1].float(), -1)
        assert abs(p.logprob - float(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum())) < 1e-4
        assert list(p.greedy_ids) == logprobs.argmax(-1).tolist()


def test_batched_greedy_equals_one_prompt_at_a_time(model) -> None:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 500, (n,), generator=g).tolist() for n in (9, 9, 14, 9)]
    batched = ModelScorer(model, max_batch_tokens=1000, progress=False).greedy(prompts, 4)
    for prompt, out in zip(prompts, batched):
        alone = generate(model, torch.tensor([prompt]), max_new_tokens=4, temperature=0.0)[0, len(prompt):].tolist()
        assert out == alone
    # with a fill token, shorter prompts are left-filled into the longest's batch: still 4 new tokens each
    filled = ModelScorer(model, max_batch_tokens=1000, fill_id=7, progress=False).greedy(prompts, 4)
    assert [len(o) for o in filled] == [4] * 4 and filled[2] == batched[2]
