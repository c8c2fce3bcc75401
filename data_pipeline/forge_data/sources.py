"""Finding input files and cutting them into work units (one unit = one Ray Data block).

Planning happens on the driver from file listings only (no file contents), so the plan — and
with it every block boundary, packing flush and shard byte — depends only on the inputs and the
config, never on how many CPUs or actors Ray happens to have.

Every file also gets a `name`: its URI without the *input root*, the deepest folder holding all
inputs (`input_root`). Document ids, segments, rejections and the manifest use names only, so the
same corpus in another folder (another checkout, another bucket prefix) gives the same bytes; the
manifest records the root once, in its `location` field.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.fs as pafs

from forge_data.storage import resolve_filesystem  # here before storage.py existed: readers and stages import it here

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
    name: str = ""
    """The URI without the input root (`input_root`): what ids and the manifest record."""


@dataclass(frozen=True)
class FilePart:
    """A byte range of one file read by one work unit; [0, size) for whole files."""

    uri: str
    format: str
    compression: str
    start: int
    end: int
    file_size: int
    name: str = ""
    """Location-free name of the file (document ids start with it); empty means the URI."""

    @property
    def doc_id_prefix(self) -> str:
        """What this part's document ids start with: the file's name, else its URI."""
        return self.name or self.uri


def _location_prefix(uri: str, is_dir: bool) -> str:
    """The start of the URIs of files found under input `uri` that names where the corpus lives:
    the folder itself for a folder, the parent folder for a file. A copy elsewhere differs only there."""
    return uri.rstrip("/") + "/" if is_dir else uri[: uri.rfind("/") + 1]


def _common_folder(prefixes: list[str]) -> str:
    common = os.path.commonprefix(prefixes)
    return common[: common.rfind("/") + 1]


def input_root(inputs: list[str]) -> str:
    """The deepest folder (a prefix ending in "/", or "") holding every input's location prefix.

    For one folder input it is that folder, for one file its parent folder, for several inputs
    their common folder ("/data/" for /data/en/ and /data/de/), so names stay unique.
    """
    prefixes = []
    for uri in inputs:
        fs, path = resolve_filesystem(uri)
        prefixes.append(_location_prefix(uri, fs.get_file_info(path).type == pafs.FileType.Directory))
    return _common_folder(prefixes)


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

    Each file's `name` is its path below `input_root(inputs)`. Raises FileNotFoundError for an
    input that does not exist (a typo must not silently yield an empty corpus), and ValueError
    when two different URIs would get the same name (one file listed twice under two spellings).
    """
    stats = []  # one stat per input (a request each on an object store)
    for uri in inputs:
        fs, path = resolve_filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"data input {uri!r} does not exist")
        stats.append((uri, fs, path, info, _location_prefix(uri, info.type == pafs.FileType.Directory)))
    root = _common_folder([prefix for *_, prefix in stats])  # = input_root(inputs)
    found: dict[str, InputFile] = {}
    for uri, fs, path, info, prefix in stats:
        # Names are this input's folder below the root, then the file's path below this input.
        below_root = prefix[len(root):]
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            infos = [i for i in infos if i.type == pafs.FileType.File]
            base = path.rstrip("/")
        else:
            infos = [info]
            base = path[: path.rfind("/") + 1]
        for i in infos:
            if include_suffixes and not i.path.endswith(tuple(include_suffixes)):
                continue
            full = _join_uri(uri, path, i.path)
            name = below_root + i.path[len(base):].lstrip("/")
            found[full] = InputFile(full, int(i.size or 0), format_of(i.base_name, fmt), compression_of(i.base_name), name)
    files = [found[k] for k in sorted(found)]
    names: dict[str, str] = {}
    for f in files:
        if names.setdefault(f.name, f.uri) != f.uri:
            raise ValueError(f"data inputs {inputs!r} list one file twice: {names[f.name]!r} and {f.uri!r}")
    return files


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
                units.append([FilePart(f.uri, f.format, f.compression, start, end, f.size, f.name)])
            continue
        if f.format != "text" or f.size >= target_bytes:
            close_group()
            units.append([FilePart(f.uri, f.format, f.compression, 0, f.size, f.size, f.name)])
            continue
        if group_bytes + f.size > target_bytes:
            close_group()
        group.append(FilePart(f.uri, f.format, f.compression, 0, f.size, f.size, f.name))
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
