"""forge_data on an S3-compatible object store: a real server (moto's, started in this process, with
authentication on) holds the inputs, the tokenizer, the token store, the shards and the manifest.

The same corpus and tokenizer packed on local disk and on s3:// give the same manifest (but for
`location`) and the loader the same rows; a shard corrupted on the store fails its sha256; an
interrupted packing run leaves no manifest; wrong credentials, a missing bucket or an unreachable
endpoint are one line naming the place, before anything is tokenized. Credentials reach forge_data
only through the environment. No Ray except one end-to-end run (marked slow) in its own process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from forge_data import DataPipelineConfig, Manifest, PackedShardLoader, PackingConfig, TokenizerConfig, load_tokenizer
from forge_data import pipeline, storage
from forge_data.pipeline import pack_tokens, run_pipeline
from forge_data.shards import CorruptShardError
from forge_data.token_store import TokenStore
from tests.data.corpora import BAD_CORPUS_MAX_REJECTED, write_bad_corpus
from tests.moto_s3 import s3_environment

BUCKET = "forge"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with authentication on (tests/moto_s3.py); the environment names it."""
    with s3_environment(BUCKET) as env:
        yield env


def _s3fs() -> pafs.FileSystem:
    return storage.resolve_filesystem(f"s3://{BUCKET}")[0]


def _config(inputs: str, output_dir: str, tokenizer: str) -> DataPipelineConfig:
    return DataPipelineConfig(inputs=[inputs], output_dir=output_dir, work_unit_bytes=50_000, shard_tokens=64 * 64,
                              packing=PackingConfig(seq_len=64), tokenizer=TokenizerConfig(model_path=tokenizer),
                              max_rejected_share=BAD_CORPUS_MAX_REJECTED)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def runs(s3, small_tokenizer, tmp_path_factory):
    """The bad corpus packed twice without Ray: local disk -> local disk, and s3 -> s3 run from an
    empty working folder with an empty HOME, which stay empty (nothing written locally)."""
    root = tmp_path_factory.mktemp("object_storage")
    write_bad_corpus(root / "corpus")
    local = _config(str(root / "corpus"), str(root / "out"), small_tokenizer.save(str(root / "tok")))
    local_manifest = run_pipeline(local, use_ray=False)

    pafs.copy_files(str(root / "corpus"), f"{BUCKET}/raw/corpus", destination_filesystem=_s3fs())
    remote_tok = small_tokenizer.save(f"s3://{BUCKET}/tok")
    remote = _config(f"s3://{BUCKET}/raw/corpus", f"s3://{BUCKET}/runs/a", f"s3://{BUCKET}/tok")
    cwd, home = root / "cwd", root / "home"
    cwd.mkdir(), home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("HOME", str(home))
        remote_manifest = run_pipeline(remote, use_ray=False)
    assert _tree(cwd) == [] and _tree(home) == []
    return {"local": local, "remote": remote, "local_manifest": local_manifest, "remote_manifest": remote_manifest,
            "remote_tok": remote_tok}


def _rows(manifest_path: str, num_batches: int = 12) -> dict[str, np.ndarray]:
    loader = PackedShardLoader(manifest_path, micro_batch_size=4, shuffle_seed=3)
    batches = [loader.next_batch() for _ in range(num_batches)]
    return {name: np.concatenate([b[name].numpy() for b in batches]) for name in batches[0]}


def test_pipeline_on_s3_writes_what_local_disk_gets_and_the_loader_reads_it(runs):
    local, remote = runs["local_manifest"], runs["remote_manifest"]
    assert len(remote.shards) > 3 and remote.num_rows > 40
    # Same documents, tokens, shard bytes (sha256) and counts; only where it lived differs.
    assert dataclasses.replace(remote, location={}) == dataclasses.replace(local, location={})
    assert remote.location["input_root"] == f"s3://{BUCKET}/raw/corpus/"
    assert remote.location["tokenizer_path"] == runs["remote_tok"] == f"s3://{BUCKET}/tok/tokenizer.model"
    listed = storage.file_sizes(f"s3://{BUCKET}/runs/a")
    assert {"manifest.json", "rejections.parquet", "tokens/store.json"} <= set(listed)
    assert {s.path: s.num_bytes for s in remote.shards}.items() <= listed.items()
    # The folder or the manifest file, read back through the store: the same rows as from local disk.
    from_s3 = _rows(f"s3://{BUCKET}/runs/a")
    assert Manifest.load(f"s3://{BUCKET}/runs/a/manifest.json") == remote
    from_disk = _rows(os.path.join(runs["local"].output_dir, "manifest.json"))
    assert from_s3.keys() == from_disk.keys() and all(np.array_equal(from_s3[k], from_disk[k]) for k in from_s3)
    assert load_tokenizer(f"s3://{BUCKET}/tok").sha256 == remote.tokenizer["sha256"]


def _pack_copy(runs, output_dir: str) -> Manifest:
    """Pack the s3 run's token store again into another folder (no tokenizing)."""
    cfg = dataclasses.replace(runs["remote"], output_dir=output_dir)
    return pack_tokens(TokenStore.load(f"s3://{BUCKET}/runs/a/tokens"), cfg)


def test_a_corrupt_or_truncated_shard_on_s3_fails_its_check(runs):
    manifest = _pack_copy(runs, f"s3://{BUCKET}/runs/corrupt")
    fs = _s3fs()
    first = f"{BUCKET}/runs/corrupt/{manifest.shards[0].path}"
    data = bytearray(storage.read_bytes(f"s3://{first}"))
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    with fs.open_output_stream(first) as sink:
        sink.write(bytes(data))
    loader = PackedShardLoader(f"s3://{BUCKET}/runs/corrupt", micro_batch_size=manifest.num_rows, shuffle=False)
    with pytest.raises(CorruptShardError, match=r"shard shards/shard-\S+ of s3://forge/runs/corrupt/manifest.json: "
                                                r"sha256 .* is not the manifest's"):
        loader.next_batch()
    with fs.open_output_stream(first) as sink:
        sink.write(bytes(data[:-10]))
    with pytest.raises(CorruptShardError, match=r"bytes, the manifest recorded \d+ \(truncated"):
        PackedShardLoader(f"s3://{BUCKET}/runs/corrupt", micro_batch_size=2)


def test_an_interrupted_packing_run_leaves_no_manifest(runs, monkeypatch):
    """The manifest goes first and comes back last: shards of a run that died are never read as a dataset,
    although these shards are byte for byte those the old manifest lists."""
    _pack_copy(runs, f"s3://{BUCKET}/runs/crash")
    real_pack_unit, calls = pipeline.pack_unit, []

    def dies_after_one_unit(*args, **kwargs):
        if calls:
            raise RuntimeError("node lost")
        calls.append(1)
        return real_pack_unit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "pack_unit", dies_after_one_unit)
    with pytest.raises(RuntimeError, match="node lost"):
        _pack_copy(runs, f"s3://{BUCKET}/runs/crash")
    with pytest.raises(storage.StorageNotFound, match=r"^s3://forge/runs/crash/manifest.json: missing, but \d+ shards "
                                                      r"are beside it: a packing run that did not finish"):
        PackedShardLoader(f"s3://{BUCKET}/runs/crash", micro_batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"nothing-here/manifest.json: missing \(python -m jobs.tokenize"):
        Manifest.load(f"s3://{BUCKET}/nothing-here")  # a FileNotFoundError still: the platform catches that


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["wrong secret", "unknown key", "no output bucket", "no input bucket", "unreachable"])
def test_bad_storage_is_one_line_naming_it_before_tokenizing(runs, monkeypatch, case):
    cfg = dataclasses.replace(runs["remote"], output_dir=f"s3://{BUCKET}/runs/bad")
    expected = r"^s3://forge/\S+: the S3 endpoint http://127.0.0.1:\d+ refused the credentials for bucket 'forge' " \
               r"\(AWS Error \w+\); check AWS_ACCESS_KEY_ID"
    if case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "unknown key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    elif case == "no output bucket":
        cfg = dataclasses.replace(cfg, output_dir="s3://no-such-bucket/out")
        expected = r"^s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist \(on the S3 endpoint http"
    elif case == "no input bucket":
        cfg = dataclasses.replace(cfg, inputs=["s3://no-such-bucket/raw"])
        expected = r"^s3://no-such-bucket/raw: bucket 'no-such-bucket' does not exist"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
        expected = r"^s3://forge/\S+: cannot reach the S3 endpoint http://127.0.0.1:\d+ \(.*\); check AWS_ENDPOINT_URL"

    def tokenizing(*args, **kwargs):
        raise AssertionError("the store was not checked before tokenizing")

    monkeypatch.setattr(pipeline, "prepare_tokenizer", tokenizing)
    monkeypatch.setattr(pipeline, "list_input_files", tokenizing)
    with pytest.raises(storage.StorageError, match=expected) as err:
        run_pipeline(cfg, use_ray=False)
    assert "\n" not in str(err.value)
    if case in ("wrong secret", "unknown key", "unreachable"):  # the loader says the same, in one line
        with pytest.raises(storage.StorageError, match=expected.replace(r"^s3://forge/\S+", r"^s3://forge/runs/a\S*")):
            PackedShardLoader(f"s3://{BUCKET}/runs/a", micro_batch_size=2)


@pytest.mark.slow
def test_ray_pipeline_trains_its_tokenizer_and_packs_on_s3(runs, s3, tmp_path):
    """With Ray (in a process of its own: Ray's workers take the environment Ray started with), the
    tokenizer is trained from the corpus on s3 into the s3 output folder, tokenized and packed there;
    the shards are the bytes the in-process run writes with that tokenizer."""
    script = textwrap.dedent(f"""
        import ray
        from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cfg = DataPipelineConfig(inputs=["s3://{BUCKET}/raw/corpus"], output_dir="s3://{BUCKET}/runs/ray",
                                 work_unit_bytes=50_000, shard_tokens=64 * 64, packing=PackingConfig(seq_len=64),
                                 num_tokenize_actors=1, max_rejected_share={BAD_CORPUS_MAX_REJECTED},
                                 tokenizer=TokenizerConfig(vocab_size=40, byte_fallback=False, show_progress=False,
                                                           sample_bytes=60_000))
        print("rows", run_pipeline(cfg).num_rows)
    """)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = Manifest.load(f"s3://{BUCKET}/runs/ray")
    assert f"rows {manifest.num_rows}" in done.stdout and manifest.num_rows > 10
    assert manifest.tokenizer["path"] == "tokenizer/tokenizer.model"
    assert load_tokenizer(f"s3://{BUCKET}/runs/ray/tokenizer").sha256 == manifest.tokenizer["sha256"]
    again = dataclasses.replace(runs["remote"], output_dir=f"s3://{BUCKET}/runs/ray-again",
                                tokenizer=TokenizerConfig(model_path=f"s3://{BUCKET}/runs/ray/tokenizer"))
    assert [s.sha256 for s in run_pipeline(again, use_ray=False).shards] == [s.sha256 for s in manifest.shards]
    assert _rows(f"s3://{BUCKET}/runs/ray", 4)["input_ids"].max() < 40
