"""The tokenizer: a thin wrapper around SentencePiece plus training from an in-memory sample.

A trained tokenizer is a directory with `tokenizer.model` (the SentencePiece proto) and
`tokenizer.json` (its training config, the sha256 of the training sample and of the model), so a
shard's manifest can name exactly which tokenizer produced it. Special ids are fixed:
unk 0, bos 1, eos 2, pad 3, then user-defined and control symbols.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from dataclasses import asdict
from functools import cached_property
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from forge_data import storage
from forge_data.config import TokenizerConfig
from forge_data.memoized_bpe import MemoizedBpeEncoder, unsupported_reason

MODEL_FILE = "tokenizer.model"
METADATA_FILE = "tokenizer.json"


class Tokenizer:
    """SentencePiece processor with the ids and batch encoders the pipeline and trainers need."""

    def __init__(self, model_proto: bytes, metadata: dict | None = None, memoize_words: bool = True) -> None:
        """`memoize_words`: encode batches word by word through a cache when that is exact (BPE
        models with an identity normalizer, see forge_data.memoized_bpe); False: always plain."""
        self.model_proto = model_proto
        self.metadata = metadata or {}
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self.memoize_words = memoize_words
        self._memoized: MemoizedBpeEncoder | None = None

    @cached_property
    def _not_memoized_because(self) -> str | None:
        return "switched off" if not self.memoize_words else unsupported_reason(self.model_proto)

    @property
    def batch_encoder(self) -> str:
        """How `encode_flat` encodes: "memoized BPE", or "plain (<why>)"."""
        reason = self._not_memoized_because
        return "memoized BPE" if reason is None else f"plain ({reason})"

    @property
    def vocab_size(self) -> int:
        """Number of pieces (embedding rows the model needs)."""
        return self.processor.get_piece_size()

    @property
    def bos_id(self) -> int:
        """Beginning-of-document id (-1 if the model has none)."""
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-document id (-1 if the model has none)."""
        return self.processor.eos_id()

    @property
    def pad_id(self) -> int:
        """Padding id (-1 if the model has none)."""
        return self.processor.pad_id()

    def encode(self, text: str | list[str], add_bos: bool = False, add_eos: bool = False) -> list[int] | list[list[int]]:
        """Ids of one text, or of each text in a list (one C++ call for the whole list)."""
        return self.processor.encode(text, add_bos=add_bos, add_eos=add_eos, num_threads=1)

    def encode_numpy(self, texts: list[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int = 1) -> list[np.ndarray]:
        """int32 arrays straight from C++ buffers: no Python int per token (the hot path).

        `num_threads=1` by default because the pipeline gets its parallelism from Ray actors; more
        threads per actor would oversubscribe the cores Ray has already handed out.
        """
        return self.processor.encode(texts, out_type="numpy", add_bos=add_bos, add_eos=add_eos, num_threads=num_threads)

    def encode_flat(self, texts: list[bytes] | list[str], add_bos: bool = False,
                    add_eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(int32 ids of every document one after another, int64 offsets: document i is
        flat[offsets[i]:offsets[i + 1]]): the pipeline's hot path, ids identical to `encode_numpy`.

        BPE models are encoded word by word through a cache that lives as long as this tokenizer
        (exact; 1.3-2.2x plain SentencePiece on new text, 7-14x on words seen before:
        benchmarks/data/RESULTS.md); other models by one plain C++ call.
        """
        if self._memoized is None and self._not_memoized_because is None:
            self._memoized = MemoizedBpeEncoder(self.processor, self.model_proto)
        if self._memoized is not None:
            texts = [t.encode() if isinstance(t, str) else t for t in texts]
            return self._memoized.encode(texts, self.bos_id if add_bos else -1, self.eos_id if add_eos else -1)
        arrays = self.encode_numpy(texts, add_bos, add_eos)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)), out=offsets[1:])
        return (np.concatenate(arrays) if arrays else np.zeros(0, np.int32)), offsets

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of a sequence of ids (special ids decode to nothing)."""
        return self.processor.decode([int(i) for i in ids])

    def save(self, out_dir: str) -> str:
        """Write `tokenizer.model` and `tokenizer.json` into `out_dir` (a folder or URI); returns the model path."""
        meta = dict(self.metadata, model_sha256=self.sha256, vocab_size=self.vocab_size)
        if storage.is_uri(out_dir):  # the metadata first: the model file is what loading looks for
            storage.publish(storage.join(out_dir, METADATA_FILE), json.dumps(meta, indent=2, sort_keys=True).encode())
            storage.publish(storage.join(out_dir, MODEL_FILE), self.model_proto)
            return storage.join(out_dir, MODEL_FILE)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, MODEL_FILE)
        with open(path, "wb") as f:
            f.write(self.model_proto)
        with open(os.path.join(out_dir, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        return path


def load_tokenizer(path: str, memoize_words: bool = True) -> Tokenizer:
    """Load a tokenizer from its directory or its `.model` file (metadata is optional), local or a URI."""
    if storage.is_uri(path):
        return _load_tokenizer_uri(path, memoize_words)
    model_path = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no SentencePiece model at {model_path!r}")
    with open(model_path, "rb") as f:
        proto = f.read()
    meta_path = os.path.join(os.path.dirname(model_path), METADATA_FILE)
    metadata = None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            metadata = json.load(f)
    return Tokenizer(proto, metadata, memoize_words)


def _load_tokenizer_uri(path: str, memoize_words: bool) -> Tokenizer:
    model_path = storage.join(path, MODEL_FILE) if storage.is_dir(path) else path
    try:
        proto = storage.read_bytes(model_path)
    except storage.StorageNotFound:
        raise storage.StorageNotFound(f"no SentencePiece model at {model_path!r}") from None
    try:
        metadata = json.loads(storage.read_bytes(posixpath.join(posixpath.dirname(model_path), METADATA_FILE)))
    except storage.StorageNotFound:
        metadata = None
    return Tokenizer(proto, metadata, memoize_words)


def split_sentences(text: str, max_chars: int) -> Iterator[str]:
    """Cut a document at line ends into training "sentences" of at most `max_chars` characters.

    Newlines stay inside the pieces, so the tokenizer learns them (code and verse need them).
    """
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # one very long line: hard cuts
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            yield line[:max_chars]
            line = line[max_chars:]
        if size + len(line) > max_chars and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


def sentencepiece_trainer_args(cfg: TokenizerConfig) -> dict[str, object]:
    """The SentencePieceTrainer arguments for a config (one place, tested)."""
    identity = cfg.identity_normalization
    return dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        user_defined_symbols=list(cfg.user_defined_symbols),
        control_symbols=list(cfg.control_symbols),
        normalization_rule_name="identity" if identity else "nmt_nfkc",
        remove_extra_whitespaces=not identity,
        # No invented leading space: decode(encode(doc)) == doc, and "char" stays one id per character.
        add_dummy_prefix=not identity,
        allow_whitespace_only_pieces=True,
        split_digits=cfg.split_digits,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        # UTF-8 needs up to 4 bytes per character; our sentences are cut by characters.
        max_sentence_length=4 * cfg.max_sentence_bytes,
        # Use the whole (already sampled) input in order: SentencePiece's own sampling is random.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        # For "char" the vocabulary is whatever characters exist; vocab_size is an upper bound.
        hard_vocab_limit=cfg.model_type != "char",
        num_threads=cfg.num_threads,
        minloglevel=0 if cfg.show_progress else 2,
    )


class TokenizerTrainingError(ValueError):
    """SentencePiece refused to train with these settings on this sample (one line: what, and what would work)."""


def explain_trainer_error(message: str, cfg: TokenizerConfig, num_sentences: int) -> str:
    """SentencePiece's error as one line naming the setting; its source location and check dropped."""
    text = re.sub(r"^\w+: \S+\(\d+\) (\[.*?\] )?", "", message.strip().splitlines()[-1])
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", text)
    if too_high:
        return (f"tokenizer.vocab_size = {cfg.vocab_size}: the tokenizer's sample ({num_sentences} sentences) "
                f"yields at most {too_high.group(2)} pieces; set data.tokenizer.vocab_size <= {too_high.group(2)}, "
                f"or give it more text (data.tokenizer.sample_bytes = {cfg.sample_bytes}, or more inputs)")
    return f"SentencePiece could not train the tokenizer ({cfg.model_type}, vocab_size {cfg.vocab_size}): {text}"


def train_from_texts(cfg: TokenizerConfig, texts: Iterable[str], metadata: dict | None = None) -> Tokenizer:
    """Train on documents already in memory (the sample); returns the tokenizer, not yet saved."""
    hasher = hashlib.sha256()
    num_sentences = 0

    def sentences() -> Iterator[str]:
        nonlocal num_sentences
        for text in texts:
            for sentence in split_sentences(text, cfg.max_sentence_bytes):
                hasher.update(sentence.encode("utf-8", "surrogatepass"))
                num_sentences += 1
                yield sentence

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_writer=model,
                                       **sentencepiece_trainer_args(cfg))
    except RuntimeError as err:  # SentencePiece reports bad settings as "INTERNAL: file.cc(line) [...] text"
        raise TokenizerTrainingError(explain_trainer_error(str(err), cfg, num_sentences)) from None
    meta = dict(metadata or {}, config=asdict(cfg), sample_sha256=hasher.hexdigest(), num_sample_sentences=num_sentences)
    return Tokenizer(model.getvalue(), meta)
