"""Word-memoized BPE encoding against plain SentencePiece BPE, in one process, same texts.

    python -m benchmarks.data.bench_memoized_bpe                 # vocabularies 1000 and 32000
    python -m benchmarks.data.bench_memoized_bpe --vocab-sizes 256000 --copies 8

Corpus: the Python stdlib sources (one file = one document, raw bytes: a few files are not UTF-8,
which SentencePiece reads as U+FFFD and the encoder must follow). For each vocabulary, a BPE
tokenizer as the pipeline trains it (identity normalization) on every 7th file, then, on the
whole corpus cut into batches like the pipeline's work units:
  plain      SentencePieceProcessor.encode(batch, out_type="numpy"): the anchor
  cold       Tokenizer.encode_flat with an empty cache: every word is new once
  warm       the same batches again: every word cached (a long-lived actor on a corpus whose
             words it has seen; real corpora sit between cold and warm)
The rows print ns/token and x plain; every row's ids are checked equal to plain's.
With `--copies N` the corpus holds N copies of the stdlib in distinct words (each copy's
identifiers are suffixed), so "cold" stays honest on a bigger corpus.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "data_pipeline")]

from benchmarks.data.bench_pipeline import renamed  # noqa: E402
from forge_data import TokenizerConfig  # noqa: E402
from forge_data.tokenizer import Tokenizer, train_from_texts  # noqa: E402


def stdlib_corpus(copies: int) -> list[bytes]:
    src = Path(sysconfig.get_paths()["stdlib"])
    files = [p.read_bytes() for p in sorted(src.rglob("*.py")) if "site-packages" not in p.parts and p.is_file()]
    return [renamed(f, c) for c in range(copies) for f in files if f]


def batches(texts: list[bytes], batch_bytes: int) -> list[list[bytes]]:
    out, size = [[]], 0
    for t in texts:
        if size >= batch_bytes:
            out.append([])
            size = 0
        out[-1].append(t)
        size += len(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[1000, 32000])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--batch-mb", type=float, default=8.0, help="bytes per batch (the pipeline's work unit)")
    args = parser.parse_args()
    texts = stdlib_corpus(args.copies)
    work = batches(texts, int(args.batch_mb * 2**20))
    print(f"corpus: {args.copies} x stdlib, {sum(map(len, texts)) / 2**20:.1f} MiB, {len(texts)} documents, "
          f"{len(work)} batches")
    print(f"{'vocab':>7s} {'row':6s} {'ns/token':>9s} {'x plain':>8s} {'cached words':>13s}")
    for vocab in args.vocab_sizes:
        cfg = TokenizerConfig(model_type="bpe", vocab_size=vocab, show_progress=False)
        sample = [t.decode("utf-8", "replace") for t in texts[:len(texts) // args.copies:7]]
        tok = train_from_texts(cfg, sample)
        t0 = time.perf_counter()
        plain = [tok.processor.encode(b, out_type="numpy", add_eos=True, num_threads=1) for b in work]
        plain_s = time.perf_counter() - t0
        expected = np.concatenate([a for arrays in plain for a in arrays])
        tokens = len(expected)
        memo = Tokenizer(tok.model_proto)
        assert memo.batch_encoder == "memoized BPE", memo.batch_encoder
        print(f"{vocab:7d} {'plain':6s} {plain_s / tokens * 1e9:9.1f} {1.0:8.2f}")
        for row in ("cold", "warm"):
            t0 = time.perf_counter()
            flats = [memo.encode_flat(b, add_eos=True)[0] for b in work]
            dt = time.perf_counter() - t0
            assert np.array_equal(np.concatenate(flats), expected), f"{row}: ids differ from SentencePiece's"
            print(f"{vocab:7d} {row:6s} {dt / tokens * 1e9:9.1f} {plain_s / dt:8.2f} {memo._memoized.num_cached_words:13d}")
        print(f"{vocab:7d} {tokens / 1e6:.1f} M tokens, {sum(map(len, texts)) / tokens:.2f} bytes/token")


if __name__ == "__main__":
    main()
