"""Tokenize once, pack many times: the token store, the long-document policy and its accounting.

Hand-made stores (documents of exactly known token counts, no tokenizer) make every figure exact;
a real corpus through a real tokenizer checks the store round trip against the fused path.
"""

from __future__ import annotations

import filecmp
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forge_data import (CleaningConfig, DataPipelineConfig, LongContextConfig, Manifest, PackingConfig,
                        TokenizerConfig, TokenStore, pack_tokens, tokenize_corpus)
from forge_data.long_context import hash_order, mix_weights, tokens_in_long_documents
from forge_data.pipeline import run_pipeline
from forge_data.shards import read_shard
from forge_data.sources import list_input_files, plan_work_units
from forge_data.stages import ShardBuilder, read_clean_unit
from forge_data.token_store import UnitTokens, write_unit_tokens
from tests.data.corpora import BAD_CORPUS_MAX_REJECTED

EOS = 1


def make_store(root: Path, units: list[list[int]]) -> TokenStore:
    """A store whose unit u holds documents of lengths units[u]; document k's tokens are all k + 2."""
    entries, k = [], 0
    for u, lengths in enumerate(units):
        doc_ids = [f"doc{k + i:02d}" for i in range(len(lengths))]
        flat = np.concatenate([np.full(n, k + i + 2, np.int32) for i, n in enumerate(lengths)])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = UnitTokens(doc_ids, flat, offsets, np.asarray(lengths, np.int64) * 3)
        path = write_unit_tokens(str(root), u, tokens)
        entries.append({"unit_index": u, "path": path, "docs_in": len(lengths) + 1, "num_docs": len(lengths),
                        "num_tokens": int(sum(lengths)), "parts": [{"name": f"f{u}", "start": 0, "end": 9, "sha256": "x"}],
                        # one document per unit was rejected while cleaning
                        "records": [{"doc_id": f"bad{u}", "reason": "empty", "action": "rejected", "num_bytes": 0}]})
        k += len(lengths)
    store = TokenStore(str(root), {"sha256": "t", "vocab_size": 99, "bos_id": -1, "eos_id": EOS, "pad_id": -1},
                       [{"name": f"f{u}", "size": 9, "format": "text", "compression": "none"} for u in range(len(units))],
                       {}, {"tokenizer_path": "/nowhere/tokenizer.model"}, entries)
    store.save()
    return TokenStore.load(str(root))


UNITS = [[300, 40, 40], [1000, 5]]  # 1385 tokens; 1300 of them in documents longer than 256


def pack(store: TokenStore, out: Path, seq_len: int = 512, **policy) -> Manifest:
    packing = PackingConfig(seq_len=seq_len, long_doc_policy=policy.pop("long_doc_policy", "split"))
    # The hand-made stores lose a document a unit on purpose (test_data_loss.py tests the limit).
    cfg = DataPipelineConfig(output_dir=str(out), packing=packing, shard_tokens=seq_len * 4, max_rejected_share=1.0,
                             long_context=LongContextConfig(**policy))
    return pack_tokens(store, cfg)


def packed_documents(out: Path) -> Counter:
    """Tokens packed per document id, read back from the shards' segment files."""
    manifest = Manifest.load(str(out))
    found: Counter = Counter()
    for shard in manifest.shards:
        for s in pq.read_table(out / shard.path.replace(".parquet", ".segments.parquet")).to_pylist():
            found[s["doc_id"]] += s["num_tokens"]
    return found


def rejected(out: Path) -> dict[str, str]:
    return {r["doc_id"]: r["reason"] for r in pq.read_table(out / "rejections.parquet").to_pylist()}


def test_long_document_share_is_exact_on_a_hand_made_store(tmp_path):
    store = make_store(tmp_path / "store", UNITS)
    m = pack(store, tmp_path / "a", previous_seq_len=256)
    assert m.counts["tokens_written"] == 1385 and m.counts["tokens_in_long_docs"] == 1300
    assert m.long_doc_share == 1300 / 1385 and m.previous_seq_len == 256
    # "longer than" is strict: a document of exactly the previous length is not long
    assert pack(store, tmp_path / "b", previous_seq_len=300).long_doc_share == 1000 / 1385
    # whole-document lengths count, not what packing kept of them: 300 + 512 of 897 written
    m = pack(store, tmp_path / "c", long_doc_policy="truncate", previous_seq_len=256)
    assert m.counts["tokens_written"] == 897 and m.long_doc_share == 812 / 897
    assert pack(store, tmp_path / "d").long_doc_share is None  # a first stage: nothing to compare with
    # the rows hold what the store holds: document k's tokens, all k + 2, and its EOS-free length
    rows = read_shard(str(tmp_path / "a" / m.shards[0].path))
    assert (rows["input_ids"][0][:300] == 2).all() and (rows["input_ids"][0][300:340] == 3).all()


def test_select_leaves_short_documents_out_and_says_why(tmp_path):
    store = make_store(tmp_path / "store", UNITS)
    m = pack(store, tmp_path / "out", min_doc_tokens=100, previous_seq_len=256)
    assert packed_documents(tmp_path / "out") == {"doc00": 300, "doc03": 1000}
    assert rejected(tmp_path / "out") == {"bad0": "empty", "bad1": "empty", "doc01": "long_context_filtered",
                                          "doc02": "long_context_filtered", "doc04": "long_context_filtered"}
    c = m.counts
    assert (c["docs_in"], c["docs_packed"], c["docs_rejected"], c["tokens_filtered"]) == (7, 2, 5, 85)
    assert m.long_doc_share == 1.0


def test_upweight_repeats_long_documents(tmp_path):
    store = make_store(tmp_path / "store", UNITS)
    m = pack(store, tmp_path / "out", upweight_min_tokens=500, upweight_factor=3, previous_seq_len=256)
    assert packed_documents(tmp_path / "out") == {"doc00": 300, "doc01": 40, "doc02": 40, "doc03": 3000, "doc04": 5}
    c = m.counts
    assert (c["docs_packed"], c["docs_repeated"], c["tokens_repeated"], c["tokens_written"]) == (5, 2, 2000, 3385)
    assert m.long_doc_share == 3300 / 3385


def test_mix_reaches_the_share_and_accounts_for_what_it_leaves_out(tmp_path):
    # long side (>= 100 tokens): 300 + 1000; base: 40 + 40 + 5 + ten documents of 10 tokens = 185
    store = make_store(tmp_path / "store", [[300, 40, 40] + [10] * 10, [1000, 5]])
    # 1300 / 1485 = 0.875 long; asking for 0.9 leaves ~144 base tokens: some base documents go
    m = pack(store, tmp_path / "out", mix_min_tokens=100, mix_long_share=0.9, previous_seq_len=99)
    kept = packed_documents(tmp_path / "out")
    assert kept["doc00"] == 300 and kept["doc13"] == 1000  # the short side was the one cut
    base = sum(n for d, n in kept.items() if d not in ("doc00", "doc13"))
    assert base <= 1300 * 0.1 / 0.9 < base + 40  # the budget, to within one document
    mixed_out = {d for d, r in rejected(tmp_path / "out").items() if r == "long_context_mixed_out"}
    assert mixed_out and not mixed_out & set(kept)
    c = m.counts
    assert c["docs_in"] == c["docs_packed"] + c["docs_rejected"] == 17
    assert c["tokens_tokenized"] - c["tokens_filtered"] == c["tokens_written"] == 1300 + base
    assert m.long_doc_share == 1300 / (1300 + base)


def test_mix_weights_cut_whichever_side_is_over():
    lengths = np.array([100, 200] + [10] * 20)
    ids = [f"d{i}" for i in range(len(lengths))]
    ones = np.ones(len(lengths), np.int64)
    w = mix_weights(ones, lengths, ids, LongContextConfig(mix_min_tokens=50, mix_long_share=0.75))
    assert (w[:2] == 1).all() and (lengths * w)[2:].sum() == 100  # 300 long : 100 base, exactly 3:1
    w = mix_weights(ones, lengths, ids, LongContextConfig(mix_min_tokens=50, mix_long_share=0.5))
    assert (w[2:] == 1).all() and (lengths * w)[:2].sum() <= 200 and w[:2].sum() == 1  # too long: one goes
    w = mix_weights(ones, lengths, ids, LongContextConfig(mix_min_tokens=50, mix_long_share=1.0))
    assert list(w) == [1, 1] + [0] * 20
    with pytest.raises(ValueError, match=r"^data.long_context.mix_min_tokens = 500: no document has that many"):
        mix_weights(ones, lengths, ids, LongContextConfig(mix_min_tokens=500, mix_long_share=0.5))
    # the order is the ids', not the corpus's: the same documents listed in reverse keep the same ones
    assert list(hash_order(ids[::-1])) == [len(ids) - 1 - i for i in hash_order(ids)]


def test_tokens_in_long_documents_counts_pieces_of_long_documents():
    piece_doc, piece_len = np.array([0, 0, 1, 2]), np.array([8, 2, 4, 6])
    assert tokens_in_long_documents(piece_doc, piece_len, np.array([10, 4, 6]), longer_than=5) == 16


@pytest.mark.parametrize("kw, line", [
    (dict(upweight_factor=2), "data.long_context.upweight_min_tokens = 0: must be >= 1 when upweight_factor = 2"),
    (dict(mix_long_share=1.5, mix_min_tokens=10), "data.long_context.mix_long_share = 1.5: must be in [0.0, 1.0]"),
    (dict(mix_long_share=0.5), "data.long_context.mix_long_share = 0.5: must be in (0, 1] with mix_min_tokens >= 1"),
    (dict(mix_min_tokens=10), "data.long_context.mix_long_share = 0.0: must be in (0, 1] with mix_min_tokens >= 1"),
    (dict(mix_min_tokens=10, mix_long_share=0.5, min_doc_tokens=5),
     "data.long_context.mix_long_share = 0.5: must be 0 when min_doc_tokens = 5"),
    (dict(previous_seq_len=-1), "data.long_context.previous_seq_len = -1: must be >= 0"),
])
def test_bad_policies_are_refused_in_one_line(kw, line):
    with pytest.raises(ValueError) as err:
        LongContextConfig(**kw)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


# --- a real corpus through a real tokenizer ------------------------------------------------------
CLEANING = CleaningConfig(max_doc_bytes=50_000)


@pytest.fixture()
def tokenizer_path(small_tokenizer, tmp_path):
    return small_tokenizer.save(str(tmp_path / "tok"))


def corpus_config(corpus: Path, out: Path, tokenizer_path: str, **kw) -> DataPipelineConfig:
    packing = kw.pop("packing", PackingConfig(seq_len=64))
    return DataPipelineConfig(inputs=[str(corpus)], output_dir=str(out), work_unit_bytes=10_000, shard_tokens=64 * 16,
                              cleaning=CLEANING, tokenizer=TokenizerConfig(model_path=tokenizer_path), packing=packing,
                              max_rejected_share=BAD_CORPUS_MAX_REJECTED, **kw)


def test_tokenized_once_then_packed_at_two_lengths_without_text_or_tokenizer(bad_corpus, tokenizer_path, small_tokenizer,
                                                                           tmp_path):
    corpus = tmp_path / "corpus"
    store = tokenize_corpus(corpus_config(corpus, tmp_path / "store", tokenizer_path), str(tmp_path / "store"),
                            use_ray=False)
    unit_files = sorted((tmp_path / "store").rglob("*.parquet"))
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in unit_files}
    texts = {}
    for unit in plan_work_units(list_input_files([str(corpus)], "auto", []), 10_000, 0):
        docs = read_clean_unit(unit, "text", CLEANING)
        texts.update((d, t) for d, t in zip(docs.doc_ids, docs.texts) if t is not None)
    expected = {d: len(small_tokenizer.encode(t.decode())) + 1 for d, t in texts.items()}
    # Packing needs neither the text nor the tokenizer: both are gone.
    os.rename(corpus, tmp_path / "gone")
    os.remove(tokenizer_path)
    manifests = []
    for seq_len in (32, 128):
        manifests.append(pack_tokens(TokenStore.load(store.root),
                                     corpus_config(corpus, tmp_path / f"L{seq_len}", tokenizer_path,
                                                   packing=PackingConfig(seq_len=seq_len))))
        assert packed_documents(tmp_path / f"L{seq_len}") == expected  # every token of every document
    assert [m.seq_len for m in manifests] == [32, 128]
    num_rejected = sum(manifests[0].rejected_by_reason.values())
    assert manifests[0].counts["docs_in"] == manifests[1].counts["docs_in"] == len(expected) + num_rejected > 30
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in unit_files} == written  # the store is read only
    assert manifests[0].location["token_store"] == manifests[1].location["token_store"] == store.root
    assert manifests[0].tokenizer["sha256"] == small_tokenizer.sha256


def test_the_store_round_trip_writes_the_shards_packing_right_after_tokenizing_wrote(bad_corpus, tokenizer_path,
                                                                                      tmp_path):
    """Tokenize-then-pack through the store equals the fused path byte for byte, policy included."""
    policy = LongContextConfig(min_doc_tokens=150, upweight_min_tokens=600, upweight_factor=2)
    cfg = corpus_config(tmp_path / "corpus", tmp_path / "store_path", tokenizer_path,
                        packing=PackingConfig(seq_len=64), long_context=policy)
    manifest = run_pipeline(cfg, use_ray=False)
    assert manifest.counts["docs_repeated"] > 0 and manifest.rejected_by_reason["long_context_filtered"] > 0

    fused = DataPipelineConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "fused")})
    builder = ShardBuilder(open(tokenizer_path, "rb").read(), fused, pad_id=manifest.tokenizer["pad_id"])
    reports = [builder.build(i, unit) for i, unit in
               enumerate(plan_work_units(list_input_files(cfg.inputs, "auto", []), cfg.work_unit_bytes, 0))]
    assert sum(r["counts"]["rows"] for r in reports) == manifest.num_rows
    files = sorted(p.relative_to(tmp_path / "fused") for p in (tmp_path / "fused").rglob("*.parquet"))
    assert len(files) == 2 * len(manifest.shards)
    for f in files:
        assert filecmp.cmp(tmp_path / "fused" / f, tmp_path / "store_path" / f, shallow=False), f
