"""Packing documents into one row computes exactly what each document computes alone.

For every family: outputs and parameter gradients of a packed row (with seq_idx) match the
documents run one by one (rel err <= 1e-5 in fp32), and without seq_idx they do not match,
so the test can fail. Document lengths cross the debug chunk size (8) and the conv width.
"""

from __future__ import annotations

import pytest
import torch

from forge_models import build_model, get_preset
from tests.models.helpers import FAMILIES, packed_seq_idx, rel_err

DOC_LENGTHS = [5, 13, 1, 9]  # 28 tokens: a 1-token doc, docs straddling chunk boundaries


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_equals_separate_forward_and_backward(name: str) -> None:
    model = build_model(get_preset(name))
    ids = torch.randint(0, model.config.vocab_size, (1, sum(DOC_LENGTHS)))
    seq_idx = packed_seq_idx(DOC_LENGTHS)
    probe = torch.randn(1, ids.shape[1], model.config.vocab_size)  # a random linear loss

    logits_packed = model(ids, seq_idx=seq_idx)
    (logits_packed * probe).sum().backward()
    grads_packed = _grads(model)
    model.zero_grad()

    pieces, start = [], 0
    for n in DOC_LENGTHS:
        logits = model(ids[:, start : start + n])
        (logits * probe[:, start : start + n]).sum().backward()  # grads accumulate over docs
        pieces.append(logits)
        start += n
    logits_alone = torch.cat(pieces, dim=1)
    grads_alone = _grads(model)

    assert rel_err(logits_packed, logits_alone) <= 1e-5
    assert grads_packed.keys() == grads_alone.keys()
    for key in grads_alone:
        assert rel_err(grads_packed[key], grads_alone[key]) <= 1e-5, key


@pytest.mark.parametrize("name", FAMILIES)
def test_without_resets_later_documents_differ(name: str) -> None:
    """The control: the same packed row with seq_idx=None leaks across documents."""
    model = build_model(get_preset(name))
    ids = torch.randint(0, model.config.vocab_size, (1, sum(DOC_LENGTHS)))
    with torch.no_grad():
        with_resets = model(ids, seq_idx=packed_seq_idx(DOC_LENGTHS))
        without = model(ids)
    first = DOC_LENGTHS[0]
    assert rel_err(without[:, :first], with_resets[:, :first]) <= 1e-5  # first doc is unaffected
    assert rel_err(without[:, first:], with_resets[:, first:]) > 1e-3


def test_explicit_position_ids_match_derived_ones() -> None:
    """RoPE positions restart per document whether given or derived from seq_idx."""
    model = build_model(get_preset("transformer-debug"))
    ids = torch.randint(0, 256, (1, sum(DOC_LENGTHS)))
    seq_idx = packed_seq_idx(DOC_LENGTHS)
    positions = torch.cat([torch.arange(n) for n in DOC_LENGTHS])[None]
    with torch.no_grad():
        assert torch.equal(model(ids, seq_idx, positions), model(ids, seq_idx))


def test_batch_rows_are_independent() -> None:
    """Two rows with different packings give each row's own result (no cross-row leakage)."""
    model = build_model(get_preset("hybrid-debug"))
    ids = torch.randint(0, 256, (2, 28))
    seq_idx = torch.cat([packed_seq_idx(DOC_LENGTHS), packed_seq_idx([14, 14])])
    with torch.no_grad():
        both = model(ids, seq_idx)
        row1 = model(ids[1:], seq_idx[1:])
    assert rel_err(both[1:], row1) <= 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_backend_mask_matches_sdpa_forward() -> None:
    """The flex_attention block mask (the CUDA path) encodes the same doc-causal mask.

    CPU flex runs eagerly and has no backward; the GPU test compares gradients too.
    """
    import dataclasses

    cfg = get_preset("transformer-debug")
    sdpa = build_model(dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, backend="sdpa")))
    flex = build_model(dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, backend="flex")))
    flex.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 256, (1, sum(DOC_LENGTHS)))
    seq_idx = packed_seq_idx(DOC_LENGTHS)
    with torch.no_grad():
        assert rel_err(flex(ids, seq_idx), sdpa(ids, seq_idx)) <= 1e-5
