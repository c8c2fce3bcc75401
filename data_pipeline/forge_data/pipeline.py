"""Raw text in, packed shards + manifest.json + rejections.parquet out, in two steps.

`tokenize_corpus`: read, clean and tokenize with Ray Data into a token store (forge_data.token_store).
`pack_tokens`: a store -> a stage's shards at its seq_len under its long-document policy; no text,
no tokenizer, so a campaign tokenizes once and packs each stage from the same tokens.
`run_pipeline` is the two one after the other (the store goes to `<output_dir>/tokens`).

Wiring only; the work is in stages.py. The plan of work units is made on the driver from file
listings, each unit is one Ray Data block handled by one actor call end to end, and store files
and shards are named by unit, so output bytes depend only on the inputs and the config (not on
where they live: ids and names are relative to the input root, and `location` fields alone name places):

    from_items(units) -> map_batches(UnitTokenizer)  actor pool: read, clean, tokenize, write the store
                      -> driver: entries -> store.json
    store -> driver: policy weights over every document -> per unit: pack, write shards
                      -> manifest.json, rejections.parquet

Packing runs on the driver, unit after unit: it reads int32 tokens and moves them with numpy (tens
of nanoseconds a token against SentencePiece's hundreds), small beside tokenizing even for a corpus
a single machine tokenizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import asdict
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge_data import storage
from forge_data.config import DataPipelineConfig
from forge_data.long_context import document_weights, mix_weights
from forge_data.manifest import MANIFEST_FILE, REJECTIONS_FILE, Manifest, build_manifest, check_rejected_share
from forge_data.sources import (decode_unit, encode_unit, input_root, list_input_files, plan_work_units,
                                resolve_filesystem)
from forge_data.stages import SHARD_DIR, UnitTokenizer, pack_unit
from forge_data.token_store import STORE_FILE, UNIT_DIR, TokenStore
from forge_data.tokenizer import Tokenizer, load_tokenizer
from forge_data.tokenizer_training import train_tokenizer

REJECTIONS_SCHEMA = pa.schema([("doc_id", pa.string()), ("reason", pa.string()), ("action", pa.string()),
                               ("num_bytes", pa.int64())])
TOKENS_DIR = "tokens"
"""run_pipeline's token store, inside its output folder."""
# What packing decides: the rest of the data config is the store's (how the tokens were made).
PACKING_FIELDS = ("packing", "long_context", "shard_tokens", "shard_compression", "max_rejected_share")


def resolve_pad_id(cfg: DataPipelineConfig, pad_id: int, eos_id: int) -> int:
    """Padding id: configured, else the tokenizer's pad, else EOS (labels mask padding anyway)."""
    if cfg.packing.pad_id is not None:
        return cfg.packing.pad_id
    if pad_id >= 0:
        return pad_id
    return max(eos_id, 0)


def prepare_tokenizer(cfg: DataPipelineConfig) -> tuple[str, Tokenizer]:
    """Load the configured tokenizer, or train one into `<output_dir>/tokenizer`."""
    out_dir = storage.join(cfg.output_dir, "tokenizer")
    path = train_tokenizer(cfg.tokenizer, cfg.inputs, out_dir, format=cfg.format, text_field=cfg.text_field,
                           include_suffixes=cfg.include_suffixes, cleaning=cfg.cleaning,
                           work_unit_bytes=cfg.work_unit_bytes)
    return path, load_tokenizer(path, memoize_words=cfg.tokenizer.memoize_words)


def split_location(cfg: DataPipelineConfig, tokenizer_path: str) -> tuple[dict, dict]:
    """(the config without fields that name places, those places): the manifest's `config` and `location`."""
    config = asdict(cfg)
    location = {"input_root": input_root(cfg.inputs), "inputs": config.pop("inputs"),
                "output_dir": config.pop("output_dir"), "tokenizer_path": tokenizer_path}
    config["tokenizer"].pop("model_path")
    return config, location


def _entries_with_ray(cfg: DataPipelineConfig, unit_rows: list[dict], tokenizer: Tokenizer, store_root: str,
                      on_report: Optional[Callable[[dict], None]]) -> list[dict]:
    import ray

    ds = ray.data.from_items(unit_rows, override_num_blocks=len(unit_rows))
    ds = ds.map_batches(UnitTokenizer, fn_constructor_kwargs={"model_proto": tokenizer.model_proto, "cfg": cfg,
                                                              "store_root": store_root, "owns_process": True},
                        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.num_tokenize_actors),
                        num_cpus=cfg.tokenize_actor_cpus)
    reports = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for text in batch.column("report").to_pylist():
            reports.append(json.loads(text))
            if on_report is not None:
                on_report(reports[-1])
    return reports


def _entries_in_process(cfg: DataPipelineConfig, unit_rows: list[dict], tokenizer: Tokenizer, store_root: str,
                        on_report: Optional[Callable[[dict], None]]) -> list[dict]:
    """The same work, one unit after another in this process (debugging, tests without Ray)."""
    builder = UnitTokenizer(tokenizer.model_proto, cfg, store_root)
    reports = []
    for row in unit_rows:
        reports.append(builder.build(row["unit_index"], decode_unit(row["parts"])))
        if on_report is not None:
            on_report(reports[-1])
    return reports


def _require_ray() -> None:
    """forge_data never starts Ray: where and how is its caller's policy (forge_platform.cluster.ensure_ray)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("forge_data.tokenize_corpus needs a running Ray: start one first (forge_platform's jobs do; "
                           "else ray.init(num_cpus=N), N > data.num_tokenize_actors on a small machine)")


def tokenize_corpus(cfg: DataPipelineConfig, store_root: str, use_ray: bool = True,
                    on_report: Optional[Callable[[dict], None]] = None) -> TokenStore:
    """Read, clean and tokenize `cfg.inputs` with Ray Data (on the Ray the caller started) into a token store.

    Trains the tokenizer into `<cfg.output_dir>/tokenizer` unless `cfg.tokenizer.model_path` names one.
    `on_report` is called on the driver with each unit's store entry as it arrives (progress,
    throughput); entries carry a "timing" entry that never reaches store.json.
    `use_ray=False` runs the identical steps serially in this process and writes identical bytes
    (it needs `cfg.tokenizer.model_path`: training draws its sample with Ray).
    """
    if not cfg.inputs:
        raise ValueError(f"data.inputs = {cfg.inputs!r}: must be set")
    if use_ray:
        _require_ray()
    elif not cfg.tokenizer.model_path:
        raise ValueError("tokenize_corpus(use_ray=False) needs data.tokenizer.model_path (training samples with Ray)")
    # Object stores are checked before any work: unreachable, refused or missing is one line now, not a
    # failure in an actor after tokenizing (local paths: nothing is checked here, as before).
    for uri in cfg.inputs + [cfg.tokenizer.model_path or ""]:
        storage.check_location(uri)
    for uri in dict.fromkeys([cfg.output_dir, store_root]):  # the output folder first, then the store if elsewhere
        storage.check_location(uri, write=True)
    files = list_input_files(cfg.inputs, cfg.format, cfg.include_suffixes)
    if not files:
        raise ValueError(f"no input files found under {cfg.inputs!r} (include_suffixes={cfg.include_suffixes!r})")
    if not cfg.tokenizer.model_path and not cfg.output_dir:
        raise ValueError("data.output_dir = '': must be set to train a tokenizer (or give data.tokenizer.model_path)")
    tokenizer_path, tokenizer = prepare_tokenizer(cfg)

    fs, root = resolve_filesystem(store_root)
    storage.remove(storage.join(store_root, STORE_FILE))  # the commit point goes first, comes back last
    # Units of an earlier run would be mixed with ours: the unit folder belongs to this function.
    fs.delete_dir_contents(posixpath.join(root, UNIT_DIR), missing_dir_ok=True)
    units = plan_work_units(files, cfg.work_unit_bytes, cfg.shuffle_seed)
    unit_rows = [encode_unit(i, u) for i, u in enumerate(units)]
    entries = (_entries_with_ray if use_ray else _entries_in_process)(cfg, unit_rows, tokenizer, store_root, on_report)
    entries = sorted(entries, key=lambda e: e["unit_index"])

    inputs = [{"name": f.name, "size": f.size, "format": f.format, "compression": f.compression} for f in files]
    _add_input_hashes(inputs, entries)
    config, location = split_location(cfg, tokenizer_path)
    for name in PACKING_FIELDS + ("output_dir",):
        config.pop(name, None)
    location.pop("output_dir")
    # Relative when it lives in the output folder; a tokenizer elsewhere is named by `location` only.
    tokenizer_rel = os.path.relpath(tokenizer_path, cfg.output_dir) if cfg.output_dir else ".."
    tokenizer_info = {"path": None if tokenizer_rel.startswith("..") else tokenizer_rel, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                      "pad_id": tokenizer.pad_id, "sample_sha256": tokenizer.metadata.get("sample_sha256"),
                      "encoder": tokenizer.batch_encoder}  # the actors' too: built from the same config
    for entry in entries:
        entry.pop("timing", None)
    store = TokenStore(store_root, tokenizer_info, inputs, config, location, entries)
    store.save()
    return store


def _add_input_hashes(inputs: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Each input's sha256 from the parts the units read: whole files their own, ranges a hash of theirs."""
    part_hashes: dict[str, list[tuple[int, str]]] = {}
    for entry in entries:
        for part in entry["parts"]:
            part_hashes.setdefault(part["name"], []).append((part["start"], part["sha256"]))
    for item in inputs:
        hashes = [h for _, h in sorted(part_hashes.get(item["name"], []))]
        item["sha256"] = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
        item["num_parts"] = len(hashes)


def pack_tokens(store: TokenStore, cfg: DataPipelineConfig,
                on_report: Optional[Callable[[dict], None]] = None) -> Manifest:
    """Pack a token store into `cfg.output_dir`: shards, manifest.json, rejections.parquet.

    Only the packing fields of `cfg` are read (packing, long_context, shard_tokens,
    shard_compression, max_rejected_share, output_dir); the manifest's other config fields are the
    store's. Every document the store was made from is counted: packed, rejected while cleaning, or
    left out by the long-document policy. When more was lost than `cfg.max_rejected_share` allows,
    raises `TooMuchRejectedError` after writing manifest.json and rejections.parquet (the error
    names the latter and carries the counts by reason).
    """
    if not cfg.output_dir:
        raise ValueError(f"data.output_dir = {cfg.output_dir!r}: must be set")
    policy = cfg.long_context
    pad_id = resolve_pad_id(cfg, store.tokenizer["pad_id"], store.tokenizer["eos_id"])
    storage.check_location(cfg.output_dir, write=True)
    fs, out_dir = resolve_filesystem(cfg.output_dir)
    # manifest.json is the commit point: gone before any shard changes, written after every shard is, so
    # an output folder with shards and no manifest is an unfinished run and is never read as complete.
    storage.remove(storage.join(cfg.output_dir, MANIFEST_FILE))
    # Shards of an earlier run would be mixed with ours: the shard folder belongs to this function.
    fs.delete_dir_contents(posixpath.join(out_dir, SHARD_DIR), missing_dir_ok=True)
    weights_by_unit: dict[int, np.ndarray] = {}
    if policy.mix_long_share > 0:  # the only decision that needs every document's length
        doc_ids, lengths, unit_of = store.document_lengths()
        weights = mix_weights(document_weights(lengths, policy), lengths, doc_ids, policy)
        weights_by_unit = {u["unit_index"]: weights[unit_of == u["unit_index"]] for u in store.units}
    reports = []
    for entry in store.units:
        tokens = store.read_unit(entry)
        reports.append(pack_unit(tokens, entry, cfg, pad_id, weights_by_unit.get(entry["unit_index"])))
        if on_report is not None:
            on_report(reports[-1])

    config = {**store.config, **{name: asdict(cfg)[name] for name in PACKING_FIELDS}}
    location = {**store.location, "output_dir": cfg.output_dir, "token_store": store.root}
    tokenizer = {**store.tokenizer, "pad_id": pad_id}
    tokenizer_rel = os.path.relpath(location["tokenizer_path"], cfg.output_dir)
    tokenizer["path"] = None if tokenizer_rel.startswith("..") else tokenizer_rel
    inputs = [dict(item) for item in store.inputs]
    manifest, records = build_manifest(reports, cfg.packing.seq_len, inputs, tokenizer, config, location,
                                       previous_seq_len=policy.previous_seq_len)
    rejections = pa.Table.from_pylist(records, schema=REJECTIONS_SCHEMA)
    with fs.open_output_stream(posixpath.join(out_dir, REJECTIONS_FILE)) as sink:
        pq.write_table(rejections, sink, compression="zstd")
    storage.publish(storage.join(cfg.output_dir, MANIFEST_FILE), manifest.to_json().encode())
    manifest.root = cfg.output_dir
    check_rejected_share(manifest, cfg.max_rejected_share, posixpath.join(cfg.output_dir, REJECTIONS_FILE))
    return manifest


def run_pipeline(cfg: DataPipelineConfig, use_ray: bool = True,
                 on_report: Optional[Callable[[dict], None]] = None) -> Manifest:
    """Tokenize `cfg.inputs` into `<output_dir>/tokens`, then pack it into `cfg.output_dir`.

    `on_report` sees each unit's store entry, then each unit's packing report; both carry a
    "timing" entry that never reaches the deterministic store or manifest.
    `use_ray=False` runs the identical steps serially in this process and writes identical bytes
    (it needs `cfg.tokenizer.model_path`: training draws its sample with Ray).
    """
    if not cfg.inputs or not cfg.output_dir:
        raise ValueError(f"data.inputs = {cfg.inputs!r}, data.output_dir = {cfg.output_dir!r}: must both be set")
    store = tokenize_corpus(cfg, posixpath.join(cfg.output_dir, TOKENS_DIR), use_ray, on_report)
    return pack_tokens(store, cfg, on_report)
