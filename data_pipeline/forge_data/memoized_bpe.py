"""Exact SentencePiece BPE encoding that encodes each distinct word once.

SentencePiece's BPE encoder is slow: on the stdlib sources it costs 0.5-0.6 us per token with
1,000 pieces and 1.0-1.5 us with 32,000 (its unigram encoder, 1,000 pieces: 0.11-0.15 us), and
cutting documents into shorter strings barely helps (0.95 us at 32,000). Text repeats its words,
so this encoder cuts each document into words, encodes the words it has not seen (joined into a
few strings, one C++ call) and copies the ids of the rest from a cache
(benchmarks/data/bench_memoized_bpe.py).

Why the ids are exactly SentencePiece's. A "word" here is a run of spaces followed by non-spaces;
with an identity normalizer, a cut before a word is a point where the normalized text reads
X▁ with X not a space. BPE only merges two adjacent symbols when their concatenation is a piece
of the vocabulary, so if no piece contains X▁ (checked on the vocabulary when the encoder is
built), no merge ever crosses a cut: each word's merges are the ones it gets alone, applied in the
same relative order (score, then position). User-defined symbols (matched whole, left to right),
byte fallback (per unknown character) and the merging of unknown runs (a word starts with "▁", a
known piece) all stay inside a word as well.

What keeps plain encoding (`unsupported_reason` says which):
- unigram models: their Viterbi adds float32 scores along the whole document, so a word's
  segmentation can depend on the score accumulated before it (encoded word by word, 17% of the
  stdlib files get other ids with 1,000 pieces);
- normalizers that rewrite text or whitespace (NFKC maps, a dummy prefix, collapsing or stripping
  spaces): the first word of a document, encoded alone, would change;
- whitespace treated as a suffix, or a piece joining text to a following space.
A document containing "▁" (U+2581) itself is encoded plainly: it reads as a space to SentencePiece.
"""

from __future__ import annotations

from itertools import repeat
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sentencepiece import sentencepiece_model_pb2 as model_pb2

SPACE_SYMBOL = "\u2581"
_SPACE_SYMBOL_UTF8 = SPACE_SYMBOL.encode()
_MISS_STRING_BYTES = 4096
"""Unseen words are encoded joined into strings of about this size: one string per word costs
SentencePiece ~3.5 us of per-string work, and BPE slows down on very long strings."""

_Piece = model_pb2.ModelProto.SentencePiece
_MATCHABLE = (_Piece.NORMAL, _Piece.USER_DEFINED, _Piece.UNUSED)


def unsupported_reason(model_proto: bytes) -> str | None:
    """Why this model cannot be encoded word by word exactly, or None when it can."""
    model = model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    if trainer.model_type != model_pb2.TrainerSpec.BPE:
        return f"model type {model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)} (only BPE is word-local)"
    if normalizer.precompiled_charsmap or normalizer.add_dummy_prefix or normalizer.remove_extra_whitespaces:
        return (f"normalizer {normalizer.name!r} rewrites text or whitespace (charsmap "
                f"{len(normalizer.precompiled_charsmap)} bytes, add_dummy_prefix={normalizer.add_dummy_prefix}, "
                f"remove_extra_whitespaces={normalizer.remove_extra_whitespaces})")
    if not normalizer.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        return "whitespace is not escaped as a '▁' prefix"
    known_space = False
    for piece in model.pieces:
        if piece.type not in _MATCHABLE:
            continue
        text = piece.piece
        known_space |= text == SPACE_SYMBOL and piece.type != _Piece.UNUSED
        if " " in text or any(text[i] == SPACE_SYMBOL and text[i - 1] != SPACE_SYMBOL for i in range(1, len(text))):
            return f"piece {text!r} joins text to a following space"
    if not (known_space or trainer.byte_fallback):
        return "'▁' is not a piece and there is no byte fallback (runs of unknowns could cross words)"
    return None


class MemoizedBpeEncoder:
    """Encodes batches of UTF-8 documents to one flat id array, each distinct word encoded once.

    Words are found and counted without a Python object per word (numpy passes over the bytes,
    Arrow's hash table); Python sees each distinct word of a batch once, SentencePiece each word
    not cached yet. The cache holds up to `max_cached_words` words across calls (then it starts
    again; about 0.4 GiB of memory at the default bound), so a long-lived actor keeps the words
    of the documents it has seen; its size never changes an id.
    """

    def __init__(self, processor: object, model_proto: bytes, max_cached_words: int = 1 << 20) -> None:
        reason = unsupported_reason(model_proto)
        if reason is not None:
            raise ValueError(f"cannot encode this tokenizer word by word: {reason}")
        self.processor = processor
        self.max_cached_words = max_cached_words
        # Bytes of text each id stands for, to cut the ids of a joined string at word ends.
        # Unknown pieces (no byte fallback) stand for any number of bytes: -1.
        self._surface_bytes = np.array([
            1 if processor.is_byte(i) else -1 if processor.is_unknown(i) else 0 if processor.is_control(i)
            else len(processor.id_to_piece(i).replace(SPACE_SYMBOL, " ").encode())
            for i in range(processor.get_piece_size())
        ], dtype=np.int64)
        self._clear()

    def _clear(self) -> None:
        self._index: dict[bytes, int] = {}  # word -> its cache entry k
        self._specials: dict[int, int] = {}  # BOS / EOS id -> its one-id cache entry
        self._entries = 0
        self._ids = np.zeros(1 << 16, dtype=np.int32)  # ids of cached words, one after another
        self._used = 0
        self._starts = np.zeros(1 << 12, dtype=np.int64)  # word k: self._ids[start : start + length]
        self._lengths = np.zeros(1 << 12, dtype=np.int64)

    @property
    def num_cached_words(self) -> int:
        return len(self._index)

    def encode(self, texts: Sequence[bytes], bos_id: int = -1, eos_id: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """(flat int32 ids of all documents, int64 offsets: document i is flat[offsets[i]:offsets[i + 1]]).

        `bos_id` / `eos_id` >= 0 are put before / after every document.
        """
        if self.num_cached_words > self.max_cached_words:
            self._clear()
        words, counts, whole = _split_words(texts)
        # Arrow hashes every word (C++); Python sees each distinct word of the batch once.
        coded = pc.dictionary_encode(words)
        distinct = coded.dictionary.to_pylist()
        entry_of_distinct = np.fromiter(map(self._index.get, distinct, repeat(-1)), dtype=np.int64, count=len(distinct))
        unseen = np.flatnonzero(entry_of_distinct < 0)
        entry_of_distinct[unseen] = self._add([distinct[i] for i in unseen], whole)
        entry = entry_of_distinct[coded.indices.to_numpy(zero_copy_only=False)]
        before = [self._special_entry(bos_id)] if bos_id >= 0 else []
        after = [self._special_entry(eos_id)] if eos_id >= 0 else []
        if before or after:
            entry, counts = _frame_documents(entry, counts, before, after)

        lengths = self._lengths[entry]
        out_starts = np.cumsum(lengths) - lengths
        flat = self._ids[np.repeat(self._starts[entry] - out_starts, lengths) + np.arange(int(lengths.sum()))]
        offsets = np.concatenate([[0], np.cumsum(lengths)])[np.concatenate([[0], np.cumsum(counts)])]
        return flat, offsets

    def _special_entry(self, token: int) -> int:
        """The cache entry holding the one id `token` (BOS or EOS)."""
        if token not in self._specials:
            self._store([], np.array([token], dtype=np.int32), np.array([0, 1]))
            self._specials[token] = self._entries - 1
        return self._specials[token]

    def _add(self, unseen: list[bytes], whole: set[bytes]) -> np.ndarray:
        """Encode words not yet cached (a few joined strings per call); returns their cache entries."""
        groups: list[list[bytes]] = []  # words that may be joined: each starts with a space and
        size = _MISS_STRING_BYTES  # follows a word that ends with one that is not
        alone: list[bytes] = []
        for word in unseen:
            if word in whole:
                alone.append(word)
            elif word[:1] == b" " and size < _MISS_STRING_BYTES and groups[-1][-1][-1:] != b" ":
                groups[-1].append(word)
                size += len(word)
            else:
                groups.append([word])
                size = len(word)
        encoded = self.processor.encode([b"".join(g) for g in groups] + alone, out_type="numpy", num_threads=1)
        for group, ids in zip(groups, encoded):
            self._store_group(group, ids)
        for word, ids in zip(alone, encoded[len(groups):]):
            self._store([word], ids, np.array([0, len(ids)]))
        return np.fromiter(map(self._index.__getitem__, unseen), dtype=np.int64, count=len(unseen))

    def _store_group(self, group: list[bytes], ids: np.ndarray) -> None:
        """Cut the ids of a joined group at its word ends (from the bytes each id stands for)."""
        surface = self._surface_bytes[ids]
        token_ends = np.cumsum(surface)
        word_ends = np.cumsum([len(w) for w in group])
        cuts = np.searchsorted(token_ends, word_ends, side="left")
        if (surface < 0).any() or not np.array_equal(token_ends[cuts.clip(max=len(ids) - 1)], word_ends):
            # An unknown piece (any length), or bytes that are not UTF-8 (SentencePiece reads each
            # as U+FFFD): the ends cannot be told from the ids, so this group goes word by word.
            parts = self.processor.encode(group, out_type="numpy", num_threads=1)
            ids = np.concatenate(parts)
            cuts = np.cumsum([len(part) for part in parts]) - 1
        self._store(group, ids, np.concatenate([[0], cuts + 1]))

    def _store(self, words: list[bytes], ids: np.ndarray, bounds: np.ndarray) -> None:
        """Cache entries whose ids lie one after another: entry j is ids[bounds[j]:bounds[j + 1]],
        looked up by words[j] (`words` empty: an entry no word maps to, a BOS / EOS id)."""
        first, count, need = self._entries, len(bounds) - 1, self._used + len(ids)
        if need > len(self._ids):
            self._ids = np.resize(self._ids, max(need, 2 * len(self._ids)))
        if first + count > len(self._starts):
            size = max(first + count, 2 * len(self._starts))
            self._starts, self._lengths = np.resize(self._starts, size), np.resize(self._lengths, size)
        self._ids[self._used:need] = ids
        self._starts[first:first + count] = self._used + bounds[:-1]
        self._lengths[first:first + count] = np.diff(bounds)
        self._index.update(zip(words, range(first, first + count)))
        self._entries += count
        self._used = need


def _frame_documents(entry: np.ndarray, counts: np.ndarray, before: list[int],
                     after: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Entries `before` and `after` each document's run of entries; (new entries, new counts)."""
    per_doc = counts + len(before) + len(after)
    ends = np.cumsum(per_doc)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    doc_shift = np.arange(len(counts)) * (len(before) + len(after)) + len(before)
    out[np.arange(len(entry)) + np.repeat(doc_shift, counts)] = entry
    for j, special in enumerate(before):
        out[ends - per_doc + j] = special
    for j, special in enumerate(after):
        out[ends - len(after) + j] = special
    return out, per_doc


def _split_words(texts: Sequence[bytes]) -> tuple[pa.Array, np.ndarray, set[bytes]]:
    """(every word of every document as one Arrow array over the joined bytes, words per document,
    the documents kept whole).

    A word starts at each document's start and at each space that follows a non-space. A document
    holding a literal '▁' is one word (it is encoded plainly, alone).
    """
    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    doc_starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=doc_starts[1:])
    data = b"".join(texts)
    chars = np.frombuffer(data, dtype=np.uint8)
    is_start = np.zeros(len(chars), dtype=bool)
    if len(chars):
        np.logical_and(chars[1:] == 0x20, chars[:-1] != 0x20, out=is_start[1:])
    is_start[doc_starts[:-1][sizes > 0]] = True
    whole = set()
    for i, text in enumerate(texts):
        if _SPACE_SYMBOL_UTF8 in text:
            is_start[doc_starts[i] + 1:doc_starts[i + 1]] = False
            whole.add(text)
    word_starts = np.flatnonzero(is_start)
    offsets = np.append(word_starts, len(chars)).astype(np.int64)
    words = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(word_starts),
                                             [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    counts = np.diff(np.searchsorted(word_starts, doc_starts))
    return words, counts, whole
