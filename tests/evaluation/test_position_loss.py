"""Perplexity by position: buckets add up to the held-out loss, and positions restart at every
document of a packed row (seq_idx), so a token never claims context from another document."""

from __future__ import annotations

import math

import pytest
import torch
from forge_data import IGNORE_INDEX
from forge_data.loader import PackedShardLoader
from forge_eval import EvalConfig, EvalInputs, evaluate_model, loss_by_position, validation_loss
from forge_eval.position_loss import longest_rows
from forge_models.model import positions_from_seq_idx

from tests.evaluation.helpers import STDLIB, pack_folder


def test_buckets_add_up_to_the_validation_loss(model, tokenizer_and_manifest) -> None:
    _, manifest = tokenizer_and_manifest
    metrics = loss_by_position(model, manifest, num_rows=4, bucket=16, max_position=64, progress=False)
    val = validation_loss(model, manifest, 4)
    tokens = [metrics[f"pos_{s}_{s + 16}_tokens"] for s in range(0, 64, 16) if f"pos_{s}_{s + 16}_tokens" in metrics]
    assert sum(tokens) == val["val_tokens"]
    weighted = sum(metrics[f"pos_{s}_{s + 16}_loss"] * metrics[f"pos_{s}_{s + 16}_tokens"]
                   for s in range(0, 64, 16) if f"pos_{s}_{s + 16}_tokens" in metrics) / sum(tokens)
    assert weighted == pytest.approx(val["val_loss"], rel=1e-5)
    assert metrics["pos_0_16_ppl"] == pytest.approx(math.exp(metrics["pos_0_16_loss"]))


@pytest.mark.parametrize("document_resets", [True, False])
def test_batched_validation_equals_one_row_at_a_time(model, tokenizer_and_manifest, document_resets: bool) -> None:
    # Rows of 64 tokens, 3 per forward pass: 7 rows end in a part batch, and asking for more rows
    # than there are must count each row once.
    _, manifest = tokenizer_and_manifest
    available = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False).num_rows
    for rows in (7, available + 5):
        single = validation_loss(model, manifest, rows, document_resets=document_resets)
        batched = validation_loss(model, manifest, rows, batch_tokens=3 * 64, document_resets=document_resets)
        assert batched.keys() == single.keys()
        prefix = "val" if document_resets else "val_plain"
        assert batched[f"{prefix}_tokens"] == single[f"{prefix}_tokens"]
        assert batched[f"{prefix}_loss"] == pytest.approx(single[f"{prefix}_loss"], rel=1e-5)
    assert available > 7


def test_positions_restart_at_document_boundaries(model, tokenizer_and_manifest) -> None:
    _, manifest = tokenizer_and_manifest
    loader = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False)
    rows = [loader.next_batch() for _ in range(loader.num_rows)]
    # count, by hand, labelled tokens whose place in their own document *within the row* is < 8
    expected = 0
    for row in rows:
        seq, labels = row["seq_idx"][0], row["labels"][0]
        start = torch.cat([torch.tensor([True]), seq[1:] != seq[:-1]])
        place = torch.zeros_like(seq)
        for i in range(1, len(seq)):
            place[i] = 0 if start[i] else place[i - 1] + 1
        expected += int(((place < 8) & (labels != IGNORE_INDEX)).sum())
    assert any(len(set(r["seq_idx"][0].tolist())) > 1 for r in rows)  # the fixture packs several documents a row
    metrics = loss_by_position(model, manifest, num_rows=len(rows), bucket=8, max_position=8, progress=False)
    assert metrics["pos_0_8_tokens"] == expected
    assert metrics["pos_max_position"] == 8 and "pos_8_16_loss" not in metrics


def test_the_ppl_suite(model, tokenizer_and_manifest) -> None:
    _, manifest = tokenizer_and_manifest
    cfg = EvalConfig(suites=["ppl"], ppl_bucket=32, ppl_max_position=64, ppl_rows=2)
    metrics = evaluate_model(model, cfg, EvalInputs(val_manifest=manifest, progress=False))
    assert set(metrics) == {"pos_max_position"} | {f"pos_{s}_{s + 32}_{m}" for s in (0, 32) for m in ("loss", "ppl", "tokens")}
    with pytest.raises(ValueError, match="suite 'ppl' needs held-out data"):
        evaluate_model(model, cfg, EvalInputs())


def test_the_rows_scored_are_those_whose_documents_run_longest(tmp_path, model, tokenizer_and_manifest) -> None:
    # Forty short documents packed first, one long one after them: the first rows reach only a
    # document's few tokens. Reading the first rows (as before) measured nothing past the first bucket.
    tokenizer, _ = tokenizer_and_manifest
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(40):
        (corpus / f"a{k:02d}.txt").write_text(f"x = {k}\n", encoding="utf-8")
    (corpus / "z.txt").write_text((STDLIB / "json" / "decoder.py").read_text("utf-8"), encoding="utf-8")
    manifest = pack_folder(corpus, tokenizer.save(str(tmp_path / "tokenizer")), tmp_path / "data", seq_len=64,
                           rows_per_shard=64)
    loader = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False)
    reach = [int(positions_from_seq_idx(loader.next_batch()["seq_idx"]).max()) + 1 for _ in range(loader.num_rows)]
    assert reach[0] < 16 and max(reach) == 64
    chosen = longest_rows(manifest, 3, progress=False)
    expected = sorted(sorted(range(len(reach)), key=lambda i: (-reach[i], i))[:3])
    check = PackedShardLoader(manifest, micro_batch_size=1, shuffle=False)
    rows = [check.next_batch() for _ in range(len(reach))]
    assert [torch.equal(c["input_ids"], rows[i]["input_ids"]) for c, i in zip(chosen, expected, strict=True)] == [True] * 3
    metrics = loss_by_position(model, manifest, num_rows=1, bucket=16, max_position=64, progress=False)
    assert metrics["pos_max_position"] == 64 and "pos_48_64_loss" in metrics
