"""The two Ray Data stages, as plain callables on Arrow batches (Ray only wires them).

1. `read_clean_batch` (a task): work units -> one row per document (text or rejection reason),
   plus one trailing "unit record" row (doc_id null) carrying the hashes of the bytes read.
2. `TokenizePackWorker` (an actor: it holds the SentencePiece processor): documents -> tokenize
   (stage 4) -> long-context weights (stage 7) -> pack (stage 5) -> write shards (stage 6), and
   returns one small JSON report per block. Shards are written by the actors in parallel, named
   by (unit, first document ordinal), so names and bytes do not depend on scheduling.

Both are importable and callable without Ray; the tests do exactly that.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data.cleaning import ACTION_REJECTED, clean_documents
from forge_data.config import CleaningConfig, DataPipelineConfig
from forge_data.long_context import document_weights, repeat_documents
from forge_data.packing import pack_flat
from forge_data.readers import read_file_part
from forge_data.shards import segments_table, write_shard
from forge_data.sources import decode_unit, resolve_filesystem
from forge_data.tokenizer import Tokenizer

SHARD_DIR = "shards"
DOCS_SCHEMA = pa.schema([
    ("unit_index", pa.int64()), ("doc_ordinal", pa.int64()), ("doc_id", pa.string()),
    ("text", pa.large_binary()), ("num_bytes", pa.int64()), ("reason", pa.string()),
    ("action", pa.string()), ("unit_report", pa.string()),
])


def read_clean_batch(batch: pa.Table, text_field: str, cleaning: CleaningConfig) -> pa.Table:
    """Read and clean every work unit in `batch` (columns unit_index, parts)."""
    cols: dict[str, list[Any]] = {name: [] for name in DOCS_SCHEMA.names}
    for unit_index, parts_json in zip(batch.column("unit_index").to_pylist(), batch.column("parts").to_pylist()):
        ordinal = 0
        part_hashes = []
        for part in decode_unit(parts_json):
            read = read_file_part(part, text_field)
            part_hashes.append({"uri": part.uri, "start": part.start, "end": part.end, "sha256": read.part_sha256})
            cleaned = clean_documents(read.raws, read.read_errors, cleaning)
            n = len(read.doc_ids)
            cols["unit_index"] += [unit_index] * n
            cols["doc_ordinal"] += range(ordinal, ordinal + n)
            cols["doc_id"] += read.doc_ids
            cols["text"] += cleaned.texts
            cols["num_bytes"] += cleaned.num_bytes
            cols["reason"] += cleaned.reasons
            cols["action"] += cleaned.actions
            cols["unit_report"] += [None] * n
            ordinal += n
        # The unit record: always present, so even a unit with no documents reports its inputs.
        for name, value in (("unit_index", unit_index), ("doc_ordinal", ordinal), ("doc_id", None), ("text", None),
                            ("num_bytes", 0), ("reason", None), ("action", None),
                            ("unit_report", json.dumps({"parts": part_hashes}))):
            cols[name].append(value)
    return pa.table(cols, schema=DOCS_SCHEMA)


class TokenizePackWorker:
    """Actor body: holds one SentencePiece processor; each call handles one block of documents."""

    def __init__(self, model_proto: bytes, cfg: DataPipelineConfig, pad_id: int) -> None:
        self.tokenizer = Tokenizer(model_proto)
        self.cfg = cfg
        self.pad_id = pad_id
        self.fs, self.out_dir = resolve_filesystem(cfg.output_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        report = self.process(batch)
        return pa.table({"unit_index": [report["unit_index"]], "report": [json.dumps(report)]})

    def process(self, batch: pa.Table) -> dict[str, Any]:
        """Tokenize, weight, pack and write one block; returns its report (JSON-ready)."""
        cfg, packing = self.cfg, self.cfg.packing
        t_start = time.perf_counter()
        unit_index = int(batch.column("unit_index")[0].as_py())
        first_ordinal = int(batch.column("doc_ordinal")[0].as_py())
        # Plain lists, one entry per document: cheaper than Arrow filters that copy the text.
        doc_col, texts_col, reason_col, action_col, bytes_col, unit_col = (
            batch.column(c).to_pylist() for c in ("doc_id", "text", "reason", "action", "num_bytes", "unit_report"))
        parts = [p for r in unit_col if r is not None for p in json.loads(r)["parts"]]
        records = [{"doc_id": d, "reason": r, "action": a, "num_bytes": b}
                   for d, r, a, b in zip(doc_col, reason_col, action_col, bytes_col) if d is not None and a is not None]
        kept = [i for i, (d, t) in enumerate(zip(doc_col, texts_col)) if d is not None and t is not None]
        doc_ids = [doc_col[i] for i in kept]
        texts = [texts_col[i] for i in kept]
        # One C++ call for the whole block, on UTF-8 bytes; int32 buffers come back without a
        # Python int per token.
        arrays = self.tokenizer.encode_numpy(texts, cfg.tokenizer.add_bos, cfg.tokenizer.add_eos)
        lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(arrays) if len(arrays) else np.zeros(0, np.int32)
        t_encoded = time.perf_counter()

        weights = document_weights(lengths, cfg.long_context)
        for i in np.flatnonzero(weights == 0):
            records.append({"doc_id": doc_ids[i], "reason": "long_context_filtered", "action": ACTION_REJECTED,
                            "num_bytes": len(texts[i])})
        flat, offsets, doc_index = repeat_documents(flat, offsets, weights)
        packed = pack_flat(flat, offsets, packing.seq_len, packing.packer, packing.mask_cross_document_labels,
                           packing.long_doc_policy, self.pad_id)
        t_packed = time.perf_counter()
        shards = self._write_shards(packed, [doc_ids[i] for i in doc_index], unit_index, first_ordinal)

        s = packed.stats
        counts = {
            "docs_in": sum(d is not None for d in doc_col),
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
        # Seconds per stage, for benchmarks and progress only: build_manifest ignores them.
        timing = {"encode_s": t_encoded - t_start, "pack_s": t_packed - t_encoded,
                  "write_s": time.perf_counter() - t_packed}
        return {"unit_index": unit_index, "first_doc_ordinal": first_ordinal, "counts": counts,
                "shards": shards, "records": records, "parts": parts, "timing": timing}

    def _write_shards(self, packed: Any, doc_ids: list[str], unit_index: int, first_ordinal: int) -> list[dict[str, Any]]:
        """Cut the block's rows into shards of at most `shard_tokens` tokens and write them."""
        rows_per_shard = max(1, self.cfg.shard_tokens // self.cfg.packing.seq_len)
        num_rows = packed.input_ids.shape[0]
        shard_dir = posixpath.join(self.out_dir, SHARD_DIR)
        self.fs.create_dir(shard_dir, recursive=True)
        infos = []
        for k, start in enumerate(range(0, num_rows, rows_per_shard)):
            rows = slice(start, min(num_rows, start + rows_per_shard))
            name = f"shard-{unit_index:06d}-{first_ordinal:09d}-{k:04d}"
            with self.fs.open_output_stream(posixpath.join(shard_dir, name + ".parquet")) as sink:
                write_shard(sink, packed, rows, self.cfg.shard_compression)
            segments = segments_table(packed, rows, doc_ids)
            with self.fs.open_output_stream(posixpath.join(shard_dir, name + ".segments.parquet")) as sink:
                pq.write_table(segments, sink, compression="zstd")
            infos.append({"path": f"{SHARD_DIR}/{name}.parquet", "num_rows": rows.stop - rows.start,
                          "num_tokens_written": int(segments.column("num_tokens").to_numpy().sum())})
        return infos


def config_dict(cfg: DataPipelineConfig) -> dict[str, Any]:
    """The config as recorded in the manifest."""
    return asdict(cfg)
