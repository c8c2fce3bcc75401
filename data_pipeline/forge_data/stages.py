"""The pipeline's work on one work unit, as plain code that Ray only wires.

`read_clean_unit` (read, then clean): a unit's file parts -> its documents, cleaned, plus the hash of
every byte range read. `tokenize_unit`: then tokenized, into one flat int32 buffer. `pack_unit`:
a unit's tokens -> long-document weights, packed rows, shard files and one small JSON report.

`UnitTokenizer` is the Ray Data actor (it holds the SentencePiece processor) that reads, cleans and
tokenizes a whole unit into the token store; packing reads the store (`pipeline.pack_tokens`), so
a campaign tokenizes once and packs every stage from the same tokens. `ShardBuilder` does both
halves in one call without the store (what benchmarks/data times step by step; the tests check it
writes the same shards as the store's round trip).

One Ray Data step, not a read task feeding a tokenize actor: text never leaves the process that read it.
Shipping documents through the object store, and a second set of Ray workers competing for the
cores, cost more than reading and cleaning themselves (measured on 2 cores: benchmarks/data).
Shards and store files are named by unit, so names and bytes do not depend on scheduling.

All are importable and callable without Ray; the tests and `run_pipeline(use_ray=False)` do that.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data.cleaning import ACTION_REJECTED, clean_documents
from forge_data.config import CleaningConfig, DataPipelineConfig
from forge_data.long_context import FILTERED, MIXED_OUT, document_weights, repeat_documents, tokens_in_long_documents
from forge_data.malloc_tuning import keep_freed_memory
from forge_data.packing import pack_flat
from forge_data.readers import read_file_part
from forge_data.shards import segments_table, write_shard_checked
from forge_data.sources import FilePart, decode_unit, resolve_filesystem
from forge_data.token_store import UnitTokens, write_unit_tokens
from forge_data.tokenizer import Tokenizer

SHARD_DIR = "shards"


@dataclass
class UnitDocuments:
    """Every document of one work unit after cleaning, in read order."""

    doc_ids: list[str] = field(default_factory=list)
    texts: list[bytes | None] = field(default_factory=list)
    """Valid UTF-8 bytes to tokenize, or None when rejected."""
    reasons: list[str | None] = field(default_factory=list)
    actions: list[str | None] = field(default_factory=list)
    num_bytes: list[int] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    """One {"name", "start", "end", "sha256"} per file part: the manifest's input hashes."""


def read_clean_unit(parts: list[FilePart], text_field: str, cleaning: CleaningConfig) -> UnitDocuments:
    """Read and clean the file parts of one work unit."""
    out = UnitDocuments()
    for part in parts:
        read = read_file_part(part, text_field, cleaning.read_attempts, cleaning.read_retry_wait_s)
        cleaned = clean_documents(read.raws, read.read_errors, cleaning)
        out.doc_ids += read.doc_ids
        out.texts += cleaned.texts
        out.reasons += cleaned.reasons
        out.actions += cleaned.actions
        # A failed read has no bytes of its own: it weighs what it stood for (readers.ReadResult.lost_bytes).
        out.num_bytes += [lost or n for lost, n in zip(read.lost_bytes, cleaned.num_bytes)]
        out.parts.append({"name": part.doc_id_prefix, "start": part.start, "end": part.end, "sha256": read.part_sha256})
    return out


def tokenize_unit(tokenizer: Tokenizer, cfg: DataPipelineConfig, unit_index: int,
                  parts: list[FilePart]) -> tuple[UnitTokens, dict[str, Any]]:
    """Read, clean and tokenize one unit: (its kept documents' tokens, the store's entry for the unit).

    The entry holds what packing needs besides tokens: documents in, cleaning records, parts read.
    """
    t_start = time.perf_counter()
    docs = read_clean_unit(parts, cfg.text_field, cfg.cleaning)
    records = [{"doc_id": d, "reason": r, "action": a, "num_bytes": b}
               for d, r, a, b in zip(docs.doc_ids, docs.reasons, docs.actions, docs.num_bytes) if a is not None]
    kept = [i for i, t in enumerate(docs.texts) if t is not None]
    texts = [docs.texts[i] for i in kept]
    t_read = time.perf_counter()
    # The whole unit at once, on UTF-8 bytes, into one int32 buffer: no Python int per token.
    flat, offsets = tokenizer.encode_flat(texts, cfg.tokenizer.add_bos, cfg.tokenizer.add_eos)
    tokens = UnitTokens([docs.doc_ids[i] for i in kept], flat, offsets,
                        np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    entry = {"unit_index": unit_index, "docs_in": len(docs.doc_ids), "bytes_in": sum(docs.num_bytes), "num_docs": len(kept),
             "num_tokens": int(offsets[-1]), "records": records, "parts": docs.parts,
             "timing": {"read_clean_s": t_read - t_start, "encode_s": time.perf_counter() - t_read}}
    return tokens, entry


def pack_unit(tokens: UnitTokens, entry: dict[str, Any], cfg: DataPipelineConfig, pad_id: int,
              weights: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Weight, pack and write one unit's documents as shards; returns its report (JSON-ready).

    `weights`: copies of each document decided over the whole corpus (a mix); None decides here
    (select and up-weight look at one document at a time). A weight of 0 is reported with its
    reason: filtered by the selection, or mixed out.
    """
    packing, policy = cfg.packing, cfg.long_context
    t_start = time.perf_counter()
    lengths = np.diff(tokens.offsets)
    selected = document_weights(lengths, policy)
    weights = selected if weights is None else weights
    records = list(entry["records"])
    for i in np.flatnonzero(weights == 0):
        records.append({"doc_id": tokens.doc_ids[i], "reason": FILTERED if selected[i] == 0 else MIXED_OUT,
                        "action": ACTION_REJECTED, "num_bytes": int(tokens.num_bytes[i])})
    flat, offsets, doc_index = repeat_documents(tokens.flat, tokens.offsets, weights)
    packed = pack_flat(flat, offsets, packing.seq_len, packing.packer, packing.mask_cross_document_labels,
                       packing.long_doc_policy, pad_id)
    t_packed = time.perf_counter()
    shards = _write_shards(cfg, packed, [tokens.doc_ids[i] for i in doc_index], entry["unit_index"])

    s = packed.stats
    lost = [r for r in entry["records"] if r["action"] == ACTION_REJECTED]  # the policy's left-outs are not lost
    counts = {
        "docs_in": entry["docs_in"],
        "docs_rejected": sum(1 for r in records if r["action"] == ACTION_REJECTED),
        "docs_lost": len(lost), "bytes_lost": sum(r["num_bytes"] for r in lost),
        "bytes_in": entry.get("bytes_in", 0),  # 0: a store written before bytes were counted
        "docs_repaired": sum(1 for r in records if r["action"] != ACTION_REJECTED),
        "docs_packed": int((weights > 0).sum()),
        "docs_split": s.num_docs_split, "docs_truncated": s.num_docs_truncated,
        "docs_repeated": int((weights - 1).clip(min=0).sum()),
        "tokens_tokenized": int(lengths.sum()),
        "tokens_filtered": int(lengths[weights == 0].sum()),
        "tokens_repeated": int((lengths * (weights - 1).clip(min=0)).sum()),
        "tokens_written": s.num_tokens_written, "tokens_truncated": s.num_tokens_truncated,
        "tokens_padding": s.num_tokens_padding, "rows": s.num_rows,
        # Whole-document lengths as tokenized, whatever packing cut or truncated.
        "tokens_in_long_docs": tokens_in_long_documents(packed.piece_doc, packed.piece_len, lengths[doc_index],
                                                        policy.previous_seq_len),
    }
    # Seconds per step, for benchmarks and progress only: build_manifest ignores them.
    timing = {"pack_s": t_packed - t_start, "write_s": time.perf_counter() - t_packed}
    return {"unit_index": entry["unit_index"], "counts": counts,
            "shards": shards, "records": records, "parts": entry["parts"], "timing": timing}


def _write_shards(cfg: DataPipelineConfig, packed: Any, doc_ids: list[str], unit_index: int) -> list[dict[str, Any]]:
    """Cut the unit's rows into shards of at most `shard_tokens` tokens and write them."""
    fs, out_dir = resolve_filesystem(cfg.output_dir)
    rows_per_shard = max(1, cfg.shard_tokens // cfg.packing.seq_len)
    num_rows = packed.input_ids.shape[0]
    shard_dir = posixpath.join(out_dir, SHARD_DIR)
    fs.create_dir(shard_dir, recursive=True)
    infos = []
    for k, start in enumerate(range(0, num_rows, rows_per_shard)):
        rows = slice(start, min(num_rows, start + rows_per_shard))
        name = f"shard-{unit_index:06d}-{k:04d}"
        with fs.open_output_stream(posixpath.join(shard_dir, name + ".parquet")) as sink:
            num_bytes, sha256 = write_shard_checked(sink, packed, rows, cfg.shard_compression)
        segments = segments_table(packed, rows, doc_ids)
        with fs.open_output_stream(posixpath.join(shard_dir, name + ".segments.parquet")) as sink:
            pq.write_table(segments, sink, compression="zstd")
        infos.append({"path": f"{SHARD_DIR}/{name}.parquet", "num_rows": rows.stop - rows.start,
                      "num_tokens_written": int(segments.column("num_tokens").to_numpy().sum()),
                      "num_bytes": num_bytes, "sha256": sha256})
    return infos


class UnitTokenizer:
    """Actor body: holds one SentencePiece processor; turns work units into token store files."""

    def __init__(self, model_proto: bytes, cfg: DataPipelineConfig, store_root: str, owns_process: bool = False) -> None:
        """`owns_process`: this tokenizer is all its process does (a Ray actor), so it may tune the allocator."""
        if owns_process:
            keep_freed_memory()
        self.tokenizer = Tokenizer(model_proto, memoize_words=cfg.tokenizer.memoize_words)
        self.cfg = cfg
        self.store_root = store_root

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data's entry point: rows of the plan (unit_index, parts) in, one store entry per unit out."""
        units = zip(batch.column("unit_index").to_pylist(), batch.column("parts").to_pylist())
        entries = [self.build(unit_index, decode_unit(parts)) for unit_index, parts in units]
        return pa.table({"unit_index": [e["unit_index"] for e in entries],
                         "report": [json.dumps(e) for e in entries]})

    def build(self, unit_index: int, parts: list[FilePart]) -> dict[str, Any]:
        """Read, clean, tokenize and store one unit; returns its store entry (JSON-ready)."""
        tokens, entry = tokenize_unit(self.tokenizer, self.cfg, unit_index, parts)
        t_write = time.perf_counter()
        entry["path"] = write_unit_tokens(self.store_root, unit_index, tokens)
        entry["timing"]["write_tokens_s"] = time.perf_counter() - t_write
        return entry


class ShardBuilder:
    """A whole unit in one call, without the token store: tokenize_unit, then pack_unit.

    Select and up-weight only (a mix needs the whole corpus). The reference the store's round
    trip is tested against, and what benchmarks/data times step by step.
    """

    def __init__(self, model_proto: bytes, cfg: DataPipelineConfig, pad_id: int, owns_process: bool = False) -> None:
        if owns_process:
            keep_freed_memory()
        self.tokenizer = Tokenizer(model_proto, memoize_words=cfg.tokenizer.memoize_words)
        self.cfg = cfg
        self.pad_id = pad_id

    def build(self, unit_index: int, parts: list[FilePart]) -> dict[str, Any]:
        """Read, clean, tokenize, weight, pack and write one work unit; returns its report (JSON-ready)."""
        if self.cfg.long_context.mix_long_share > 0:
            raise ValueError("ShardBuilder packs one unit at a time: a mix (data.long_context.mix_long_share) "
                             "needs the whole corpus, use run_pipeline")
        tokens, entry = tokenize_unit(self.tokenizer, self.cfg, unit_index, parts)
        report = pack_unit(tokens, entry, self.cfg, self.pad_id)
        report["timing"] = {**entry["timing"], **report["timing"]}
        return report
