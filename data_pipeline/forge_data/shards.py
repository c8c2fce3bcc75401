"""Shard files: the packed-batch columns on disk, and where each piece of a row came from.

Layout (a deliberate choice, measured): one Parquet row per *token*, flat non-nullable int32
columns `input_ids`, `labels`, `position_ids`, `seq_idx`; sequence r is tokens [r*L, (r+1)*L)
and L is stored in the file's key-value metadata. Writing the same data as one list<int32> per
sequence cost about twice as much per token (Parquet computes repetition levels for every value),
and the pipeline's budget beside SentencePiece is a few tens of nanoseconds per token.
All columns are PLAIN, non-nullable (no definition levels), without statistics, page index or
dictionary (no reader filters on them). `position_ids` (ramps) and `seq_idx` (constants) are
LZ4-compressed: ~2 ns/token each and 0.5 / 0.02 bytes per token, where DELTA_BINARY_PACKED took
~6 ns/token each (pyarrow 25 on the 2-core VM, see benchmarks/data). Token columns use
`shard_compression` ("none" by default: LZ4 on token ids cost ~6 ns/token per column to save
~3 bytes, more than writing those bytes costs).
Pages are 2^18 values (1 MiB), handed to the column writers in batches of the same size: with
pyarrow's defaults (batches of 1024 values, pages of at most 20000 rows) the per-batch bookkeeping
and one write syscall per 80 KB page made writing cost ~10 ns/token; this way ~5 ns/token, most
of it the kernel copying 8.5 bytes/token into the page cache.

Beside each shard, `<shard>.segments.parquet` lists every piece: (row, seq_idx, doc_id,
doc_token_offset, num_tokens) so every token can be traced to its document.

Each shard's size and sha256 (of its bytes as written, hashed on the way to storage, so nothing
is read back; 6-9.5 ns/token more to write on the 2-core VM) go into the manifest; `read_shard`
checks both before Parquet sees the file, so a corrupt or truncated shard is one line naming it
(`CorruptShardError`), never a pyarrow traceback.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data import storage
from forge_data.packing import PackedRows

COLUMNS = ("input_ids", "labels", "position_ids", "seq_idx")
SEQ_LEN_KEY = b"forge_data.seq_len"
_SCHEMA = pa.schema([pa.field(name, pa.int32(), nullable=False) for name in COLUMNS])
_ENCODING = {name: "PLAIN" for name in COLUMNS}
_LAYOUT_CODEC = "lz4"  # position_ids and seq_idx, whatever the token columns use
_ROWS_PER_ROW_GROUP = 256
_VALUES_PER_PAGE = 1 << 18  # 1 MiB of int32 (pyarrow's default data_page_size)


def _column(values: np.ndarray) -> pa.Array:
    """Zero-copy Arrow view of a contiguous int32 numpy array."""
    values = np.ascontiguousarray(values, dtype=np.int32).ravel()
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def write_shard(sink: pa.NativeFile | str, packed: PackedRows, rows: slice, compression: str) -> None:
    """Write rows `rows` of `packed` as one shard file (deterministic bytes for the same input)."""
    seq_len = packed.input_ids.shape[1]
    arrays = [_column(getattr(packed, name)[rows]) for name in COLUMNS]
    table = pa.Table.from_arrays(arrays, schema=_SCHEMA.with_metadata({SEQ_LEN_KEY: str(seq_len).encode()}))
    codecs = {"input_ids": compression, "labels": compression, "position_ids": _LAYOUT_CODEC, "seq_idx": _LAYOUT_CODEC}
    pq.write_table(
        table, sink, compression=codecs, use_dictionary=False, write_statistics=False,
        column_encoding=_ENCODING, row_group_size=_ROWS_PER_ROW_GROUP * seq_len,
        write_batch_size=_VALUES_PER_PAGE, max_rows_per_page=_VALUES_PER_PAGE,
    )


class _HashingSink:
    """A write-only file that hashes what passes through it on its way to `sink` (pyarrow accepts it
    as a Python file; the bytes written are the same as writing to `sink` directly)."""

    def __init__(self, sink: pa.NativeFile) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.num_bytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.num_bytes += view.nbytes
        return self.sink.write(data)

    def tell(self) -> int:
        return self.num_bytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True  # the caller owns and closes `sink`


def write_shard_checked(sink: pa.NativeFile, packed: PackedRows, rows: slice, compression: str) -> tuple[int, str]:
    """`write_shard` to `sink`, returning the file's (size in bytes, sha256) for the manifest."""
    hashing = _HashingSink(sink)
    write_shard(hashing, packed, rows, compression)  # type: ignore[arg-type]  (a Python file)
    return hashing.num_bytes, hashing.hash.hexdigest()


class CorruptShardError(ValueError):
    """A shard whose bytes are not the ones the manifest recorded (or not Parquet at all)."""


def segments_table(packed: PackedRows, rows: slice, doc_ids: list[str]) -> pa.Table:
    """Pieces of rows `rows`: which document (and which token offset in it) each seq_idx holds."""
    lo, hi = packed.row_piece_offsets[rows.start], packed.row_piece_offsets[rows.stop]
    counts = np.diff(packed.row_piece_offsets[rows.start:rows.stop + 1])
    piece_row = np.repeat(np.arange(rows.stop - rows.start, dtype=np.int32), counts)
    piece_rank = (np.arange(hi - lo) - np.repeat(packed.row_piece_offsets[rows.start:rows.stop] - lo, counts)).astype(np.int32)
    piece_doc = packed.piece_doc[lo:hi]
    return pa.table({
        "row": piece_row,
        "seq_idx": piece_rank,
        "doc_id": pa.array(doc_ids).take(pa.array(piece_doc)) if len(doc_ids) else pa.array([], pa.string()),
        "doc_token_offset": packed.piece_offset[lo:hi],
        "num_tokens": packed.piece_len[lo:hi].astype(np.int32),
    })


def read_shard(path: str, memory_map: bool = True, num_bytes: Optional[int] = None,
               sha256: Optional[str] = None, name: Optional[str] = None) -> dict[str, np.ndarray]:
    """Load a shard as (R, L) int32 arrays keyed by column name.

    With `num_bytes` / `sha256` (the manifest's), the file is checked first: one read (a memory
    map), hashed, then parsed from the same bytes. Any mismatch, or bytes Parquet cannot parse,
    raises `CorruptShardError` naming the shard as `name` (default: its path).
    """
    name = name or path
    try:
        if storage.is_uri(path):  # an object store: the whole shard in one request, into memory
            data = storage.read_buffer(path)
        else:  # Not closed here: the buffer (and the arrays parsed from it) keep the mapping alive.
            data = (pa.memory_map(path) if memory_map else pa.OSFile(path)).read_buffer()
        if num_bytes is not None and data.size != num_bytes:
            raise CorruptShardError(f"shard {name}: {data.size} bytes, the manifest recorded {num_bytes} (truncated "
                                    "or overwritten; pack the data again)")
        if sha256 is not None and (actual := hashlib.sha256(memoryview(data)).hexdigest()) != sha256:
            raise CorruptShardError(f"shard {name}: sha256 {actual[:16]}... is not the manifest's {sha256[:16]}... "
                                    "(corrupt; pack the data again)")
        pf = pq.ParquetFile(pa.BufferReader(data))
        seq_len = int(pf.schema_arrow.metadata[SEQ_LEN_KEY])
        table = pf.read(columns=list(COLUMNS))
        return {name_: table.column(name_).to_numpy().reshape(-1, seq_len) for name_ in COLUMNS}
    except CorruptShardError:
        raise
    except FileNotFoundError:
        raise CorruptShardError(f"shard {name}: missing (the manifest lists it; pack the data again)") from None
    except storage.StorageError:
        raise  # the store cannot be reached or refuses us: the shard may be fine
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        first_line = (str(exc).splitlines() or [""])[0]
        raise CorruptShardError(f"shard {name}: not a readable shard ({type(exc).__name__}: {first_line})") from None
