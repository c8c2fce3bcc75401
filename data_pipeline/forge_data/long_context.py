"""Long-document policy: which documents a stage packs, and how often, by their length in tokens.

Works on token counts, so it runs between the token store and packing. Pure numpy.

    select      drop documents shorter than `min_doc_tokens`
    up-weight   pack documents of at least `upweight_min_tokens` tokens `upweight_factor` times
    mix         subsample one side so that long documents (>= `mix_min_tokens`) make up
                `mix_long_share` of the packed tokens: needs every document's length, so the
                driver runs it over the whole store before any unit is packed
"""

from __future__ import annotations

import hashlib

import numpy as np

from forge_data.config import LongContextConfig

FILTERED = "long_context_filtered"
MIXED_OUT = "long_context_mixed_out"


def document_weights(lengths: np.ndarray, cfg: LongContextConfig) -> np.ndarray:
    """Select and up-weight: how many copies of each document to pack (0, 1 or `upweight_factor`)."""
    weights = np.ones(len(lengths), dtype=np.int64)
    if cfg.upweight_min_tokens > 0 and cfg.upweight_factor > 1:
        weights[lengths >= cfg.upweight_min_tokens] = cfg.upweight_factor
    if cfg.min_doc_tokens > 0:
        weights[lengths < cfg.min_doc_tokens] = 0
    return weights


def hash_order(doc_ids: list[str]) -> np.ndarray:
    """A fixed order of documents that depends only on their ids (not on the corpus's file order)."""
    keys = np.fromiter((int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
                        for d in doc_ids), dtype=np.uint64, count=len(doc_ids))
    return np.argsort(keys, kind="stable")


def mix_weights(weights: np.ndarray, lengths: np.ndarray, doc_ids: list[str], cfg: LongContextConfig) -> np.ndarray:
    """Mix: zero the weights of documents left out so long ones make up `mix_long_share` of the tokens.

    Over the whole corpus. The side with too many tokens keeps its documents in `hash_order`
    while they fit the budget the other side leaves, so the share reached is the target to
    within one document. Raises ValueError when no document is long enough to mix in.
    """
    if cfg.mix_long_share <= 0:
        return weights
    weights = weights.copy()
    long = lengths >= cfg.mix_min_tokens
    tokens = lengths * weights
    long_tokens, base_tokens = int(tokens[long].sum()), int(tokens[~long].sum())
    if long_tokens == 0:
        raise ValueError(f"data.long_context.mix_min_tokens = {cfg.mix_min_tokens}: no document has that many "
                         f"tokens (the longest has {int(lengths.max(initial=0))}), so there is nothing to mix in")
    share = cfg.mix_long_share
    if long_tokens < share * (long_tokens + base_tokens):
        side, budget = ~long, long_tokens * (1 - share) / share  # base tokens to keep
    else:
        side, budget = long, base_tokens * share / (1 - share) if share < 1 else float("inf")
    order = hash_order(doc_ids)
    order = order[side[order] & (weights[order] > 0)]
    dropped = order[np.cumsum(tokens[order]) > budget]
    weights[dropped] = 0
    return weights


def repeat_documents(flat: np.ndarray, offsets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeat (or drop) documents by weight, keeping input order; copies follow their original.

    Returns (flat tokens, offsets, index of the original document for every output document).
    """
    lengths = np.diff(offsets)
    if np.all(weights == 1):
        return flat, offsets, np.arange(len(lengths))
    doc_index = np.repeat(np.arange(len(lengths)), weights)
    new_lengths = lengths[doc_index]
    new_offsets = np.zeros(len(doc_index) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
    # Gather index per output token: start of its source document + offset inside it.
    tok_doc = np.repeat(np.arange(len(doc_index)), new_lengths)
    src = offsets[doc_index][tok_doc] + (np.arange(int(new_offsets[-1])) - new_offsets[tok_doc])
    return flat[src], new_offsets, doc_index


def tokens_in_long_documents(piece_doc: np.ndarray, piece_len: np.ndarray, doc_lengths: np.ndarray,
                             longer_than: int) -> int:
    """Packed tokens whose document has more than `longer_than` tokens (its whole length, not the piece's)."""
    return int(piece_len[doc_lengths[piece_doc] > longer_than].sum())
