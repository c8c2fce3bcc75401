"""Finding input files and cutting them into work units (one unit = one Ray Data block).

Planning happens on the driver from file listings only (no file contents), so the plan — and
with it every block boundary, packing flush and shard byte — depends only on the inputs and the
config, never on how many CPUs or actors Ray happens to have.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.fs as pafs

COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class InputFile:
    """One file to read: where it is, how big it is on storage, how to decode it."""

    uri: str
    """Path or URI as the user would write it (local paths stay plain)."""
    size: int
    """Size in bytes on storage (compressed size for compressed files)."""
    format: str
    """"text", "jsonl" or "parquet"."""
    compression: str
    """"none", "gzip", "zstd" or "bz2" (from the suffix)."""


@dataclass(frozen=True)
class FilePart:
    """A byte range of one file read by one work unit; [0, size) for whole files."""

    uri: str
    format: str
    compression: str
    start: int
    end: int
    file_size: int


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return pyarrow's filesystem for `uri` and the path inside it (plain paths are local)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(uri)


def location_prefix(uri: str) -> str:
    """The start of the URIs of files found under input `uri` that names where the corpus lives:
    the folder itself for a folder, the parent folder for a file. A copy elsewhere differs only there."""
    fs, path = resolve_filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return uri.rstrip("/") + "/"
    return uri[: uri.rfind("/") + 1]


def compression_of(name: str) -> str:
    """Compression codec implied by the file name's last suffix."""
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return codec
    return "none"


def format_of(name: str, configured: str) -> str:
    """File format: the configured one, or for "auto" the suffix under any compression suffix."""
    if configured != "auto":
        return configured
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def _join_uri(uri: str, base_path: str, found_path: str) -> str:
    """Rebuild a URI for a file found under `uri` (pyarrow returns paths without the scheme)."""
    if "://" not in uri:
        return found_path
    scheme = uri.split("://", 1)[0]
    return f"{scheme}://{found_path}"


def list_input_files(inputs: list[str], fmt: str, include_suffixes: list[str]) -> list[InputFile]:
    """Expand folders recursively, filter by suffix, and sort so the listing is deterministic.

    Raises FileNotFoundError for an input that does not exist: a typo must not silently yield an
    empty corpus.
    """
    found: dict[str, InputFile] = {}
    for uri in inputs:
        fs, path = resolve_filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"data input {uri!r} does not exist")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            infos = [i for i in infos if i.type == pafs.FileType.File]
        else:
            infos = [info]
        for i in infos:
            if include_suffixes and not i.path.endswith(tuple(include_suffixes)):
                continue
            full = _join_uri(uri, path, i.path)
            found[full] = InputFile(full, int(i.size or 0), format_of(i.base_name, fmt), compression_of(i.base_name))
    return [found[k] for k in sorted(found)]


def plan_work_units(files: list[InputFile], target_bytes: int, shuffle_seed: int) -> list[list[FilePart]]:
    """Group files into units of about `target_bytes`, splitting large uncompressed JSONL files.

    Small text files are grouped (one task per tiny file would drown in Ray overhead); an
    uncompressed JSONL file is cut into byte ranges (the reader aligns them to line ends);
    compressed files cannot be seeked, so each is one unit, as is each Parquet file.
    Units are then permuted with `shuffle_seed` so sources mix before packing.
    """
    units: list[list[FilePart]] = []
    group: list[FilePart] = []
    group_bytes = 0

    def close_group() -> None:
        nonlocal group, group_bytes
        if group:
            units.append(group)
        group, group_bytes = [], 0

    for f in files:
        if f.format == "jsonl" and f.compression == "none" and f.size > target_bytes:
            close_group()
            for start in range(0, f.size, target_bytes):
                end = min(f.size, start + target_bytes)
                units.append([FilePart(f.uri, f.format, f.compression, start, end, f.size)])
            continue
        if f.format != "text" or f.size >= target_bytes:
            close_group()
            units.append([FilePart(f.uri, f.format, f.compression, 0, f.size, f.size)])
            continue
        if group_bytes + f.size > target_bytes:
            close_group()
        group.append(FilePart(f.uri, f.format, f.compression, 0, f.size, f.size))
        group_bytes += f.size
    close_group()
    order = np.random.default_rng(shuffle_seed).permutation(len(units))
    return [units[i] for i in order]


def encode_unit(unit_index: int, parts: list[FilePart]) -> dict[str, object]:
    """One row of the plan dataset: a JSON string keeps Arrow from guessing nested types."""
    return {"unit_index": unit_index, "parts": json.dumps([asdict(p) for p in parts])}


def decode_unit(parts_json: str) -> list[FilePart]:
    """Inverse of `encode_unit`'s "parts" column."""
    return [FilePart(**p) for p in json.loads(parts_json)]
