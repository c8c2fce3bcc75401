"""The pipeline's work on one work unit, as plain code that Ray only wires.

`read_clean_unit` (read, then clean): a unit's file parts -> its documents, cleaned, plus the hash of
every byte range read. `ShardBuilder` (the Ray Data actor: it holds the SentencePiece processor)
does a whole unit: read and clean, tokenize, weight long documents, pack, write shards, and
returns one small JSON report.

One Ray Data step, not a read task feeding a tokenize actor: text never leaves the process that read it.
Shipping documents through the object store, and a second set of Ray workers competing for the
cores, cost more than reading and cleaning themselves (measured on 2 cores: benchmarks/data).
Shards are named by unit, so names and bytes do not depend on scheduling.

Both are importable and callable without Ray; the tests and `run_pipeline(use_ray=False)` do that.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data.cleaning import ACTION_REJECTED, clean_documents
from forge_data.config import CleaningConfig, DataPipelineConfig
from forge_data.long_context import document_weights, repeat_documents
from forge_data.malloc_tuning import keep_freed_memory
from forge_data.packing import pack_flat
from forge_data.readers import read_file_part
from forge_data.shards import segments_table, write_shard
from forge_data.sources import FilePart, decode_unit, resolve_filesystem
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
        read = read_file_part(part, text_field)
        cleaned = clean_documents(read.raws, read.read_errors, cleaning)
        out.doc_ids += read.doc_ids
        out.texts += cleaned.texts
        out.reasons += cleaned.reasons
        out.actions += cleaned.actions
        out.num_bytes += cleaned.num_bytes
        out.parts.append({"name": part.doc_id_prefix, "start": part.start, "end": part.end, "sha256": read.part_sha256})
    return out


class ShardBuilder:
    """Actor body: holds one SentencePiece processor; turns work units into shards and reports."""

    def __init__(self, model_proto: bytes, cfg: DataPipelineConfig, pad_id: int, owns_process: bool = False) -> None:
        """`owns_process`: this builder is all its process does (a Ray actor), so it may tune the allocator."""
        if owns_process:
            keep_freed_memory()
        self.tokenizer = Tokenizer(model_proto, memoize_words=cfg.tokenizer.memoize_words)
        self.cfg = cfg
        self.pad_id = pad_id
        self.fs, self.out_dir = resolve_filesystem(cfg.output_dir)
        self.fs.create_dir(posixpath.join(self.out_dir, SHARD_DIR), recursive=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data's entry point: rows of the plan (unit_index, parts) in, one report per unit out."""
        units = zip(batch.column("unit_index").to_pylist(), batch.column("parts").to_pylist())
        reports = [self.build(unit_index, decode_unit(parts)) for unit_index, parts in units]
        return pa.table({"unit_index": [r["unit_index"] for r in reports],
                         "report": [json.dumps(r) for r in reports]})

    def build(self, unit_index: int, parts: list[FilePart]) -> dict[str, Any]:
        """Read, clean, tokenize, weight, pack and write one work unit; returns its report (JSON-ready)."""
        cfg, packing = self.cfg, self.cfg.packing
        t_start = time.perf_counter()
        docs = read_clean_unit(parts, cfg.text_field, cfg.cleaning)
        records = [{"doc_id": d, "reason": r, "action": a, "num_bytes": b}
                   for d, r, a, b in zip(docs.doc_ids, docs.reasons, docs.actions, docs.num_bytes) if a is not None]
        kept = [i for i, t in enumerate(docs.texts) if t is not None]
        doc_ids = [docs.doc_ids[i] for i in kept]
        texts = [docs.texts[i] for i in kept]
        t_read = time.perf_counter()
        # The whole unit at once, on UTF-8 bytes, into one int32 buffer: no Python int per token.
        flat, offsets = self.tokenizer.encode_flat(texts, cfg.tokenizer.add_bos, cfg.tokenizer.add_eos)
        lengths = np.diff(offsets)
        t_encoded = time.perf_counter()

        weights = document_weights(lengths, cfg.long_context)
        for i in np.flatnonzero(weights == 0):
            records.append({"doc_id": doc_ids[i], "reason": "long_context_filtered", "action": ACTION_REJECTED,
                            "num_bytes": len(texts[i])})
        flat, offsets, doc_index = repeat_documents(flat, offsets, weights)
        packed = pack_flat(flat, offsets, packing.seq_len, packing.packer, packing.mask_cross_document_labels,
                           packing.long_doc_policy, self.pad_id)
        t_packed = time.perf_counter()
        shards = self._write_shards(packed, [doc_ids[i] for i in doc_index], unit_index)

        s = packed.stats
        counts = {
            "docs_in": len(docs.doc_ids),
            "docs_rejected": sum(1 for r in records if r["action"] == ACTION_REJECTED),
            "docs_repaired": sum(1 for r in records if r["action"] != ACTION_REJECTED),
            "docs_packed": int((weights > 0).sum()),
            "docs_split": s.num_docs_split, "docs_truncated": s.num_docs_truncated,
            "docs_repeated": int((weights - 1).clip(min=0).sum()),
            "tokens_tokenized": int(lengths.sum()),
            "tokens_filtered": int(lengths[weights == 0].sum()),
            "tokens_repeated": int((lengths * (weights - 1).clip(min=0)).sum()),
            "tokens_written": s.num_tokens_written, "tokens_truncated": s.num_tokens_truncated,
            "tokens_padding": s.num_tokens_padding, "rows": s.num_rows,
        }
        # Seconds per step, for benchmarks and progress only: build_manifest ignores them.
        timing = {"read_clean_s": t_read - t_start, "encode_s": t_encoded - t_read, "pack_s": t_packed - t_encoded,
                  "write_s": time.perf_counter() - t_packed}
        return {"unit_index": unit_index, "counts": counts,
                "shards": shards, "records": records, "parts": docs.parts, "timing": timing}

    def _write_shards(self, packed: Any, doc_ids: list[str], unit_index: int) -> list[dict[str, Any]]:
        """Cut the unit's rows into shards of at most `shard_tokens` tokens and write them."""
        rows_per_shard = max(1, self.cfg.shard_tokens // self.cfg.packing.seq_len)
        num_rows = packed.input_ids.shape[0]
        shard_dir = posixpath.join(self.out_dir, SHARD_DIR)
        infos = []
        for k, start in enumerate(range(0, num_rows, rows_per_shard)):
            rows = slice(start, min(num_rows, start + rows_per_shard))
            name = f"shard-{unit_index:06d}-{k:04d}"
            with self.fs.open_output_stream(posixpath.join(shard_dir, name + ".parquet")) as sink:
                write_shard(sink, packed, rows, self.cfg.shard_compression)
            segments = segments_table(packed, rows, doc_ids)
            with self.fs.open_output_stream(posixpath.join(shard_dir, name + ".segments.parquet")) as sink:
                pq.write_table(segments, sink, compression="zstd")
            infos.append({"path": f"{SHARD_DIR}/{name}.parquet", "num_rows": rows.stop - rows.start,
                          "num_tokens_written": int(segments.column("num_tokens").to_numpy().sum())})
        return infos
