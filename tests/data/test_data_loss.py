"""Nothing lost silently: a ceiling on the share of input lost, retried reads, checked shards and token ids.

Faults are injected where they happen: `os.open` and a pyarrow filesystem that fail (a few times,
or always), shard bytes flipped or cut on disk, token ids past the vocabulary in a hand-made token
store. No Ray: `run_pipeline(use_ray=False)` and `pack_tokens` run the same stages in process.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from forge_data import (DataPipelineConfig, LongContextConfig, PackedShardLoader, PackingConfig, TokenizerConfig,
                        TokenStore, pack_tokens, run_pipeline)
from forge_data import readers
from forge_data.config import CleaningConfig
from forge_data.loader import TokenIdRangeError
from forge_data.manifest import TooMuchRejectedError
from forge_data.packing import pack_flat
from forge_data.shards import CorruptShardError, write_shard, write_shard_checked
from forge_data.sources import FilePart
from forge_data.token_store import UnitTokens, write_unit_tokens
from tests.data.corpora import make_text

FAST_RETRIES = CleaningConfig(read_retry_wait_s=0.001)


# -- helpers -------------------------------------------------------------------------------------
def make_store(root: Path, lengths: list[int], lost: list[tuple[str, int]], vocab_size: int = 99,
               bytes_per_doc: int = 100) -> TokenStore:
    """One unit of documents of `lengths` tokens (document k's ids all k + 2) plus `lost` (reason, bytes)
    rejections while cleaning."""
    doc_ids = [f"doc{k:02d}" for k in range(len(lengths))]
    flat = np.concatenate([np.full(n, k + 2, np.int32) for k, n in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    path = write_unit_tokens(str(root), 0, UnitTokens(doc_ids, flat, offsets, np.full(len(lengths), bytes_per_doc)))
    records = [{"doc_id": f"bad{i}", "reason": reason, "action": "rejected", "num_bytes": n}
               for i, (reason, n) in enumerate(lost)]
    entry = {"unit_index": 0, "path": path, "docs_in": len(lengths) + len(lost), "num_docs": len(lengths),
             "bytes_in": bytes_per_doc * len(lengths) + sum(n for _, n in lost), "num_tokens": int(sum(lengths)),
             "parts": [{"name": "f", "start": 0, "end": 9, "sha256": "x"}], "records": records}
    store = TokenStore(str(root), {"sha256": "t", "vocab_size": vocab_size, "bos_id": -1, "eos_id": 1, "pad_id": -1},
                       [{"name": "f", "size": 9, "format": "text", "compression": "none"}], {},
                       {"tokenizer_path": "/nowhere/tokenizer.model"}, [entry])
    store.save()
    return store


def pack(store: TokenStore, out: Path, seq_len: int = 16, **kw) -> DataPipelineConfig:
    packing = PackingConfig(seq_len=seq_len, pad_id=kw.pop("pad_id", None))
    cfg = DataPipelineConfig(output_dir=str(out), packing=packing, shard_tokens=seq_len * 2, **kw)
    pack_tokens(store, cfg)
    return cfg


def write_corpus(root: Path, num_good: int = 30) -> None:
    rng = random.Random(0)
    root.mkdir(parents=True)
    for i in range(num_good):
        (root / f"good_{i:02d}.txt").write_text(make_text(rng, 60))


def corpus_config(root: Path, out: Path, tokenizer_dir: str, **kw) -> DataPipelineConfig:
    return DataPipelineConfig(inputs=[str(root)], output_dir=str(out), work_unit_bytes=4000, shard_tokens=64 * 4,
                              packing=PackingConfig(seq_len=64), tokenizer=TokenizerConfig(model_path=tokenizer_dir),
                              **kw)


@pytest.fixture()
def tokenizer_dir(small_tokenizer, tmp_path) -> str:
    return small_tokenizer.save(str(tmp_path / "tok"))


def failing_os_open(monkeypatch, name: str, failures: int, error: int = errno.EIO) -> list[int]:
    """Make os.open fail on files named `name` the first `failures` times; returns the list of calls made."""
    real_open, calls = os.open, []

    def flaky_open(path, flags, *args, **kw):
        if os.path.basename(os.fsdecode(path)) == name:
            calls.append(1)
            if len(calls) <= failures:
                raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", flaky_open)
    return calls


# -- 1. the ceiling on what is lost ----------------------------------------------------------------
def test_more_lost_than_allowed_fails_in_one_line_with_the_report(tmp_path):
    store = make_store(tmp_path / "store", [20] * 18, [("empty", 0), ("binary", 50)])  # 2 of 20 documents lost
    with pytest.raises(TooMuchRejectedError) as err:
        pack(store, tmp_path / "out")  # the default: 0.05
    line = str(err.value)
    assert "\n" not in line and line.startswith("data.max_rejected_share = 0.05: must be >= ")
    assert "0.100 of documents (2 of 20)" in line and "binary 1, empty 1" in line
    assert str(tmp_path / "out" / "rejections.parquet") in line
    # The report it names is written, and the accounting balances.
    assert len(pq.read_table(tmp_path / "out" / "rejections.parquet")) == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["docs_in"] == manifest["counts"]["docs_packed"] + manifest["counts"]["docs_rejected"] == 20
    pack(store, tmp_path / "allowed", max_rejected_share=0.1)  # at the limit is within it


def test_one_big_lost_file_fails_by_its_bytes(tmp_path):
    """1 document of 41 lost is within 5%, but it held 20x the bytes of the rest together."""
    store = make_store(tmp_path / "store", [20] * 40, [("read_error:OSError", 80_000)])
    with pytest.raises(TooMuchRejectedError, match=r"0\.024 of documents \(1 of 41\) and 0\.952 of bytes"):
        pack(store, tmp_path / "out")


def test_the_long_document_policy_left_outs_are_not_losses(tmp_path):
    """Selecting long documents leaves out 15 of 20 on purpose: no loss, no failure, still in the report."""
    store = make_store(tmp_path / "store", [5] * 15 + [40] * 5, [])
    pack(store, tmp_path / "out", long_context=LongContextConfig(min_doc_tokens=10))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rejected_by_reason"] == {"long_context_filtered": 15}
    assert manifest["counts"]["docs_lost"] == manifest["counts"]["bytes_lost"] == 0


def test_an_unreadable_file_weighs_its_stored_bytes(tmp_path, tokenizer_dir):
    """End to end: a corrupt 60 KB archive among 30 small files is 1 document lost but most of the bytes."""
    write_corpus(tmp_path / "corpus")
    stored = b"not gzip at all " * 4000  # 64 KB that fail to decompress
    (tmp_path / "corpus" / "big.txt.gz").write_bytes(stored)
    with pytest.raises(TooMuchRejectedError, match=r"1 of 31\) and 0\.[6-9]\d+ of bytes.*read_error:OSError 1"):
        run_pipeline(corpus_config(tmp_path / "corpus", tmp_path / "out", tokenizer_dir), use_ray=False)
    (record,) = pq.read_table(tmp_path / "out" / "rejections.parquet").to_pylist()
    assert record["doc_id"] == "big.txt.gz#0" and record["num_bytes"] == len(stored)


# -- 2. transient read errors are retried, permanent ones are not ----------------------------------
def test_a_read_that_fails_twice_is_retried_and_nothing_is_lost(tmp_path, tokenizer_dir, monkeypatch):
    write_corpus(tmp_path / "corpus")
    calls = failing_os_open(monkeypatch, "good_07.txt", failures=2)
    manifest = run_pipeline(corpus_config(tmp_path / "corpus", tmp_path / "out", tokenizer_dir, cleaning=FAST_RETRIES),
                            use_ray=False)
    assert len(calls) == 3
    assert manifest.counts["docs_rejected"] == 0 and manifest.counts["docs_packed"] == 30


def test_a_read_that_always_fails_is_rejected_after_every_attempt(tmp_path, tokenizer_dir, monkeypatch):
    write_corpus(tmp_path / "corpus")
    calls = failing_os_open(monkeypatch, "good_07.txt", failures=10**9)
    cfg = corpus_config(tmp_path / "corpus", tmp_path / "out", tokenizer_dir, cleaning=FAST_RETRIES,
                        max_rejected_share=0.1)
    manifest = run_pipeline(cfg, use_ray=False)
    assert len(calls) == FAST_RETRIES.read_attempts == 3
    assert manifest.rejected_by_reason == {"read_error:OSError": 1}
    assert manifest.counts["docs_in"] == manifest.counts["docs_packed"] + 1 == 30
    (record,) = pq.read_table(tmp_path / "out" / "rejections.parquet").to_pylist()
    assert record["num_bytes"] == (tmp_path / "corpus" / "good_07.txt").stat().st_size


def test_permanent_errors_are_not_retried(tmp_path, monkeypatch):
    denied = failing_os_open(monkeypatch, "denied.txt", failures=10**9, error=errno.EACCES)
    corrupt = failing_os_open(monkeypatch, "corrupt.txt.gz", failures=0)
    (tmp_path / "denied.txt").write_text("x")
    (tmp_path / "corrupt.txt.gz").write_bytes(gzip.compress(b"hello world\n" * 50)[:-30] + b"garbage!")
    slow = {"attempts": 3, "retry_wait_s": 30.0}  # a retry would make this test take a minute
    for name, compression, calls in (("denied.txt", "none", denied), ("corrupt.txt.gz", "gzip", corrupt)):
        size = (tmp_path / name).stat().st_size
        read = readers.read_file_part(FilePart(str(tmp_path / name), "text", compression, 0, size, size), "text", **slow)
        assert read.read_errors[0].startswith("read_error:") and read.num_retries == 0
        assert len(calls) == 1, name  # opened once: a missing permission or corrupt bytes fail every time


class _FlakyFiles:
    """A pyarrow filesystem (local underneath) whose opens fail `failures` times first, like an object store."""

    def __init__(self, failures: int) -> None:
        self.local, self.failures, self.opens = pafs.LocalFileSystem(), failures, 0

    def open_input_file(self, path: str) -> pa.NativeFile:
        self.opens += 1
        if self.opens <= self.failures:
            raise OSError("When reading information for key 'corpus/big.jsonl': AWS Error NETWORK_CONNECTION")
        return self.local.open_input_file(path)


def flaky_filesystem(failures: int) -> tuple[pafs.PyFileSystem, _FlakyFiles]:
    def unsupported(self, *args):  # pragma: no cover - never called by the reader
        raise NotImplementedError

    methods = {name: unsupported for name in pafs.FileSystemHandler.__abstractmethods__}
    state = _FlakyFiles(failures)
    methods.update(get_type_name=lambda self: "flaky", normalize_path=lambda self, p: p,
                   open_input_file=lambda self, p: state.open_input_file(p))
    handler = type("FlakyHandler", (pafs.FileSystemHandler,), methods)()
    return pafs.PyFileSystem(handler), state


@pytest.mark.parametrize("failures, rejected", [(2, False), (3, True)])
def test_byte_range_reads_through_a_flaky_filesystem(tmp_path, monkeypatch, failures, rejected):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(40)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    fs, state = flaky_filesystem(failures)
    monkeypatch.setattr(readers, "resolve_filesystem", lambda uri: (fs, uri))
    size = path.stat().st_size
    part = FilePart(str(path), "jsonl", "none", 100, 300, size)  # a byte range: read through the filesystem
    read = readers.read_file_part(part, "text", attempts=3, retry_wait_s=0.001)
    assert state.opens == 3
    if rejected:
        assert read.read_errors == ["read_error:OSError"] and read.lost_bytes == [200]
    else:
        assert read.num_retries == 2 and len(read.doc_ids) > 3 and not any(read.read_errors)


# -- 3. shard checksums -----------------------------------------------------------------------------
@pytest.fixture()
def dataset(tmp_path, tokenizer_dir) -> Path:
    write_corpus(tmp_path / "corpus")
    run_pipeline(corpus_config(tmp_path / "corpus", tmp_path / "out", tokenizer_dir), use_ray=False)
    return tmp_path / "out"


def test_the_manifest_records_each_shards_size_and_sha256_and_shard_bytes_do_not_change(dataset, tmp_path):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["version"] == 4 and len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        data = (dataset / shard["path"]).read_bytes()
        assert shard["num_bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    # Hashing on the way to storage writes the very bytes a plain write does.
    flat = np.arange(1000, dtype=np.int32) % 97
    packed = pack_flat(flat, np.array([0, 300, 1000]), 64)
    with pa.OSFile(str(tmp_path / "plain.parquet"), "wb") as sink:
        write_shard(sink, packed, slice(0, 10), "zstd")
    with pa.OSFile(str(tmp_path / "hashed.parquet"), "wb") as sink:
        size, sha = write_shard_checked(sink, packed, slice(0, 10), "zstd")
    plain = (tmp_path / "plain.parquet").read_bytes()
    assert (tmp_path / "hashed.parquet").read_bytes() == plain
    assert (size, sha) == (len(plain), hashlib.sha256(plain).hexdigest())


def first_shard(dataset: Path) -> tuple[Path, str]:
    rel = json.loads((dataset / "manifest.json").read_text())["shards"][0]["path"]
    return dataset / rel, rel


def test_a_flipped_byte_is_one_line_naming_shard_and_manifest_before_training_reads_it(dataset):
    path, rel = first_shard(dataset)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside a PLAIN page of token ids: Parquet itself would not notice
    path.write_bytes(bytes(data))
    loader = PackedShardLoader(str(dataset / "manifest.json"), 4, shuffle=False)  # sizes match: opens fine
    with pytest.raises(CorruptShardError) as err:
        loader.next_batch()
    line = str(err.value)
    assert "\n" not in line and rel in line and str(dataset / "manifest.json") in line and "sha256" in line
    assert loader.samples_consumed == 0  # no batch came out of it


def test_a_truncated_or_missing_shard_fails_when_the_loader_is_built(dataset):
    path, rel = first_shard(dataset)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptShardError, match=rf"^shard {rel} of .*manifest.json: \d+ bytes, the manifest recorded"):
        PackedShardLoader(str(dataset / "manifest.json"), 4)
    path.unlink()
    with pytest.raises(CorruptShardError, match=rf"^shard {rel} of .*: missing"):
        PackedShardLoader(str(dataset / "manifest.json"), 4)


def test_a_manifest_without_checksums_still_loads_and_says_so(dataset):
    expected = PackedShardLoader(str(dataset / "manifest.json"), 8, shuffle=False).next_batch()
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["version"] = 3
    for shard in manifest["shards"]:
        del shard["num_bytes"], shard["sha256"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"shards have no checksum \(manifest version 3 < 4\)"):
        loader = PackedShardLoader(str(dataset / "manifest.json"), 8, shuffle=False)
    batch = loader.next_batch()
    assert all(torch.equal(batch[k], expected[k]) for k in expected)


# -- 4. token ids within the vocabulary --------------------------------------------------------------
def test_a_token_id_past_the_vocabulary_is_one_line_naming_shard_row_and_id(tmp_path):
    store = make_store(tmp_path / "store", [16] * 12, [], vocab_size=10)  # document k's ids are k + 2: 10..13 too big
    pack(store, tmp_path / "out")
    loader = PackedShardLoader(str(tmp_path / "out" / "manifest.json"), 2, shuffle=False)
    for _ in range(4):  # row k is document k (ids k + 2), two rows a shard: shards 0-3 are within [0, 10)
        loader.next_batch()
    with pytest.raises(TokenIdRangeError) as err:
        loader.next_batch()
    line = str(err.value)
    assert "\n" not in line and loader.samples_consumed == 8
    assert "shards/shard-000000-0004.parquet of " in line and "row 0 position 0 has input_ids 10 " in line
    assert "outside the vocabulary [0, 10)" in line


def test_a_pad_id_past_the_vocabulary_is_caught(tmp_path):
    """A configured pad id the model cannot embed (its labels are ignored, its inputs are not)."""
    store = make_store(tmp_path / "store", [10] * 3, [], vocab_size=99)  # 30 tokens: rows of 16, 16 - 2 padded
    pack(store, tmp_path / "out", pad_id=500)
    with pytest.raises(TokenIdRangeError, match=r"row 1 position 14 has input_ids 500 outside the vocabulary \[0, 99\)"):
        PackedShardLoader(str(tmp_path / "out" / "manifest.json"), 1, shuffle=False).next_batch()
