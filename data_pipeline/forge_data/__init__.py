"""forge_data: raw text -> packed, deterministically shuffled, resumable training shards.

Public surface (the contract with forge_platform):

- configs: `DataPipelineConfig`, `TokenizerConfig`, `PackingConfig`, `CleaningConfig`, `LongContextConfig`
- `train_tokenizer(cfg, inputs, out_dir) -> path`, `load_tokenizer(path) -> Tokenizer`
- `run_pipeline(cfg) -> Manifest` (Ray Data): `tokenize_corpus(cfg, store_dir) -> TokenStore` (Ray Data,
  once per corpus), then `pack_tokens(store, cfg) -> Manifest` (once per stage: seq_len, long-document policy)
- `pack_documents(token_lists, seq_len, ...)` (pure)
- `PackedShardLoader(manifest_path, micro_batch_size, dp_rank, dp_size, start_sample, shuffle_seed)`
- errors in the input, each one line and a ValueError: `manifest.TooMuchRejectedError` (more lost
  than `data.max_rejected_share`), `shards.CorruptShardError` (a shard missing, truncated or not
  its manifest's sha256), `loader.TokenIdRangeError` (an id outside the manifest's vocabulary);
  and `storage.StorageError`, an OSError: an object store that cannot be reached, refused credentials,
  a missing bucket or manifest (every path may be local or a URI such as s3://bucket/prefix)

Importing this package starts nothing and imports neither Ray nor torch: Ray imports it on
every worker, and the loader (torch) is loaded on first use.
"""

from typing import Any

from forge_data.config import (
    CleaningConfig,
    DataPipelineConfig,
    LongContextConfig,
    PackingConfig,
    TokenizerConfig,
)
from forge_data.manifest import Manifest
from forge_data.packing import IGNORE_INDEX, PackedRows, PackStats, pack_documents, pack_flat
from forge_data.token_store import TokenStore
from forge_data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "CleaningConfig", "DataPipelineConfig", "LongContextConfig", "PackingConfig", "TokenizerConfig",
    "Manifest", "IGNORE_INDEX", "PackedRows", "PackStats", "pack_documents", "pack_flat",
    "Tokenizer", "load_tokenizer", "train_tokenizer", "run_pipeline", "tokenize_corpus", "pack_tokens",
    "TokenStore", "PackedShardLoader",
]


def __getattr__(name: str) -> Any:
    # Lazy: these pull in Ray (pipeline, tokenizer training) or torch (loader).
    if name in ("run_pipeline", "tokenize_corpus", "pack_tokens"):
        from forge_data import pipeline
        return getattr(pipeline, name)
    if name == "train_tokenizer":
        from forge_data.tokenizer_training import train_tokenizer
        return train_tokenizer
    if name == "PackedShardLoader":
        from forge_data.loader import PackedShardLoader
        return PackedShardLoader
    raise AttributeError(f"module 'forge_data' has no attribute {name!r}")
