"""The record: what went in, which tokenizer, where every token went (manifest.json).

Each block (work unit) returns a small report; `build_manifest` folds them in unit order, so the
manifest is deterministic too (no timestamps, sorted keys). The accounting invariants it checks:

    docs_in   == docs_packed + docs_rejected          (long-context filtering counts as rejected)
    tokens_tokenized - tokens_filtered + tokens_repeated == tokens_written + tokens_truncated

and, for an extension stage, how much of what it packs sits in documents longer than the previous
stage's rows (`long_doc_share`): the point of extending is documents the last stage had to cut.

What was lost (`docs_lost`, `bytes_lost`: rejected while reading or cleaning; the long-document
policy's left-outs are choices, not losses) is held against `data.max_rejected_share` by
`check_rejected_share`, which fails the run in one line carrying the counts by reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from forge_data import storage
from forge_data.long_context import FILTERED, MIXED_OUT

MANIFEST_FILE = "manifest.json"
REJECTIONS_FILE = "rejections.parquet"
COUNT_KEYS = (
    "docs_in", "docs_packed", "docs_rejected", "docs_repaired", "docs_split", "docs_truncated",
    "docs_repeated", "tokens_tokenized", "tokens_filtered", "tokens_repeated", "tokens_written",
    "tokens_truncated", "tokens_padding", "rows", "tokens_in_long_docs", "docs_lost", "bytes_lost", "bytes_in",
)


@dataclass
class ShardInfo:
    """One shard file, relative to the manifest's directory."""

    path: str
    num_rows: int
    num_tokens_written: int
    """Non-padding tokens in the shard."""
    num_bytes: Optional[int] = None
    """Size of the shard file (None in manifests before version 4: not checked)."""
    sha256: Optional[str] = None
    """sha256 of the shard file's bytes as written; the loader checks it when it opens the shard
    (None in manifests before version 4: not checked)."""


@dataclass
class Manifest:
    """Everything needed to trust, reproduce and read a packed dataset.

    Location-free except `location`: inputs are named by their path below the input root, and
    `config` lacks the fields that name places (inputs, output_dir, tokenizer.model_path), so the
    same corpus and config give the same manifest wherever they live; `location` alone records
    where this run read and wrote (as configured) and the input root the names are relative to.
    """

    seq_len: int
    shards: list[ShardInfo]
    counts: dict[str, int]
    rejected_by_reason: dict[str, int]
    repaired_by_reason: dict[str, int]
    inputs: list[dict[str, Any]]
    tokenizer: dict[str, Any]
    config: dict[str, Any]
    padding_ratio: float = 0.0
    truncation_ratio: float = 0.0
    location: dict[str, Any] = field(default_factory=dict)
    """{"input_root", "inputs", "output_dir", "tokenizer_path", "token_store"} of this run: the only
    place-dependent field."""
    previous_seq_len: int = 0
    """The previous stage's row length the long-document share is measured against (0: none)."""
    long_doc_share: Optional[float] = None
    """Share of the written tokens whose document (as tokenized, whole) has more than `previous_seq_len`
    tokens: counts["tokens_in_long_docs"] / counts["tokens_written"]; None when previous_seq_len is 0."""
    version: int = 4
    """4: shard sizes and sha256, bytes in and lost (3: packed from a token store, long-document share;
    2: location-free ids and names; 1: absolute URIs)."""
    root: str = field(default="", compare=False)
    """Directory the manifest was loaded from (not saved)."""

    @property
    def num_rows(self) -> int:
        """Packed sequences in the whole dataset."""
        return sum(s.num_rows for s in self.shards)

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, no timestamps)."""
        # Not dataclasses.asdict: it deep-copies every nested dict, and a corpus of many small
        # files has one `inputs` entry per file (0.2-0.4 s of driver time for 8000 files).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}
        data["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, root: str = "") -> "Manifest":
        """Inverse of `to_json`."""
        data = json.loads(text)
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return cls(**data, root=root)

    @classmethod
    def load(cls, path: str) -> "Manifest":
        """Read `manifest.json` (or the folder holding it) from a local path or a URI.

        A missing manifest is `storage.StorageNotFound` (a FileNotFoundError) saying whether shards
        are there: shards without a manifest are a packing run that did not finish.
        """
        if storage.is_uri(path):
            if not path.endswith(".json") or storage.is_dir(path):  # a folder, or a prefix with nothing under it
                path = storage.join(path, MANIFEST_FILE)
            try:
                text = storage.read_bytes(path).decode()
            except storage.StorageNotFound:
                raise _missing(path) from None
            return cls.from_json(text, root=path.rsplit("/", 1)[0])
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_FILE)
        try:
            with open(path) as f:
                return cls.from_json(f.read(), root=os.path.dirname(os.path.abspath(path)))
        except FileNotFoundError:
            raise _missing(path) from None

    def sha256(self) -> str:
        """Hash of the manifest text: identifies the dataset in a checkpoint's loader state."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _missing(path: str) -> storage.StorageNotFound:
    folder = storage.join(path.rsplit("/", 1)[0] if storage.is_uri(path) else os.path.dirname(path), "shards")  # stages.SHARD_DIR
    num_shards = sum(name.endswith(".parquet") and not name.endswith(".segments.parquet")
                     for name in storage.file_sizes(folder))
    if num_shards:
        return storage.StorageNotFound(f"{path}: missing, but {num_shards} shards are beside it: a packing run that "
                                       "did not finish (the manifest is written last); pack the data again")
    return storage.StorageNotFound(f"{path}: missing (python -m jobs.tokenize, or a campaign's stage, writes it)")


def check_accounting(counts: dict[str, int]) -> None:
    """Raise AssertionError if documents or tokens went missing (a bug, never bad data)."""
    docs = counts["docs_packed"] + counts["docs_rejected"]
    assert counts["docs_in"] == docs, f"docs_in {counts['docs_in']} != packed + rejected {docs}"
    lhs = counts["tokens_tokenized"] - counts["tokens_filtered"] + counts["tokens_repeated"]
    rhs = counts["tokens_written"] + counts["tokens_truncated"]
    assert lhs == rhs, f"tokens in {lhs} != tokens written + truncated {rhs}"


class TooMuchRejectedError(ValueError):
    """More of the input was lost than `data.max_rejected_share` allows."""


POLICY_REASONS = (FILTERED, MIXED_OUT)
"""The long-document policy's left-outs: deliberate, so never counted as lost."""


def check_rejected_share(manifest: Manifest, max_share: float, rejections_path: str) -> None:
    """Raise `TooMuchRejectedError` (one line) when the share of documents or of bytes lost exceeds `max_share`.

    A manifest without byte counts (packed from a store written before they were kept) is
    judged by documents alone.
    """
    c = manifest.counts
    docs_in, docs_lost = c.get("docs_in", 0), c.get("docs_lost", 0)
    bytes_in, bytes_lost = c.get("bytes_in", 0), c.get("bytes_lost", 0)
    doc_share = docs_lost / docs_in if docs_in else 0.0
    byte_share = bytes_lost / bytes_in if bytes_in else 0.0
    if doc_share <= max_share and byte_share <= max_share:
        return
    reasons = ", ".join(f"{reason} {n}" for reason, n in manifest.rejected_by_reason.items()
                        if reason not in POLICY_REASONS)
    bytes_part = f" and {byte_share:.3f} of bytes ({bytes_lost} of {bytes_in})" if bytes_in else ""
    raise TooMuchRejectedError(
        f"data.max_rejected_share = {max_share}: must be >= the share of the input lost, {doc_share:.3f} of documents "
        f"({docs_lost} of {docs_in}){bytes_part}; rejected by reason: {reasons}; every document with its reason in "
        f"{rejections_path}")


def build_manifest(reports: list[dict[str, Any]], seq_len: int, inputs: list[dict[str, Any]],
                   tokenizer: dict[str, Any], config: dict[str, Any],
                   location: dict[str, Any] | None = None,
                   previous_seq_len: int = 0) -> tuple[Manifest, list[dict[str, Any]]]:
    """Fold block reports (any order) into a manifest and the ordered list of rejection records.

    `previous_seq_len` > 0: report the share of written tokens in documents longer than it.

    `inputs`: one {"name", ...} per input file (name as in the reports' parts); hashes are added.
    """
    reports = sorted(reports, key=lambda r: r["unit_index"])
    counts: Counter[str] = Counter({k: 0 for k in COUNT_KEYS})
    rejected: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    shards: list[ShardInfo] = []
    records: list[dict[str, Any]] = []
    part_hashes: dict[str, list[tuple[int, str]]] = {}
    for report in reports:
        counts.update(report["counts"])
        shards.extend(ShardInfo(**s) for s in report["shards"])
        for rec in report["records"]:
            records.append(rec)
            (rejected if rec["action"] == "rejected" else repaired)[rec["reason"]] += 1
        for part in report["parts"]:
            part_hashes.setdefault(part["name"], []).append((part["start"], part["sha256"]))
    for item in inputs:
        hashes = [h for _, h in sorted(part_hashes.get(item["name"], []))]
        # Whole files: the file's sha256. Files read in byte ranges: sha256 of the ranges' digests.
        item["sha256"] = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
        item["num_parts"] = len(hashes)
    counts_dict = dict(counts)
    check_accounting(counts_dict)
    total = counts_dict["rows"] * seq_len
    to_pack = counts_dict["tokens_written"] + counts_dict["tokens_truncated"]
    manifest = Manifest(
        seq_len=seq_len, shards=shards, counts=counts_dict,
        rejected_by_reason=dict(sorted(rejected.items())), repaired_by_reason=dict(sorted(repaired.items())),
        inputs=inputs, tokenizer=tokenizer, config=config, location=dict(location or {}),
        padding_ratio=counts_dict["tokens_padding"] / total if total else 0.0,
        truncation_ratio=counts_dict["tokens_truncated"] / to_pack if to_pack else 0.0,
        previous_seq_len=previous_seq_len,
        long_doc_share=(counts_dict["tokens_in_long_docs"] / counts_dict["tokens_written"]
                        if previous_seq_len and counts_dict["tokens_written"] else None),
    )
    return manifest, records
