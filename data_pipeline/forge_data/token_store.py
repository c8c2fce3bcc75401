"""The token store: a corpus tokenized once, kept per work unit, packed as often as stages need.

A campaign's stages differ in row length and long-document policy, never in tokens, so the
corpus is read, cleaned and tokenized once (`forge_data.pipeline.tokenize_corpus`) and every
stage packs from here (`forge_data.pipeline.pack_tokens`) without the raw text or the tokenizer.

Layout under the store folder:

    units/unit-000000.parquet   one row per kept document of work unit 0: doc_id (string),
                                num_tokens (int32), num_bytes (int64), tokens (list<int32>)
    store.json                  the record: tokenizer, inputs with their hashes, the tokenizing
                                config, and per unit its cleaning records and input parts

Units keep the tokenizing plan's numbering, and packing flushes once per unit as the fused
pipeline did, so packing from the store writes the same shards, byte for byte, as packing right
after tokenizing (tests/data/test_token_store.py).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data import storage
from forge_data.sources import resolve_filesystem

STORE_FILE = "store.json"
UNIT_DIR = "units"
_SCHEMA = pa.schema([("doc_id", pa.string()), ("num_tokens", pa.int32()), ("num_bytes", pa.int64()),
                     ("tokens", pa.list_(pa.int32()))])


@dataclass
class UnitTokens:
    """The kept (not rejected) documents of one work unit, tokenized: what packing needs."""

    doc_ids: list[str]
    flat: np.ndarray
    """int32 token ids of every document one after another."""
    offsets: np.ndarray
    """int64, n + 1 entries: document i is flat[offsets[i]:offsets[i + 1]]."""
    num_bytes: np.ndarray
    """UTF-8 bytes of each document's cleaned text (the rejection report's size of a filtered one)."""


@dataclass
class TokenStore:
    """A store's record (store.json) and where it lives."""

    root: str
    """The store folder (local path or URI)."""
    tokenizer: dict[str, Any]
    """sha256, vocab_size, bos/eos/pad ids, ... of the tokenizer that made the tokens."""
    inputs: list[dict[str, Any]]
    """One {"name", "size", "format", "compression", "sha256", "num_parts"} per input file."""
    config: dict[str, Any]
    """The data config the tokens were made with, without fields that name places."""
    location: dict[str, Any]
    """Where the inputs and the tokenizer were (as configured)."""
    units: list[dict[str, Any]] = field(default_factory=list)
    """Per unit: {"unit_index", "path", "docs_in", "num_docs", "num_tokens", "records", "parts"}."""

    def save(self) -> None:
        """Write store.json (deterministic text: sorted keys)."""
        data = {"tokenizer": self.tokenizer, "inputs": self.inputs, "config": self.config,
                "location": self.location, "units": self.units}
        storage.publish(storage.join(self.root, STORE_FILE), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, root: str) -> "TokenStore":
        """Read a store's record; FileNotFoundError names the folder when there is none."""
        fs, path = resolve_filesystem(root)
        try:
            with fs.open_input_stream(posixpath.join(path, STORE_FILE)) as source:
                data = json.loads(source.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"token store {root!r}: no {STORE_FILE} (forge_data.pipeline.tokenize_corpus "
                                    "writes it)") from None
        return cls(root=root, **data)

    def document_lengths(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(doc ids, token counts, unit of each document) over the whole store, in unit order.

        Reads only the small columns: what a policy needing the whole corpus (a mix) looks at.
        """
        doc_ids: list[str] = []
        lengths, unit_of = [], []
        for unit in self.units:
            table = pq.read_table(self._unit_path(unit), columns=["doc_id", "num_tokens"],
                                  filesystem=resolve_filesystem(self.root)[0])
            doc_ids += table.column("doc_id").to_pylist()
            lengths.append(table.column("num_tokens").to_numpy().astype(np.int64))
            unit_of.append(np.full(table.num_rows, unit["unit_index"], dtype=np.int64))
        if not lengths:
            return doc_ids, np.zeros(0, np.int64), np.zeros(0, np.int64)
        return doc_ids, np.concatenate(lengths), np.concatenate(unit_of)

    def read_unit(self, unit: dict[str, Any]) -> UnitTokens:
        """One unit's documents and tokens."""
        table = pq.read_table(self._unit_path(unit), filesystem=resolve_filesystem(self.root)[0])
        tokens = table.column("tokens").combine_chunks()
        if isinstance(tokens, pa.ChunkedArray):  # an empty table has no chunk to combine
            tokens = pa.array([], pa.list_(pa.int32()))
        offsets = tokens.offsets.to_numpy().astype(np.int64)
        flat = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        # A list array sliced by Parquet may not start at 0 in its values buffer.
        flat = flat[offsets[0]:offsets[-1]] if len(offsets) else flat[:0]
        offsets = offsets - (offsets[0] if len(offsets) else 0)
        if len(offsets) == 0:
            offsets = np.zeros(1, np.int64)
        return UnitTokens(table.column("doc_id").to_pylist(), flat, offsets,
                          table.column("num_bytes").to_numpy().astype(np.int64))

    def _unit_path(self, unit: dict[str, Any]) -> str:
        return posixpath.join(resolve_filesystem(self.root)[1], unit["path"])


def unit_file(unit_index: int) -> str:
    """A unit's file, relative to the store folder."""
    return f"{UNIT_DIR}/unit-{unit_index:06d}.parquet"


def write_unit_tokens(store_root: str, unit_index: int, tokens: UnitTokens) -> str:
    """Write one unit's documents; returns the file's path relative to the store."""
    fs, root = resolve_filesystem(store_root)
    rel = unit_file(unit_index)
    lengths = np.diff(tokens.offsets)
    lists = pa.ListArray.from_arrays(pa.array(tokens.offsets.astype(np.int32)), pa.array(tokens.flat, pa.int32()))
    table = pa.Table.from_arrays([pa.array(tokens.doc_ids, pa.string()), pa.array(lengths.astype(np.int32)),
                                  pa.array(tokens.num_bytes.astype(np.int64)), lists], schema=_SCHEMA)
    fs.create_dir(posixpath.join(root, UNIT_DIR), recursive=True)
    with fs.open_output_stream(posixpath.join(root, rel)) as sink:
        pq.write_table(table, sink, compression="zstd", write_statistics=False)
    return rel
