"""Shared fixtures for forge_data tests: one Ray for the session, generated corpora, a tiny tokenizer.

Nothing here reads /work/shared: corpora are generated into tmp dirs or taken from the stdlib.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forge_data.config import TokenizerConfig
from forge_data.tokenizer import Tokenizer, train_from_texts

from tests.data.corpora import make_text, stdlib_texts, write_bad_corpus  # noqa: F401  (fixtures use them)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that runs the pipeline or trains a tokenizer with Ray (forge_data
    never starts one). At least 4 logical CPUs: on 2 cores, actors holding every logical CPU leave
    none for Ray Data's read tasks and the pipeline hangs. A Ray of our own (address="local"), never
    one left running on this machine; token auth off for this local, dashboard-less instance."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_tokenizer() -> Tokenizer:
    """A 400-piece BPE tokenizer trained (without Ray) on two stdlib packages (BPE trains in a second)."""
    cfg = TokenizerConfig(model_type="bpe", vocab_size=400, show_progress=False, sample_bytes=1 << 20)
    return train_from_texts(cfg, stdlib_texts("json") + stdlib_texts("email"))


@pytest.fixture()
def bad_corpus(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """(root folder, expected rejections by reason) of a freshly written bad corpus."""
    root = tmp_path / "corpus"
    return root, write_bad_corpus(root)
