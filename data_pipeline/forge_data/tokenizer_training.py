"""Training a tokenizer on a deterministic sample of the whole corpus, drawn with Ray Data.

Every document gets a key = hash(seed, document id) in [0, 1); ids are location-free (the file's
path below the input root, see sources.py). Ray Data keeps documents whose key is below a rate
(so roughly `sample_bytes` survive), the driver sorts them by key and keeps a prefix of
`sample_bytes`. The sample is therefore a uniform draw that depends only on the corpus and the
seed — not on where the corpus lives, block layout, scheduling or the number of CPUs — and so is
the trained model. (Keys of full ids, absolute paths included, once gave every CI checkout its
own sample and vocabulary.)
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from forge_data import storage
from forge_data.config import CleaningConfig, InputFormat, TokenizerConfig
from forge_data.sources import decode_unit, encode_unit, input_root, list_input_files, plan_work_units
from forge_data.stages import read_clean_unit
from forge_data.tokenizer import MODEL_FILE, load_tokenizer, train_from_texts

_OVERSAMPLE = 1.25  # file sizes are compressed sizes: draw a bit more, then cut exactly on the driver


def sample_keys(doc_ids: list[str], seed: int) -> np.ndarray:
    """Deterministic pseudo-uniform key in [0, 1) per document id."""
    keys = np.empty(len(doc_ids), dtype=np.float64)
    salt = str(seed).encode()
    for i, doc_id in enumerate(doc_ids):
        digest = hashlib.blake2b(doc_id.encode(), digest_size=8, key=salt).digest()
        keys[i] = int.from_bytes(digest, "little") / 2.0**64
    return keys


def sample_units(batch: pa.Table, text_field: str, cleaning: CleaningConfig, rate: float, seed: int) -> pa.Table:
    """Read and clean the work units in `batch`; keep the clean documents whose key is below `rate`.

    Returns (key, id, text) rows; `id` (location-free, the driver's tie-break) as the readers make it.
    """
    keys, ids, texts = [], [], []
    for parts in batch.column("parts").to_pylist():
        docs = read_clean_unit(decode_unit(parts), text_field, cleaning)
        kept = [(d, t) for d, t in zip(docs.doc_ids, docs.texts) if t is not None]
        for key, (doc_id, text) in zip(sample_keys([d for d, _ in kept], seed).tolist(), kept):
            if key < rate:
                keys.append(key)
                ids.append(doc_id)
                texts.append(text)
    # Texts are validated UTF-8 bytes; SentencePiece's trainer wants str.
    return pa.table({"key": pa.array(keys, pa.float64()), "id": pa.array(ids, pa.string()),
                     "text": pa.array(texts, pa.large_binary()).cast(pa.large_string())})


def train_tokenizer(cfg: TokenizerConfig, inputs: list[str], out_dir: str, *, format: InputFormat = "auto",
                    text_field: str = "text", include_suffixes: Optional[list[str]] = None,
                    cleaning: Optional[CleaningConfig] = None, work_unit_bytes: int = 8 << 20) -> str:
    """Train SentencePiece on a deterministic sample of `inputs`; returns the saved model's path.

    If `cfg.model_path` is set, nothing is trained: the existing model's path is returned, so
    callers treat "train" and "load an existing tokenizer" the same way. Otherwise the sample is
    drawn with the Ray the caller started (none is started here); `train_from_texts` needs none.
    """
    import ray

    if cfg.model_path:
        is_dir = storage.is_dir if storage.is_uri(cfg.model_path) else os.path.isdir
        path = storage.join(cfg.model_path, MODEL_FILE) if is_dir(cfg.model_path) else cfg.model_path
        load_tokenizer(path)  # fail here, loudly, if it is not a SentencePiece model
        return path
    if not ray.is_initialized():
        # forge_data never starts Ray: where and how is its caller's policy (forge_platform.cluster.ensure_ray).
        raise RuntimeError("forge_data.train_tokenizer samples the corpus with Ray: start one first (forge_platform's "
                           "jobs do; else ray.init(num_cpus=N)), or train without Ray: train_from_texts(cfg, texts)")
    cleaning = cleaning or CleaningConfig()
    files = list_input_files(inputs, format, list(include_suffixes or []))
    if not files:
        raise ValueError(f"no input files found under {inputs!r} (include_suffixes={include_suffixes!r})")
    units = plan_work_units(files, work_unit_bytes, shuffle_seed=0)
    total_bytes = sum(f.size for f in files)
    rate = min(1.0, _OVERSAMPLE * cfg.sample_bytes / max(1, total_bytes))
    ds = ray.data.from_items([encode_unit(i, u) for i, u in enumerate(units)], override_num_blocks=len(units))
    # One task per logical CPU: at 0.25 CPU each, a local Ray of 4 logical CPUs on 2 cores ran up
    # to 16 tasks at once and started 6-13 worker processes (~1.5 s of CPU each) to sample
    # 120 MB: 8-17 s; at 1 CPU, 4 workers and 6-7.5 s.
    ds = ds.map_batches(sample_units, fn_kwargs={"text_field": text_field, "cleaning": cleaning, "rate": rate,
                                                 "seed": cfg.sample_seed},
                        batch_format="pyarrow", num_cpus=1)
    picked: list[tuple[float, str, str]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        picked.extend(zip(batch.column("key").to_pylist(), batch.column("id").to_pylist(),
                          batch.column("text").to_pylist()))
    picked.sort()
    texts, size = [], 0
    for _, _, text in picked:
        if size >= cfg.sample_bytes:
            break
        texts.append(text)
        size += len(text.encode("utf-8", "surrogatepass"))
    # Location-free like the ids; where the corpus lived is confined to "location".
    meta = {"inputs": [f.name for f in files], "location": {"inputs": list(inputs), "input_root": input_root(inputs)},
            "sample_docs": len(texts), "sample_bytes": size, "sample_rate": rate}
    progress = tqdm(texts, desc="tokenizer sample", unit="doc", disable=not cfg.show_progress)
    tokenizer = train_from_texts(cfg, progress, metadata=meta)
    return tokenizer.save(out_dir)
