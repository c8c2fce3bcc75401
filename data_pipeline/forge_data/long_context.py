"""Long-context data: select or up-weight long documents for context-extension stages.

Works on token counts, so it runs right after tokenization, before packing. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from forge_data.config import LongContextConfig


def document_weights(lengths: np.ndarray, cfg: LongContextConfig) -> np.ndarray:
    """How many copies of each document to pack: 0 (filtered out), 1, or `upweight_factor`."""
    weights = np.ones(len(lengths), dtype=np.int64)
    if cfg.upweight_min_tokens > 0 and cfg.upweight_factor > 1:
        weights[lengths >= cfg.upweight_min_tokens] = cfg.upweight_factor
    if cfg.min_doc_tokens > 0:
        weights[lengths < cfg.min_doc_tokens] = 0
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
