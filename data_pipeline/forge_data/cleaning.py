"""Cleaning and checking: decide for every document whether it is kept, repaired or rejected.

A pure function over a batch of raw documents. Nothing is dropped silently: each rejected or
repaired document carries its reason, which ends up in `rejections.parquet` and the manifest.

Reasons: `binary`, `invalid_utf8`, `empty`, `oversize` (rejections, plus any `read_error:*`,
`invalid_json`, `missing_text_field` from the reader); repairs: `invalid_utf8` (bytes replaced
by U+FFFD) and `oversize` (truncated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from forge_data.config import CleaningConfig

ACTION_REJECTED = "rejected"
ACTION_REPAIRED = "repaired"


@dataclass
class CleanResult:
    """Per input document: the text to tokenize (None if rejected) and what happened to it."""

    texts: list[bytes | None] = field(default_factory=list)
    """Text as valid UTF-8 bytes (SentencePiece takes bytes: no str is built), or None when rejected."""
    reasons: list[str | None] = field(default_factory=list)
    """Why the document was rejected or repaired; None when it passed untouched."""
    actions: list[str | None] = field(default_factory=list)
    """"rejected", "repaired" or None."""
    num_bytes: list[int] = field(default_factory=list)
    """Raw size in bytes (after decompression), for the report."""


def _truncate_utf8(raw: bytes, max_bytes: int) -> bytes:
    """Cut to at most `max_bytes` (< len(raw)) without splitting a multi-byte character."""
    cut = max_bytes
    # raw[cut] is the first byte left out; a continuation byte (0b10xxxxxx) there means the
    # character started before the cut, so back up to its lead byte.
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut]


def _check_structure(raw: bytes, read_error: str | None, cfg: CleaningConfig) -> tuple[bytes | None, str | None, str | None]:
    """Every check except UTF-8 validity: read errors, binary, oversize, empty."""
    if read_error is not None:
        return None, read_error, ACTION_REJECTED
    if raw.find(b"\x00", 0, cfg.binary_sniff_bytes) >= 0:
        return None, "binary", ACTION_REJECTED
    reason = action = None
    if len(raw) > cfg.max_doc_bytes:
        if cfg.oversize == "reject":
            return None, "oversize", ACTION_REJECTED
        raw = _truncate_utf8(raw, cfg.max_doc_bytes)
        reason, action = "oversize", ACTION_REPAIRED
    # bytes.isspace() is a C loop that stops at the first non-space, so strip() rarely runs.
    if cfg.min_doc_bytes > 0 and (not raw or raw.isspace() or len(raw.strip()) < cfg.min_doc_bytes):
        return None, "empty", ACTION_REJECTED
    return raw, reason, action


def _fix_utf8(raw: bytes, reason: str | None, action: str | None, cfg: CleaningConfig) -> tuple[bytes | None, str | None, str | None]:
    """Validate one document's UTF-8 and apply the policy."""
    try:
        raw.decode("utf-8")
        return raw, reason, action
    except UnicodeDecodeError:
        if cfg.invalid_utf8 == "reject":
            return None, "invalid_utf8", ACTION_REJECTED
        # A document both truncated and repaired reports the UTF-8 repair (the rarer event).
        return raw.decode("utf-8", errors="replace").encode("utf-8"), "invalid_utf8", ACTION_REPAIRED


def clean_document(raw: bytes, read_error: str | None, cfg: CleaningConfig) -> tuple[bytes | None, str | None, str | None]:
    """Judge one document, the obvious way; returns (text bytes or None, reason, action)."""
    text, reason, action = _check_structure(raw, read_error, cfg)
    if text is None:
        return text, reason, action
    return _fix_utf8(text, reason, action, cfg)


def clean_documents(raws: Sequence[bytes], read_errors: Sequence[str | None], cfg: CleaningConfig) -> CleanResult:
    """Clean a batch; same result as `clean_document` per document, faster.

    Pure-ASCII documents (most code, much prose) are valid UTF-8: `bytes.isascii` checks that at
    memory speed without building a str. The rest are validated together in one Arrow cast
    (~10 GB/s, versus ~1 GB/s for bytes.decode); only if that fails is each re-checked alone.
    """
    out = CleanResult(num_bytes=[len(r) for r in raws])
    for raw, error in zip(raws, read_errors):
        text, reason, action = _check_structure(raw, error, cfg)
        out.texts.append(text)
        out.reasons.append(reason)
        out.actions.append(action)
    non_ascii = [i for i, t in enumerate(out.texts) if t is not None and not t.isascii()]
    if not non_ascii:
        return out
    try:
        pa.array([out.texts[i] for i in non_ascii], type=pa.large_binary()).cast(pa.large_string())
        return out
    except pa.ArrowInvalid:
        pass
    for i in non_ascii:
        out.texts[i], out.reasons[i], out.actions[i] = _fix_utf8(out.texts[i], out.reasons[i], out.actions[i], cfg)
    return out
