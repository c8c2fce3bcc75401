"""Training a tokenizer on a deterministic sample of the whole corpus, drawn with Ray Data.

Every document gets a key = hash(seed, doc_id) in [0, 1). Ray Data keeps documents whose key is
below a rate (so roughly `sample_bytes` survive), the driver sorts them by key and keeps a prefix of
`sample_bytes`. The sample is therefore a uniform draw that depends only on the corpus and the
seed — not on block layout, scheduling or the number of CPUs — and so is the trained model.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from forge_data.config import CleaningConfig, TokenizerConfig
from forge_data.ray_utils import ensure_ray
from forge_data.sources import encode_unit, list_input_files, plan_work_units
from forge_data.stages import read_clean_batch
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


def sample_batch(batch: pa.Table, rate: float, seed: int) -> pa.Table:
    """Keep kept (not rejected) documents whose key is below `rate`; adds the key column."""
    docs = batch.filter(pc.is_valid(batch.column("text")))
    keys = sample_keys(docs.column("doc_id").to_pylist(), seed)
    picked = docs.select(["doc_id", "text"]).append_column("key", pa.array(keys)).filter(pa.array(keys < rate))
    # Texts are validated UTF-8 bytes; SentencePiece's trainer wants str.
    return picked.set_column(1, "text", picked.column("text").cast(pa.large_string()))


def train_tokenizer(cfg: TokenizerConfig, inputs: list[str], out_dir: str, *, format: str = "auto",
                    text_field: str = "text", include_suffixes: Optional[list[str]] = None,
                    cleaning: Optional[CleaningConfig] = None, work_unit_bytes: int = 8 << 20) -> str:
    """Train SentencePiece on a deterministic sample of `inputs`; returns the saved model's path.

    If `cfg.model_path` is set, nothing is trained: the existing model's path is returned, so
    callers treat "train" and "load an existing tokenizer" the same way.
    """
    import ray

    if cfg.model_path:
        path = os.path.join(cfg.model_path, MODEL_FILE) if os.path.isdir(cfg.model_path) else cfg.model_path
        load_tokenizer(path)  # fail here, loudly, if it is not a SentencePiece model
        return path
    ensure_ray()
    cleaning = cleaning or CleaningConfig()
    files = list_input_files(inputs, format, list(include_suffixes or []))
    if not files:
        raise ValueError(f"no input files found under {inputs!r} (include_suffixes={include_suffixes!r})")
    units = plan_work_units(files, work_unit_bytes, shuffle_seed=0)
    total_bytes = sum(f.size for f in files)
    rate = min(1.0, _OVERSAMPLE * cfg.sample_bytes / max(1, total_bytes))
    ds = ray.data.from_items([encode_unit(i, u) for i, u in enumerate(units)], override_num_blocks=len(units))
    ds = ds.map_batches(read_clean_batch, fn_kwargs={"text_field": text_field, "cleaning": cleaning},
                        batch_format="pyarrow", num_cpus=0.25)
    ds = ds.map_batches(sample_batch, fn_kwargs={"rate": rate, "seed": cfg.sample_seed},
                        batch_format="pyarrow", num_cpus=0.25)
    picked: list[tuple[float, str, str]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        picked.extend(zip(batch.column("key").to_pylist(), batch.column("doc_id").to_pylist(),
                          batch.column("text").to_pylist()))
    picked.sort()
    texts, size = [], 0
    for _, _, text in picked:
        if size >= cfg.sample_bytes:
            break
        texts.append(text)
        size += len(text.encode("utf-8", "surrogatepass"))
    meta = {"inputs": [f.uri for f in files], "sample_docs": len(texts), "sample_bytes": size, "sample_rate": rate}
    progress = tqdm(texts, desc="tokenizer sample", unit="doc", disable=not cfg.show_progress)
    tokenizer = train_from_texts(cfg, progress, metadata=meta)
    return tokenizer.save(out_dir)
