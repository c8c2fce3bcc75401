"""Test corpora for forge_data tests: real stdlib documents, generated text, every kind of bad input.

Plain functions (the fixtures live in conftest.py); imported as `tests.data.corpora`, never as
`conftest`, a bare module name that other test folders share.
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

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BAD_CORPUS_MAX_REJECTED = 0.8
"""`data.max_rejected_share` for a run over `write_bad_corpus`, which loses on purpose up to 8 of its 53
documents and, with its oversize file rejected, three quarters of its bytes."""


def stdlib_texts(subdir: str = "json") -> list[str]:
    """Real documents: the stdlib sources of one package, one file = one document."""
    return [p.read_text("utf-8") for p in sorted((STDLIB / subdir).rglob("*.py"))]


def make_text(rng: random.Random, num_words: int) -> str:
    """Pseudo-English with newlines, deterministic for a seeded rng."""
    words = ["the", "king", "queen", "castle", "river", "of", "and", "night", "sword", "crown", "x" * 7]
    lines = []
    for _ in range(max(1, num_words // 8)):
        lines.append(" ".join(rng.choice(words) for _ in range(8)))
    return "\n".join(lines) + "\n"


def write_bad_corpus(root: Path, seed: int = 0) -> dict[str, int]:
    """A corpus with every kind of bad input; returns the expected rejection counts by reason.

    Text files (good, invalid UTF-8, empty, whitespace-only, binary, oversize, gzip, zstd,
    corrupt gzip), a JSONL file (good lines, a broken line, a missing field, a lone surrogate) and
    a Parquet file (good rows and a null).
    """
    rng = random.Random(seed)
    (root / "text").mkdir(parents=True)
    for i in range(12):
        (root / "text" / f"good_{i:02d}.txt").write_text(make_text(rng, 40 + 60 * i))
    (root / "text" / "bad_utf8.txt").write_bytes(b"caf\xe9 au lait\n" + make_text(rng, 30).encode())
    (root / "text" / "empty.txt").write_bytes(b"")
    (root / "text" / "blank.txt").write_bytes(b"  \n\t\n")
    (root / "text" / "binary.bin").write_bytes(b"\x7fELF\x00\x01\x02" + bytes(range(256)))
    (root / "text" / "huge.txt").write_text(make_text(rng, 20_000))  # > max_doc_bytes in the tests
    (root / "text" / "zipped.txt.gz").write_bytes(gzip.compress(make_text(rng, 200).encode()))
    zst = pa.BufferOutputStream()
    with pa.CompressedOutputStream(zst, "zstd") as out:
        out.write(make_text(rng, 200).encode())
    (root / "text" / "zipped.txt.zst").write_bytes(zst.getvalue().to_pybytes())
    (root / "text" / "corrupt.txt.gz").write_bytes(gzip.compress(b"hello world\n" * 50)[:-30] + b"garbage!")
    lines = [json.dumps({"text": make_text(rng, 50), "id": i}) for i in range(20)]
    lines.insert(3, '{"text": "unterminated')
    lines.insert(7, json.dumps({"body": "no text field"}))
    lines.insert(9, '{"text": "lone \\ud800 surrogate"}')
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n\n")
    table = pa.table({"text": [make_text(rng, 80) for _ in range(9)] + [None]})
    pq.write_table(table, root / "docs.parquet")
    return {"invalid_utf8": 2, "empty": 2, "binary": 1, "oversize": 1, "read_error:OSError": 1,
            "invalid_json": 1, "missing_text_field": 2}
