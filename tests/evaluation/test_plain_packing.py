"""Plain packing (no document resets): a packed row runs as one stream, the state of one document
flowing into the next, as `train.document_resets = false` trains and `validation_plain` evaluates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader, without_document_resets
from forge_eval import EvalConfig, EvalInputs, evaluate_model
from forge_models import build_model, get_preset, language_model_loss
from torch import nn


@pytest.fixture(scope="module")
def model(tokenizer_and_manifest) -> nn.Module:
    """hybrid-debug with large initial weights: an untrained model at the usual scale barely reads its
    context, so a stream and its reset documents would score within rounding of each other."""
    tokenizer, _ = tokenizer_and_manifest
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=tokenizer.vocab_size, kernels="reference",
                              init_std=0.3)
    return build_model(cfg).eval()


def _rows(manifest: str) -> dict[str, torch.Tensor]:
    """Two held-out rows that hold a document boundary (most rows of long modules do not)."""
    loader = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False)
    rows = [loader.next_batch() for _ in range(loader.num_rows)]
    mixed = [r for r in rows if len(set(r["seq_idx"][0].tolist())) > 1][:2]
    return {k: torch.cat([r[k] for r in mixed]) for k in mixed[0]}


def test_a_plain_row_is_one_stream(model, tokenizer_and_manifest) -> None:
    _, manifest = tokenizer_and_manifest
    batch = _rows(manifest)
    assert len(batch["input_ids"]) == 2
    plain = without_document_resets(batch)
    assert torch.equal(plain["input_ids"], batch["input_ids"]) and torch.equal(plain["labels"], batch["labels"])
    with torch.no_grad():
        # The model's own one-document-per-row path (seq_idx None, positions from 0) is the oracle.
        stream = model(batch["input_ids"])
        resets_off = model(plain["input_ids"], seq_idx=plain["seq_idx"], position_ids=plain["position_ids"])
        resets_on = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
    torch.testing.assert_close(resets_off, stream)
    # Every token after a row's first document boundary sees the documents before it; those before do not.
    first_boundary = int((batch["seq_idx"][0] != batch["seq_idx"][0, 0]).nonzero()[0])
    torch.testing.assert_close(resets_on[0, :first_boundary], stream[0, :first_boundary])
    assert not torch.allclose(resets_on[0, first_boundary:], stream[0, first_boundary:], atol=1e-4)


def test_the_validation_plain_suite(model, tokenizer_and_manifest) -> None:
    _, manifest = tokenizer_and_manifest
    num_rows = PackedShardLoader(manifest, micro_batch_size=1).num_rows  # every row: some hold boundaries
    cfg = EvalConfig(suites=["validation", "validation_plain"], val_batches=num_rows)
    metrics = evaluate_model(model, cfg, EvalInputs(val_manifest=manifest, progress=False))
    assert metrics["val_plain_tokens"] == metrics["val_tokens"]  # the same tokens are predicted
    loader = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(num_rows):
            row = loader.next_batch()
            n = int((row["labels"] != IGNORE_INDEX).sum())
            total += float(language_model_loss(model(row["input_ids"]), row["labels"])) * n
            count += n
    assert metrics["val_plain_loss"] == pytest.approx(total / count, rel=1e-6)  # the one-stream oracle
    assert abs(metrics["val_plain_loss"] - metrics["val_loss"]) > 2e-5  # and not the reset documents' loss (rounding: ~1e-6)
    with pytest.raises(ValueError, match="suite 'validation_plain' needs held-out data"):
        evaluate_model(model, EvalConfig(suites=["validation_plain"]), EvalInputs())
