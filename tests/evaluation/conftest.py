"""Fixtures for evaluation tests: a small tokenizer, held-out packed shards, and a model to score."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from forge_data import TokenizerConfig
from forge_data.tokenizer import Tokenizer, train_from_texts
from forge_models import build_model, get_preset
from torch import nn

from tests.evaluation.helpers import STDLIB, pack_folder


@pytest.fixture(scope="session")
def tokenizer_and_manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, str]:
    """Four standard-library modules as documents, a 512-piece tokenizer, rows of 64 tokens (no Ray)."""
    root = tmp_path_factory.mktemp("eval_data")
    sources = sorted((STDLIB / "json").glob("*.py"))[:4]
    corpus = root / "corpus"
    corpus.mkdir()
    for path in sources:
        (corpus / path.name).write_bytes(path.read_bytes())
    tokenizer = train_from_texts(TokenizerConfig(vocab_size=512, show_progress=False, sample_bytes=1 << 20),
                                 [p.read_text("utf-8") for p in sources])
    manifest = pack_folder(corpus, tokenizer.save(str(root / "tokenizer")), root / "data", seq_len=64, rows_per_shard=64)
    return tokenizer, manifest


@pytest.fixture(scope="session")
def model(tokenizer_and_manifest: tuple[Tokenizer, str]) -> nn.Module:
    """An untrained hybrid-debug model over the tokenizer's vocabulary, on the reference path."""
    tokenizer, _ = tokenizer_and_manifest
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=tokenizer.vocab_size, kernels="reference")
    return build_model(cfg)
