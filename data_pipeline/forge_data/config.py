"""Configuration of the data pipeline: nested dataclasses, one docstring per field.

The platform's generic TOML loader builds these from plain dicts, so every field has a plain type
(str / int / float / bool / list[str] / Optional / a `Literal` of fixed choices / nested dataclass).
Each class validates its values where they are born (`__post_init__`) and names the field, the value
and what is allowed, the field by its path in a job spec, whose `[data]` section holds this config
(`data.tokenizer.vocab_size = 1: must be in [2, 256000]`, the path of the `--data.tokenizer.vocab_size`
override).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

MAX_VOCAB_SIZE = 256_000
TokenizerModelType = Literal["unigram", "bpe", "char"]
InputFormat = Literal["auto", "text", "jsonl", "parquet"]
Packer = Literal["greedy", "best_fit"]
LongDocPolicy = Literal["split", "truncate"]
Utf8Policy = Literal["reject", "repair"]
OversizePolicy = Literal["reject", "truncate"]
Compression = Literal["none", "zstd", "snappy", "gzip"]


def _fail(section: str, name: str, value: Any, allowed: str) -> None:
    """The one error shape of every config check (the platform's too): `section.field = value: must be ...`."""
    raise ValueError(f"{section}.{name} = {value!r}: must be {allowed}")


def _check_choice(section: str, name: str, value: Any, choices: Any) -> None:
    """`choices` is a Literal type: its values are written once, in the field's annotation."""
    allowed = get_args(choices)
    if value not in allowed:
        _fail(section, name, value, "one of " + ", ".join(repr(a) for a in allowed))


def _check_range(section: str, name: str, value: float, lo: float, hi: Optional[float] = None) -> None:
    if value < lo or (hi is not None and value > hi):
        _fail(section, name, value, f">= {lo}" if hi is None else f"in [{lo}, {hi}]")


@dataclass
class TokenizerConfig:
    """How to train (or where to load) the SentencePiece tokenizer."""

    model_path: Optional[str] = None
    """Existing tokenizer (a `.model` file or a directory holding `tokenizer.model`); None trains one."""
    model_type: TokenizerModelType = "unigram"
    """SentencePiece algorithm: "unigram", "bpe" or "char" (one piece per character, tiny Shakespeare)."""
    vocab_size: int = 32_000
    """Number of pieces, 2..256000. For "char" it is a soft upper bound (all seen characters are kept)."""
    byte_fallback: bool = True
    """Encode unknown characters as UTF-8 byte pieces instead of <unk> (adds 256 pieces)."""
    user_defined_symbols: list[str] = field(default_factory=list)
    """Special tokens that are always one piece, also when they appear in the text (e.g. "<|im_start|>")."""
    control_symbols: list[str] = field(default_factory=list)
    """Special tokens that get an id but are never produced from text (e.g. "<mask>")."""
    character_coverage: float = 0.9995
    """Fraction of characters covered by pieces; the rest falls back to bytes. Must be in (0, 1]."""
    identity_normalization: bool = True
    """Keep text as is (no NFKC, keep repeated whitespace): needed for code and exact round trips."""
    split_digits: bool = True
    """Split numbers into single digits (helps arithmetic, keeps the vocabulary small)."""
    memoize_words: bool = True
    """Encode BPE models word by word through a cache (the same ids, several times faster; other
    models, and BPE models whose normalizer rewrites whitespace, are always encoded plainly)."""
    add_bos: bool = False
    """Prepend BOS to every document when tokenizing for packing."""
    add_eos: bool = True
    """Append EOS to every document when tokenizing for packing (marks document ends in the stream)."""
    sample_bytes: int = 200_000_000
    """Target size of the training sample drawn from the whole corpus (documents are sampled by hash)."""
    sample_seed: int = 0
    """Seed of the deterministic document sample: same corpus + seed = same sample = same tokenizer."""
    max_sentence_bytes: int = 8192
    """SentencePiece trains on "sentences": documents are cut at line ends into pieces up to this size."""
    num_threads: int = 2
    """Threads SentencePiece uses for training."""
    show_progress: bool = True
    """Show SentencePiece's training log and a progress bar while collecting the sample."""

    def __post_init__(self) -> None:
        section = "data.tokenizer"
        _check_choice(section, "model_type", self.model_type, TokenizerModelType)
        _check_range(section, "vocab_size", self.vocab_size, 2, MAX_VOCAB_SIZE)
        if not 0.0 < self.character_coverage <= 1.0:
            _fail(section, "character_coverage", self.character_coverage, "in (0, 1]")
        _check_range(section, "sample_bytes", self.sample_bytes, 1)
        _check_range(section, "max_sentence_bytes", self.max_sentence_bytes, 16)
        _check_range(section, "num_threads", self.num_threads, 1)
        for name in ("user_defined_symbols", "control_symbols"):
            symbols = getattr(self, name)
            if len(set(symbols)) != len(symbols) or any(not s for s in symbols):
                _fail(section, name, symbols, "distinct non-empty strings")


@dataclass
class PackingConfig:
    """How tokenized documents become rows of exactly `seq_len` tokens."""

    seq_len: int = 2048
    """Tokens per packed row (L)."""
    packer: Packer = "greedy"
    """"greedy": concatenate and cut every L tokens (Megatron style, least padding);
    "best_fit": best-fit-decreasing bins, keeps more documents whole at the cost of some padding."""
    mask_cross_document_labels: bool = True
    """Set the label to IGNORE_INDEX (-100) where the next token belongs to another document (no cross-doc loss)."""
    long_doc_policy: LongDocPolicy = "split"
    """Documents longer than L: "split" into chunks (recorded) or "truncate" to L (dropped tokens counted)."""
    pad_id: Optional[int] = None
    """Token id used for padding; None uses the tokenizer's pad id, or EOS when it has none."""

    def __post_init__(self) -> None:
        _check_range("data.packing", "seq_len", self.seq_len, 2)
        _check_choice("data.packing", "packer", self.packer, Packer)
        _check_choice("data.packing", "long_doc_policy", self.long_doc_policy, LongDocPolicy)
        if self.pad_id is not None:
            _check_range("data.packing", "pad_id", self.pad_id, 0)


@dataclass
class CleaningConfig:
    """What to do with bad documents. Every decision is counted in the rejection report."""

    invalid_utf8: Utf8Policy = "repair"
    """"reject" the document, or "repair" it (invalid bytes become U+FFFD)."""
    max_doc_bytes: int = 16 * 1024 * 1024
    """Documents larger than this (bytes, after decompression) are handled by `oversize`."""
    oversize: OversizePolicy = "reject"
    """"reject" oversize documents or "truncate" them to `max_doc_bytes` (at a character boundary)."""
    min_doc_bytes: int = 1
    """Documents with fewer bytes once surrounding whitespace is stripped are rejected as "empty"."""
    binary_sniff_bytes: int = 8192
    """A NUL byte within this many leading bytes marks a document as binary (rejected)."""
    read_attempts: int = 3
    """Tries at reading a file's bytes before its documents are rejected as "read_error:*". Only errors a
    retry can fix are retried (I/O errors, an object store's timeouts); a missing file, a denied
    permission, a corrupt archive or invalid JSON are rejected at once. 1 never retries."""
    read_retry_wait_s: float = 1.0
    """Wait before the second try; it doubles before each further one (1 s, 2 s with the defaults)."""

    def __post_init__(self) -> None:
        _check_choice("data.cleaning", "invalid_utf8", self.invalid_utf8, Utf8Policy)
        _check_choice("data.cleaning", "oversize", self.oversize, OversizePolicy)
        _check_range("data.cleaning", "max_doc_bytes", self.max_doc_bytes, 1)
        _check_range("data.cleaning", "min_doc_bytes", self.min_doc_bytes, 0)
        _check_range("data.cleaning", "binary_sniff_bytes", self.binary_sniff_bytes, 1)
        _check_range("data.cleaning", "read_attempts", self.read_attempts, 1, 100)
        _check_range("data.cleaning", "read_retry_wait_s", self.read_retry_wait_s, 0.0, 600.0)


@dataclass
class LongContextConfig:
    """Which documents a stage packs, by their length in tokens: select, up-weight or mix long ones.

    Applied in this order: select (`min_doc_tokens`), up-weight, then mix; documents left out are
    counted in the manifest and the rejection report (reasons "long_context_filtered" and
    "long_context_mixed_out"). The defaults pack every document once.
    """

    min_doc_tokens: int = 0
    """Select: keep only documents with at least this many tokens (0 keeps all); others are reported as filtered."""
    upweight_min_tokens: int = 0
    """Up-weight: documents with at least this many tokens are repeated `upweight_factor` times (0 disables)."""
    upweight_factor: int = 1
    """How many copies of each long document are packed (1 = no up-weighting)."""
    mix_min_tokens: int = 0
    """Mix: documents with at least this many tokens are the long side of the mix (0 = no mix)."""
    mix_long_share: float = 0.0
    """Mix: share of the packed tokens that come from long documents (0 < share <= 1). The side with too
    many tokens is subsampled, documents taken in a fixed order (a hash of their id), until the share is
    reached; the base data is otherwise packed as it is. Needs the whole corpus's lengths, so it is
    computed over every work unit before packing."""
    previous_seq_len: int = 0
    """The previous stage's row length: the manifest reports the share of packed tokens that sit in
    documents longer than it (`long_doc_share`); 0 reports nothing. A campaign sets it per stage."""

    def __post_init__(self) -> None:
        section = "data.long_context"
        _check_range(section, "min_doc_tokens", self.min_doc_tokens, 0)
        _check_range(section, "upweight_min_tokens", self.upweight_min_tokens, 0)
        _check_range(section, "upweight_factor", self.upweight_factor, 1, 1000)
        if self.upweight_factor > 1 and self.upweight_min_tokens == 0:
            _fail(section, "upweight_min_tokens", 0, f">= 1 when upweight_factor = {self.upweight_factor} "
                  "(which documents to repeat)")
        _check_range(section, "mix_min_tokens", self.mix_min_tokens, 0)
        _check_range(section, "mix_long_share", self.mix_long_share, 0.0, 1.0)
        if (self.mix_min_tokens > 0) != (self.mix_long_share > 0):
            _fail(section, "mix_long_share", self.mix_long_share,
                  f"in (0, 1] with mix_min_tokens >= 1 (mix_min_tokens = {self.mix_min_tokens}), or 0 with 0")
        if self.mix_long_share > 0 and self.min_doc_tokens > 0:
            _fail(section, "mix_long_share", self.mix_long_share,
                  f"0 when min_doc_tokens = {self.min_doc_tokens} (selecting drops the base data a mix needs)")
        _check_range(section, "previous_seq_len", self.previous_seq_len, 0)


@dataclass
class DataPipelineConfig:
    """Raw text in, packed Parquet shards + manifest.json + rejections.parquet out."""

    inputs: list[str] = field(default_factory=list)
    """Files or folders, local paths or URIs pyarrow understands (s3://, gs://, file://). Document ids
    name files by their path below the inputs' deepest common folder, never by where that folder is."""
    output_dir: str = ""
    """Where shards, manifest.json, rejections.parquet and a trained tokenizer are written."""
    format: InputFormat = "auto"
    """"text" (one file = one document), "jsonl", "parquet", or "auto" (by file suffix)."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) holding the document text."""
    include_suffixes: list[str] = field(default_factory=list)
    """Only read files whose name ends with one of these (e.g. ".py", ".jsonl.gz"); empty reads all."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer to train or load."""
    packing: PackingConfig = field(default_factory=PackingConfig)
    """Packing into rows of `seq_len`."""
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    """Rejection and repair policies."""
    long_context: LongContextConfig = field(default_factory=LongContextConfig)
    """Long-document policy (select, up-weight, mix) and the long-document share to report."""
    shard_tokens: int = 1 << 24
    """Tokens (rows x seq_len) per Parquet shard; the loader holds one shard in memory per rank."""
    shard_compression: Compression = "none"
    """Parquet compression of the token columns (input_ids, labels): "none" (fastest to write and read),
    "zstd", "snappy" or "gzip". position_ids and seq_idx are always LZ4 (see forge_data.shards)."""
    work_unit_bytes: int = 8 * 1024 * 1024
    """Input bytes per Ray Data block (one actor call: read, clean, tokenize, one packing flush, write)."""
    num_tokenize_actors: int = 2
    """Size of the actor pool doing all the work (each holds a SentencePiece processor): one per core."""
    tokenize_actor_cpus: float = 0.5
    """Logical CPUs per actor; fractional so actors never starve Ray Data's own tasks."""
    shuffle_seed: int = 0
    """Seed of the deterministic shuffle of work units (mixes sources before packing)."""
    max_rejected_share: float = 0.05
    """Largest share of the input that may be lost before packing fails (0..1). Lost: rejected while reading
    or cleaning (read errors after `cleaning.read_attempts`, invalid JSON, binary, empty, oversize or invalid
    UTF-8 under "reject"); documents the long-context policy leaves out on purpose (`long_context_filtered`,
    `long_context_mixed_out`) are not lost. Measured two ways and both must stay within it: the share of
    documents, and the share of bytes (a document's bytes as read; a file that could not be read or parsed
    counts its stored size, so one lost file of a million documents weighs what it held). Beyond it,
    `pack_tokens` writes manifest.json and rejections.parquet, then fails with the counts by reason.
    1.0 never fails."""

    def __post_init__(self) -> None:
        section = "data"
        _check_choice(section, "format", self.format, InputFormat)
        _check_choice(section, "shard_compression", self.shard_compression, Compression)
        _check_range(section, "shard_tokens", self.shard_tokens, self.packing.seq_len)
        _check_range(section, "work_unit_bytes", self.work_unit_bytes, 1)
        _check_range(section, "num_tokenize_actors", self.num_tokenize_actors, 1)
        _check_range(section, "tokenize_actor_cpus", self.tokenize_actor_cpus, 0.01)
        _check_range(section, "max_rejected_share", self.max_rejected_share, 0.0, 1.0)
        if not self.text_field:
            _fail(section, "text_field", self.text_field, "a non-empty field name")
