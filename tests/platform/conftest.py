"""Fixtures for platform tests: a small real packed dataset (SentencePiece + the packing pipeline)."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline
from forge_data.tokenizer import train_from_texts

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class PackedData:
    manifest: Path
    tokenizer: Path
    vocab_size: int


@pytest.fixture(scope="session")
def packed_data(tmp_path_factory: pytest.TempPathFactory) -> PackedData:
    """Standard-library sources (one file = one document), a 512-piece tokenizer, rows of 64 tokens."""
    root = tmp_path_factory.mktemp("packed")
    sources = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:6]
    corpus = root / "corpus"
    corpus.mkdir()
    for path in sources:
        (corpus / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    tokenizer = train_from_texts(
        TokenizerConfig(vocab_size=512, show_progress=False, sample_bytes=1 << 20),
        [p.read_text("utf-8") for p in sources],
    )
    tokenizer_path = tokenizer.save(str(root / "tokenizer"))
    cfg = DataPipelineConfig(
        inputs=[str(corpus)],
        output_dir=str(root / "data"),
        tokenizer=TokenizerConfig(model_path=tokenizer_path),
        packing=PackingConfig(seq_len=64),
        shard_tokens=64 * 64,
    )
    run_pipeline(cfg, use_ray=False)
    return PackedData(root / "data" / "manifest.json", Path(tokenizer_path), tokenizer.vocab_size)


@pytest.fixture(scope="session")
def short_docs_data(packed_data: PackedData, tmp_path_factory: pytest.TempPathFactory) -> PackedData:
    """Documents of 1 to 12 source lines packed into 64-token rows with packed_data's tokenizer:
    several document ends per row, so rows count different numbers of labels."""
    root = tmp_path_factory.mktemp("short_docs")
    corpus = root / "corpus"
    corpus.mkdir()
    lines = [line for line in (STDLIB / "json" / "decoder.py").read_text("utf-8").splitlines() if line.strip()]
    start, doc = 0, 0
    while start < len(lines):
        size = 1 + (doc * 7) % 12  # a fixed spread of lengths
        (corpus / f"doc{doc:04d}.txt").write_text("\n".join(lines[start:start + size]), "utf-8")
        start, doc = start + size, doc + 1
    cfg = DataPipelineConfig(
        inputs=[str(corpus)],
        output_dir=str(root / "data"),
        tokenizer=TokenizerConfig(model_path=str(packed_data.tokenizer)),
        packing=PackingConfig(seq_len=64),
        shard_tokens=64 * 64,
    )
    run_pipeline(cfg, use_ray=False)
    return PackedData(root / "data" / "manifest.json", packed_data.tokenizer, packed_data.vocab_size)
