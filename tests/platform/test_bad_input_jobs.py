"""Bad input through the jobs users submit: one line naming the problem, exit code 2, nothing retried.

The checks themselves are tested where they live (forge_data's loader and pipeline, the config
loader); these prove that, raised on a Ray Train worker or on the driver, they reach the user as one
line and the job's exit code, and that Ray's retries stop at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.platform.conftest import STDLIB
from tests.platform.test_job_specs import run_job

pytestmark = pytest.mark.slow


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_corrupt_shard_stops_the_job_with_one_line_and_no_retry(packed_data, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(packed_data.manifest.parent, data)
    for shard in sorted(data.glob("shards/*.parquet")):  # whichever the first batch reads
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # one flipped bit in the middle of the shard
        shard.write_bytes(bytes(raw))
    out = run_job("jobs.pretrain", "--config", "jobs/specs/pretrain.toml", "--train_manifest", str(data / "manifest.json"), "--stage.seq_len", "64",
                  "--output_dir", str(tmp_path / "run"), "--tracking.backend", "console", "--stage.train.steps", "2",
                  "--stage.train.micro_batch_size", "2", "--parallel.num_workers", "1", "--parallel.max_failures", "1",
                  timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out.stderr)
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: stage 'pretrain': shard shards/shard-") and "sha256" in errors[0]
    marker = next((tmp_path / "run").rglob("input_error.json"))
    assert json.loads(marker.read_text())["retries_refused"] == 1  # Ray's one retry stopped before loading


def test_data_that_lost_more_than_allowed_stops_the_tokenize_job_with_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:10]:
        (corpus / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    for i in range(4):
        (corpus / f"bad{i}.txt").write_bytes(b"\xff\xfe\x00\x00" * 64)  # not text
    out = run_job("jobs.tokenize", "--config", "jobs/specs/tokenize.toml", "--data.inputs", f"[\"{corpus}\"]",
                  "--data.output_dir", str(tmp_path / "out"), "--data.tokenizer.vocab_size", "512",
                  "--data.packing.seq_len", "64", timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out.stderr)
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: data.max_rejected_share = 0.05: must be >= the share of the input lost")
    assert "rejections.parquet" in errors[0]


def test_a_vocabulary_larger_than_the_corpus_allows_stops_the_tokenize_job_with_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "json_decoder.py").write_bytes((STDLIB / "json" / "decoder.py").read_bytes())
    out = run_job("jobs.tokenize", "--config", "jobs/specs/tokenize.toml", "--data.inputs", f"[\"{corpus}\"]",
                  "--data.output_dir", str(tmp_path / "out"), "--data.tokenizer.vocab_size", "60000",
                  "--data.packing.seq_len", "64", timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out.stderr)
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert errors[0].startswith("error: tokenizer.vocab_size = 60000: the tokenizer's sample (")
    assert "set data.tokenizer.vocab_size <= " in errors[0]
