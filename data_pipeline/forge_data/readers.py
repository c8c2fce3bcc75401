"""Reading: one file part -> documents with stable ids, raw bytes and read errors.

Readers never raise on bad data: a corrupt gzip, a broken JSON line or a missing text field
becomes a document with `read_error` set, so the cleaning step counts it in the rejection
report. Every document id is `<name>#<offset>`: the file's location-free name (its path below the
input root, see sources.py) and the byte offset of the line for JSONL, row index for Parquet, 0
for a text file; stable across runs, machines and the folder the corpus lives in.

Reading the stored bytes is retried (`attempts`, waits of `retry_wait_s` doubling) when it fails
with an error a retry can fix: an I/O error, an object store's timeout. A missing file, a denied
permission, a corrupt archive or invalid JSON fail the same way every time and are reported at
once. A failed document carries the bytes it stood for (`lost_bytes`: the part's stored size
for a part that could not be read, the line's for a broken JSON line), so the rejection report
and the pipeline's rejected share (`data.max_rejected_share`) weigh a lost file by its size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from forge_data.config import CleaningConfig
from forge_data.sources import FilePart, resolve_filesystem

_LINE_PROBE_BYTES = 1 << 16
# OSErrors that a second try cannot fix; every other OSError (EIO, timeouts, a reset connection,
# pyarrow's object-store errors) is retried.
_PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
DEFAULT_READ_ATTEMPTS = CleaningConfig.read_attempts
DEFAULT_RETRY_WAIT_S = CleaningConfig.read_retry_wait_s
_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ReadResult:
    """Documents of one file part plus the hash of the exact bytes the part covers."""

    doc_ids: list[str] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    read_errors: list[str | None] = field(default_factory=list)
    lost_bytes: list[int] = field(default_factory=list)
    """Per document: bytes a failed read stood for (0 for a document read whole)."""
    part_sha256: str = ""
    num_retries: int = 0
    """Failed attempts before the part's bytes were read (or given up on)."""

    def add(self, doc_id: str, raw: bytes, error: str | None = None, lost_bytes: int = 0) -> None:
        """Append one document (or one failed read, with the bytes it stood for)."""
        self.doc_ids.append(doc_id)
        self.raws.append(raw)
        self.read_errors.append(error)
        self.lost_bytes.append(lost_bytes)


def with_retries(read: Callable[[], T], what: str, attempts: int, retry_wait_s: float) -> tuple[T, int]:
    """(read(), failed attempts before it worked); retries transient OSErrors with a doubling wait.

    Raises the last error when every attempt failed, and a permanent error (`_PERMANENT_ERRORS`)
    at once.
    """
    for attempt in range(attempts):
        try:
            return read(), attempt
        except _PERMANENT_ERRORS:
            raise
        except OSError as exc:
            if attempt + 1 >= attempts:
                _log.warning("reading %s failed %d times, rejecting it: %s", what, attempts, exc)
                raise
            wait = retry_wait_s * 2 ** attempt
            _log.warning("reading %s failed (%s); attempt %d of %d in %.1f s", what, exc, attempt + 2, attempts, wait)
            time.sleep(wait)
    raise AssertionError(f"attempts = {attempts}: must be >= 1")


def _read_range_aligned(part: FilePart) -> tuple[bytes, bytes, int]:
    """Read [start, end) of an uncompressed file, extended to whole lines.

    A line belongs to the range holding its first byte, so neighbouring ranges neither drop nor
    duplicate a line. Returns (lines, exact range bytes for hashing, file offset of `lines`).
    """
    fs, path = resolve_filesystem(part.uri)
    with fs.open_input_file(path) as f:
        exact = f.read_at(part.end - part.start, part.start) if part.end > part.start else b""
        tail = b""
        pos = part.end
        # Extend past `end` until the line that started inside the range is complete.
        while pos < part.file_size and (not (exact + tail).endswith(b"\n")):
            chunk = f.read_at(min(_LINE_PROBE_BYTES, part.file_size - pos), pos)
            cut = chunk.find(b"\n")
            if cut >= 0:
                tail += chunk[: cut + 1]
                break
            tail += chunk
            pos += len(chunk)
        skip = 0
        if part.start > 0 and f.read_at(1, part.start - 1) != b"\n":
            # The first partial line belongs to the previous range.
            cut = exact.find(b"\n")
            skip = len(exact) if cut < 0 else cut + 1
            if cut < 0:
                tail = b""
    return (exact + tail)[skip:], exact, part.start + skip


def _read_local_file(path: str, size_hint: int) -> bytes:
    """A whole local file with plain syscalls: for a corpus of small files (source code), opening
    a pyarrow stream per file cost ~50% more than the read itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        # size_hint + 1, so a file that has not changed since listing is read (and EOF seen) in two calls.
        while chunk := os.read(fd, max(size_hint + 1, 1 << 16)):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_stored(part: FilePart) -> bytes:
    """A whole file's bytes as stored (still compressed)."""
    if "://" in part.uri:
        fs, path = resolve_filesystem(part.uri)
        with fs.open_input_file(path) as f:
            return f.read()
    return _read_local_file(part.uri, part.file_size)


def _decompress(raw: bytes, compression: str) -> bytes:
    """The file's content. May raise on corrupt data.

    In memory on purpose: the manifest's hash covers the stored bytes (taken before this, so a
    file that fails to decompress still has one), and pyarrow's streams decompress gzip and zstd
    without needing the `zstandard` package."""
    if compression == "none":
        return raw
    return pa.CompressedInputStream(pa.BufferReader(raw), compression).read()


def _add_jsonl_docs(out: ReadResult, name: str, data: bytes, base_offset: int, text_field: str) -> None:
    """One document per non-blank line; blank lines are separators, not documents."""
    offset = base_offset
    for line in data.split(b"\n"):
        line_offset, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        doc_id = f"{name}#{line_offset}"
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            out.add(doc_id, b"", "invalid_json", len(line))
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            out.add(doc_id, b"", "missing_text_field", len(line))
            continue
        # surrogatepass keeps lone surrogates ("\ud800") as invalid UTF-8 for the cleaner to judge.
        out.add(doc_id, text.encode("utf-8", "surrogatepass"))


def _add_parquet_docs(out: ReadResult, name: str, raw: bytes, text_field: str) -> None:
    """One document per row of `text_field` (string or binary column); nulls are reported."""
    table = pq.ParquetFile(pa.BufferReader(raw))
    if text_field not in table.schema_arrow.names:
        out.add(f"{name}#0", b"", "missing_text_field", len(raw))
        return
    column = table.read(columns=[text_field]).column(0)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        out.add(f"{name}#0", b"", "missing_text_field", len(raw))
        return
    # Binary view of strings is zero-copy; to_pylist then yields bytes without a decode/encode trip.
    values = column.cast(pa.large_binary()).to_pylist()
    for row, value in enumerate(values):
        if value is None:
            out.add(f"{name}#{row}", b"", "missing_text_field")
        else:
            out.add(f"{name}#{row}", value)


def read_file_part(part: FilePart, text_field: str, attempts: int = DEFAULT_READ_ATTEMPTS,
                   retry_wait_s: float = DEFAULT_RETRY_WAIT_S) -> ReadResult:
    """Read one part into documents. Errors become `read_error` documents, never exceptions.

    Reading the stored bytes is tried up to `attempts` times (see `with_retries`); decompressing
    and parsing them is not retried (the same bytes fail the same way).
    """
    out = ReadResult()
    stored_bytes = part.end - part.start
    ranged = part.format == "jsonl" and part.compression == "none" and (part.start > 0 or part.end < part.file_size)
    try:
        if ranged:
            (data, exact, base), out.num_retries = with_retries(lambda: _read_range_aligned(part), part.doc_id_prefix,
                                                                attempts, retry_wait_s)
            out.part_sha256 = hashlib.sha256(exact).hexdigest()
            _add_jsonl_docs(out, part.doc_id_prefix, data, base, text_field)
            return out
        raw, out.num_retries = with_retries(lambda: _read_stored(part), part.doc_id_prefix, attempts, retry_wait_s)
        out.part_sha256 = hashlib.sha256(raw).hexdigest()
        data = _decompress(raw, part.compression)
    except (OSError, pa.ArrowException) as exc:
        out.add(f"{part.doc_id_prefix}#0", b"", f"read_error:{type(exc).__name__}", stored_bytes)
        return out
    if part.format == "text":
        out.add(f"{part.doc_id_prefix}#0", data)
    elif part.format == "jsonl":
        _add_jsonl_docs(out, part.doc_id_prefix, data, 0, text_field)
    else:
        try:
            _add_parquet_docs(out, part.doc_id_prefix, data, text_field)
        except (OSError, pa.ArrowException) as exc:
            out.add(f"{part.doc_id_prefix}#0", b"", f"read_error:{type(exc).__name__}", stored_bytes)
    return out
