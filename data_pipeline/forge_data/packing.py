"""Packing: tokenized documents -> rows of exactly L tokens with labels, positions, seq_idx.

Pure numpy, no Ray. A packer only decides *where* each piece of a document goes (a small table
with one entry per piece: document, source offset, length, row, column); `_assemble` then builds
all four columns with whole-array operations, so the cost per token is a few vectorised passes.

Every call packs everything it is given: the last row is padded, never carried over. That is the
end-of-stream flush Ray's `map_batches` lacks, done per block (the padding it costs is reported).

Legend: T tokens in, W tokens written, R rows, L = seq_len, P pieces.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence, get_args

import numpy as np

from forge_data.config import LongDocPolicy, Packer

IGNORE_INDEX = -100


@dataclass
class PackStats:
    """Accounting for one packing call; add them up across blocks."""

    num_docs: int = 0
    num_docs_split: int = 0
    num_docs_truncated: int = 0
    num_rows: int = 0
    num_tokens_in: int = 0
    num_tokens_written: int = 0
    num_tokens_truncated: int = 0
    num_tokens_padding: int = 0


@dataclass
class PackedRows:
    """R packed rows (int32 arrays of shape (R, L)) and which documents each row holds."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    seq_idx: np.ndarray
    piece_doc: np.ndarray
    """Document index (into the input) of every piece, rows in order, pieces in seq_idx order."""
    row_piece_offsets: np.ndarray
    """Pieces of row r are piece_doc[row_piece_offsets[r]:row_piece_offsets[r + 1]]."""
    piece_offset: np.ndarray
    """Token offset inside its document where each piece starts (> 0 for continuation chunks)."""
    piece_len: np.ndarray
    """Tokens in each piece."""
    stats: PackStats


def flatten_token_lists(token_lists: Sequence[Sequence[int] | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents into one int32 array plus offsets (n + 1 entries)."""
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(token_lists) == 0 or offsets[-1] == 0:
        return np.zeros(0, dtype=np.int32), offsets
    flat = np.concatenate([np.asarray(t, dtype=np.int32) for t in token_lists])
    return flat, offsets


def _greedy_pieces(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """Megatron style: lay documents end to end and cut every L tokens.

    Returns (piece_doc, piece_offset_in_doc, piece_len, piece_row, piece_col).
    """
    stream_end = np.cumsum(lengths)
    stream_start = stream_end - lengths
    has_tokens = lengths > 0
    first_row = stream_start // seq_len
    last_row = np.where(has_tokens, (stream_end - 1) // seq_len, first_row - 1)
    num_pieces = last_row - first_row + 1
    piece_doc = np.repeat(np.arange(len(lengths)), num_pieces)
    first_piece = np.cumsum(num_pieces) - num_pieces
    piece_row = first_row[piece_doc] + np.arange(len(piece_doc)) - first_piece[piece_doc]
    start = np.maximum(stream_start[piece_doc], piece_row * seq_len)
    end = np.minimum(stream_end[piece_doc], (piece_row + 1) * seq_len)
    return piece_doc, start - stream_start[piece_doc], end - start, piece_row, start - piece_row * seq_len


def _best_fit_pieces(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """Best-fit decreasing: full L-chunks get their own rows, remainders fill the tightest bin.

    Keeps every document shorter than L whole (greedy splits about one per row boundary). The
    per-piece loop is Python, but it runs once per document, not per token.
    """
    docs, offs, lens, rows = [], [], [], []
    num_rows = 0
    remainders: list[tuple[int, int, int]] = []  # (length, doc, offset in doc)
    for doc, n in enumerate(lengths.tolist()):
        full, rest = divmod(n, seq_len)
        for c in range(full):
            docs.append(doc), offs.append(c * seq_len), lens.append(seq_len), rows.append(num_rows)
            num_rows += 1
        if rest:
            remainders.append((rest, doc, full * seq_len))
    # Longest first, ties by document order, so the result is deterministic.
    remainders.sort(key=lambda r: (-r[0], r[1]))
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted: bisect finds the tightest fit
    for rest, doc, off in remainders:
        i = bisect.bisect_left(free, (rest, -1))
        if i < len(free):
            space, row = free.pop(i)
        else:
            space, row = seq_len, num_rows
            num_rows += 1
        docs.append(doc), offs.append(off), lens.append(rest), rows.append(row)
        if space - rest > 0:
            bisect.insort(free, (space - rest, row))
    piece_doc = np.asarray(docs, dtype=np.int64)
    piece_off = np.asarray(offs, dtype=np.int64)
    piece_len = np.asarray(lens, dtype=np.int64)
    piece_row = np.asarray(rows, dtype=np.int64)
    # Renumber rows by their first document so output follows input order; pieces in a row by doc.
    order = np.lexsort((piece_off, piece_doc, piece_row))
    piece_doc, piece_off, piece_len, piece_row = piece_doc[order], piece_off[order], piece_len[order], piece_row[order]
    row_first_doc = np.full(num_rows, np.iinfo(np.int64).max)
    np.minimum.at(row_first_doc, piece_row, piece_doc)
    new_row = np.empty(num_rows, dtype=np.int64)
    new_row[np.lexsort((np.arange(num_rows), row_first_doc))] = np.arange(num_rows)
    piece_row = new_row[piece_row]
    order = np.lexsort((piece_off, piece_doc, piece_row))
    piece_doc, piece_off, piece_len, piece_row = piece_doc[order], piece_off[order], piece_len[order], piece_row[order]
    first_in_row = np.r_[True, piece_row[1:] != piece_row[:-1]] if len(piece_row) else np.zeros(0, bool)
    cum = np.cumsum(piece_len) - piece_len
    row_start_cum = np.maximum.accumulate(np.where(first_in_row, cum, 0)) if len(cum) else cum
    return piece_doc, piece_off, piece_len, piece_row, cum - row_start_cum


def _assemble(flat: np.ndarray, offsets: np.ndarray, pieces: tuple[np.ndarray, ...], seq_len: int,
              mask_cross_document_labels: bool, pad_id: int) -> PackedRows:
    """Build the four (R, L) columns from a piece table sorted by (row, column).

    Pieces fill each row from column 0; the rest of a row is its padding segment. Pieces and
    padding segments together tile the grid, so positions and seq_idx are one `np.repeat` of a
    per-segment value each (position = grid index - segment start). Token data moves as slice
    copies of runs of pieces contiguous both in `flat` and in the grid (greedy packing is one
    run). Every per-token pass is an int32 numpy kernel; Python loops only over runs.
    """
    piece_doc, piece_off, piece_len, piece_row, piece_col = pieces
    num_rows = int(piece_row[-1]) + 1 if len(piece_row) else 0
    size = num_rows * seq_len
    if size >= 2**31:  # int32 grid indices below; a work unit is megabytes, not gigatokens
        raise ValueError(f"{size} tokens in one packing call; make work units smaller")
    piece_src = offsets[piece_doc] + piece_off
    grid_start = piece_row * seq_len + piece_col
    num_written = int(piece_len.sum())

    input_ids = np.full(size, pad_id, dtype=np.int32)
    labels = np.full(size, IGNORE_INDEX, dtype=np.int32)
    if len(piece_len):
        breaks = np.r_[True, (piece_src[1:] != piece_src[:-1] + piece_len[:-1])
                       | (grid_start[1:] != grid_start[:-1] + piece_len[:-1])]
        first = np.flatnonzero(breaks)
        run_len = np.add.reduceat(piece_len, first)
        for src, dst, n in zip(piece_src[first].tolist(), grid_start[first].tolist(), run_len.tolist()):
            input_ids[dst:dst + n] = flat[src:src + n]
            # Labels are the next token of the stream; document ends are fixed up below.
            labels[dst:dst + n - 1] = flat[src + 1:src + n]
            if src + n < len(flat):
                labels[dst + n - 1] = flat[src + n]

    row_counts = np.bincount(piece_row, minlength=num_rows)
    row_piece_offsets = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(row_counts, out=row_piece_offsets[1:])
    # A piece that ends its document: its last label is the next document's token (or ignored).
    doc_ends = piece_src + piece_len >= offsets[piece_doc + 1]
    last_cell = grid_start + piece_len - 1
    labels[last_cell[doc_ends]] = IGNORE_INDEX
    if not mask_cross_document_labels and len(piece_len) > 1:
        ends = doc_ends[:-1] & (piece_row[1:] == piece_row[:-1])
        labels[last_cell[:-1][ends]] = flat[piece_src[1:][ends]]

    row_fill = np.zeros(num_rows, dtype=np.int64)
    np.add.at(row_fill, piece_row, piece_len)
    padded = np.flatnonzero(row_fill < seq_len)
    # Segments in grid order: a row's pieces, then its padding (seq_idx = number of pieces).
    seg_start = np.concatenate([grid_start, padded * seq_len + row_fill[padded]])
    seg_len = np.concatenate([piece_len, seq_len - row_fill[padded]])
    seg_rank = np.concatenate([np.arange(len(piece_row)) - row_piece_offsets[piece_row], row_counts[padded]])
    order = np.argsort(seg_start, kind="stable")
    seg_start, seg_len, seg_rank = seg_start[order], seg_len[order], seg_rank[order]
    position_ids = np.arange(size, dtype=np.int32)
    position_ids -= np.repeat(seg_start.astype(np.int32), seg_len)
    seq_idx = np.repeat(seg_rank.astype(np.int32), seg_len)
    input_ids, labels = input_ids.reshape(num_rows, seq_len), labels.reshape(num_rows, seq_len)
    position_ids, seq_idx = position_ids.reshape(num_rows, seq_len), seq_idx.reshape(num_rows, seq_len)

    lengths = np.diff(offsets)
    pieces_per_doc = np.bincount(piece_doc, minlength=len(lengths))
    stats = PackStats(
        num_docs=len(lengths),
        num_docs_split=int((pieces_per_doc > 1).sum()),
        num_docs_truncated=int((np.bincount(piece_doc, weights=piece_len, minlength=len(lengths)) < lengths).sum()),
        num_rows=num_rows,
        num_tokens_in=int(lengths.sum()),
        num_tokens_written=num_written,
        num_tokens_truncated=int(lengths.sum()) - num_written,
        num_tokens_padding=num_rows * seq_len - num_written,
    )
    return PackedRows(input_ids, labels, position_ids, seq_idx, piece_doc, row_piece_offsets, piece_off, piece_len, stats)


def _choices(literal: object) -> str:
    """The values of a Literal type, as the error messages list them."""
    return ", ".join(repr(v) for v in get_args(literal))


def pack_flat(flat: np.ndarray, offsets: np.ndarray, seq_len: int, packer: Packer = "greedy",
              mask_cross_document_labels: bool = True, long_doc_policy: LongDocPolicy = "split",
              pad_id: int = 0) -> PackedRows:
    """Pack documents given as one flat token array and n + 1 offsets (what the tokenizer emits)."""
    lengths = np.diff(offsets).astype(np.int64)
    if long_doc_policy == "truncate":
        lengths = np.minimum(lengths, seq_len)
    elif long_doc_policy != "split":
        raise ValueError(f"long_doc_policy = {long_doc_policy!r}: must be one of {_choices(LongDocPolicy)}")
    if packer == "greedy":
        pieces = _greedy_pieces(lengths, seq_len)
    elif packer == "best_fit":
        pieces = _best_fit_pieces(lengths, seq_len)
    else:
        raise ValueError(f"packer = {packer!r}: must be one of {_choices(Packer)}")
    return _assemble(flat, offsets, pieces, seq_len, mask_cross_document_labels, pad_id)


def pack_documents(token_lists: Sequence[Sequence[int] | np.ndarray], seq_len: int, packer: Packer = "greedy",
                   mask_cross_document_labels: bool = True, long_doc_policy: LongDocPolicy = "split",
                   pad_id: int = 0) -> PackedRows:
    """Pack a list of tokenized documents into rows of `seq_len` (see module docstring)."""
    flat, offsets = flatten_token_lists(token_lists)
    return pack_flat(flat, offsets, seq_len, packer, mask_cross_document_labels, long_doc_policy, pad_id)
