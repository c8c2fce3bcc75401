"""Packing without Ray: every token lands once, labels/positions/seq_idx follow the contract."""

import numpy as np
import pytest

from forge_data.packing import IGNORE_INDEX, pack_documents


def random_docs(seed: int, n: int, max_len: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 1000, size=int(rng.integers(1, max_len))).astype(np.int32) for _ in range(n)]


def reference_rows(docs, packed, seq_len, mask):
    """Slow, obvious rebuild of every row from the piece table, to compare against."""
    rows = []
    for r in range(packed.input_ids.shape[0]):
        lo, hi = packed.row_piece_offsets[r], packed.row_piece_offsets[r + 1]
        ids, lab, pos, seq = [], [], [], []
        for k, p in enumerate(range(lo, hi)):
            doc = docs[packed.piece_doc[p]]
            off, n = packed.piece_offset[p], packed.piece_len[p]
            for j in range(off, off + n):
                ids.append(doc[j]); pos.append(j - off); seq.append(k)
                if j + 1 < len(doc):
                    lab.append(doc[j + 1])
                elif not mask and p + 1 < hi:
                    lab.append(docs[packed.piece_doc[p + 1]][packed.piece_offset[p + 1]])
                else:
                    lab.append(IGNORE_INDEX)
        pad = seq_len - len(ids)
        rows.append((ids + [0] * pad, lab + [IGNORE_INDEX] * pad, pos + list(range(pad)), seq + [hi - lo] * pad))
    return rows


@pytest.mark.parametrize("packer", ["greedy", "best_fit"])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("policy", ["split", "truncate"])
def test_rows_match_reference(packer, mask, policy):
    docs = random_docs(0, 60, 150)
    packed = pack_documents(docs, 64, packer=packer, mask_cross_document_labels=mask, long_doc_policy=policy)
    for r, (ids, lab, pos, seq) in enumerate(reference_rows(docs, packed, 64, mask)):
        np.testing.assert_array_equal(packed.input_ids[r], ids)
        np.testing.assert_array_equal(packed.labels[r], lab)
        np.testing.assert_array_equal(packed.position_ids[r], pos)
        np.testing.assert_array_equal(packed.seq_idx[r], seq)
    s = packed.stats
    assert s.num_tokens_in == sum(map(len, docs)) == s.num_tokens_written + s.num_tokens_truncated
    assert s.num_rows * 64 == s.num_tokens_written + s.num_tokens_padding
    assert (np.diff(packed.seq_idx, axis=1) >= 0).all()  # mamba-ssm needs non-decreasing seq_idx
    if policy == "split":
        assert s.num_tokens_truncated == 0


def test_greedy_keeps_stream_order_and_pads_only_last_row():
    docs = random_docs(1, 40, 100)
    packed = pack_documents(docs, 32, packer="greedy")
    written = packed.input_ids.ravel()[: packed.stats.num_tokens_written]
    np.testing.assert_array_equal(written, np.concatenate(docs))
    assert packed.stats.num_tokens_padding < 32


def test_best_fit_keeps_short_documents_whole():
    docs = random_docs(2, 80, 60)
    greedy = pack_documents(docs, 64, packer="greedy")
    best = pack_documents(docs, 64, packer="best_fit")
    assert best.stats.num_docs_split == 0  # every doc is shorter than L
    assert greedy.stats.num_docs_split > 0
    counts = np.bincount(best.piece_doc, minlength=len(docs))
    assert (counts == 1).all()


def test_long_document_is_split_and_continues_its_labels():
    doc = np.arange(100, 250, dtype=np.int32)  # 150 tokens, L = 64
    for packer in ("greedy", "best_fit"):
        packed = pack_documents([doc], 64, packer=packer)
        assert packed.stats.num_docs_split == 1 and packed.stats.num_rows == 3
        # The last token of a full row predicts the first token of the continuation.
        assert packed.labels[0, -1] == packed.input_ids[1, 0]
        assert packed.position_ids[1, 0] == 0  # positions restart per piece


def test_truncate_policy_counts_dropped_tokens():
    packed = pack_documents([np.arange(10, 110)], 32, packer="best_fit", long_doc_policy="truncate")
    assert packed.stats.num_tokens_truncated == 68 and packed.stats.num_docs_truncated == 1


def test_empty_input_gives_no_rows():
    packed = pack_documents([], 16)
    assert packed.input_ids.shape == (0, 16) and packed.stats.num_rows == 0
