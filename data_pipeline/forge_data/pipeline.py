"""`run_pipeline`: raw text in, packed shards + manifest.json + rejections.parquet out.

Wiring only; the work is in stages.py. The plan of work units is made on the driver from file
listings, each unit is one Ray Data block handled by one actor call end to end, and shards are
named by unit, so output bytes depend only on the inputs and the config (not on where they live:
ids and names are relative to the input root, and the manifest's `location` field alone names places):

    from_items(units) -> map_batches(ShardBuilder)   actor pool: read, clean, tokenize, pack, write
                      -> driver: reports -> manifest.json, rejections.parquet
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from forge_data.config import DataPipelineConfig
from forge_data.manifest import MANIFEST_FILE, REJECTIONS_FILE, Manifest, build_manifest
from forge_data.sources import (decode_unit, encode_unit, input_root, list_input_files, plan_work_units,
                                resolve_filesystem)
from forge_data.stages import SHARD_DIR, ShardBuilder
from forge_data.tokenizer import Tokenizer, load_tokenizer
from forge_data.tokenizer_training import train_tokenizer

REJECTIONS_SCHEMA = pa.schema([("doc_id", pa.string()), ("reason", pa.string()), ("action", pa.string()),
                               ("num_bytes", pa.int64())])


def resolve_pad_id(cfg: DataPipelineConfig, tokenizer: Tokenizer) -> int:
    """Padding id: configured, else the tokenizer's pad, else EOS (labels mask padding anyway)."""
    if cfg.packing.pad_id is not None:
        return cfg.packing.pad_id
    if tokenizer.pad_id >= 0:
        return tokenizer.pad_id
    return max(tokenizer.eos_id, 0)


def prepare_tokenizer(cfg: DataPipelineConfig) -> tuple[str, Tokenizer]:
    """Load the configured tokenizer, or train one into `<output_dir>/tokenizer`."""
    out_dir = os.path.join(cfg.output_dir, "tokenizer")
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


def _reports_with_ray(cfg: DataPipelineConfig, unit_rows: list[dict], tokenizer: Tokenizer, pad_id: int,
                      on_report: Optional[Callable[[dict], None]]) -> list[dict]:
    import ray

    ds = ray.data.from_items(unit_rows, override_num_blocks=len(unit_rows))
    ds = ds.map_batches(ShardBuilder, fn_constructor_kwargs={"model_proto": tokenizer.model_proto, "cfg": cfg,
                                                             "pad_id": pad_id, "owns_process": True},
                        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.num_tokenize_actors),
                        num_cpus=cfg.tokenize_actor_cpus)
    reports = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for text in batch.column("report").to_pylist():
            reports.append(json.loads(text))
            if on_report is not None:
                on_report(reports[-1])
    return reports


def _reports_in_process(cfg: DataPipelineConfig, unit_rows: list[dict], tokenizer: Tokenizer, pad_id: int,
                        on_report: Optional[Callable[[dict], None]]) -> list[dict]:
    """The same work, one unit after another in this process (debugging, tests without Ray)."""
    builder = ShardBuilder(tokenizer.model_proto, cfg, pad_id)
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
        raise RuntimeError("forge_data.run_pipeline needs a running Ray: start one first (forge_platform's jobs do; "
                           "else ray.init(num_cpus=N), N > data.num_tokenize_actors on a small machine)")


def run_pipeline(cfg: DataPipelineConfig, use_ray: bool = True,
                 on_report: Optional[Callable[[dict], None]] = None) -> Manifest:
    """Read, clean, tokenize and pack with Ray Data (on the Ray the caller started) into `cfg.output_dir`.

    `on_report` is called on the driver with each block's report as it arrives (progress,
    throughput); reports carry a "timing" entry that never reaches the deterministic manifest.

    `use_ray=False` runs the identical steps serially in this process and writes identical bytes
    (it needs `cfg.tokenizer.model_path`: training draws its sample with Ray).
    """
    if not cfg.inputs or not cfg.output_dir:
        raise ValueError(f"data.inputs = {cfg.inputs!r}, data.output_dir = {cfg.output_dir!r}: must both be set")
    if use_ray:
        _require_ray()
    elif not cfg.tokenizer.model_path:
        raise ValueError("run_pipeline(use_ray=False) needs data.tokenizer.model_path (training samples with Ray)")
    files = list_input_files(cfg.inputs, cfg.format, cfg.include_suffixes)
    if not files:
        raise ValueError(f"no input files found under {cfg.inputs!r} (include_suffixes={cfg.include_suffixes!r})")
    tokenizer_path, tokenizer = prepare_tokenizer(cfg)
    pad_id = resolve_pad_id(cfg, tokenizer)

    fs, out_dir = resolve_filesystem(cfg.output_dir)
    # Shards of an earlier run would be mixed with ours: the shard folder belongs to this function.
    fs.delete_dir_contents(posixpath.join(out_dir, SHARD_DIR), missing_dir_ok=True)
    units = plan_work_units(files, cfg.work_unit_bytes, cfg.shuffle_seed)

    unit_rows = [encode_unit(i, u) for i, u in enumerate(units)]
    reports = (_reports_with_ray if use_ray else _reports_in_process)(cfg, unit_rows, tokenizer, pad_id, on_report)

    inputs = [{"name": f.name, "size": f.size, "format": f.format, "compression": f.compression} for f in files]
    config, location = split_location(cfg, tokenizer_path)
    # Relative when it lives in the output folder; a tokenizer elsewhere is named by `location` only.
    tokenizer_rel = os.path.relpath(tokenizer_path, cfg.output_dir)
    tokenizer_info = {"path": None if tokenizer_rel.startswith("..") else tokenizer_rel, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                      "pad_id": pad_id, "sample_sha256": tokenizer.metadata.get("sample_sha256"),
                      "encoder": tokenizer.batch_encoder}  # the actors' too: built from the same config
    manifest, records = build_manifest(reports, cfg.packing.seq_len, inputs, tokenizer_info, config, location)
    rejections = pa.Table.from_pylist(records, schema=REJECTIONS_SCHEMA)
    with fs.open_output_stream(posixpath.join(out_dir, REJECTIONS_FILE)) as sink:
        pq.write_table(rejections, sink, compression="zstd")
    with fs.open_output_stream(posixpath.join(out_dir, MANIFEST_FILE)) as sink:
        sink.write(manifest.to_json().encode())
    manifest.root = cfg.output_dir
    return manifest
