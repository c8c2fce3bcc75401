"""Throughput of the data pipeline against the plain SentencePiece ceiling, tokens/s per core.

    python -m benchmarks.data.bench_pipeline                  # laptop / this 2-core box
    python -m benchmarks.data.bench_pipeline --copies 8 --vocab-size 32000

Corpus: the Python stdlib sources (one file = one document), copied `--copies` times so the run
is long enough that Ray's fixed start-up (worker processes, actors) is not the whole story.
Rows printed:
  plain encode        one process, one thread, SentencePieceProcessor.encode(list) on the same
                      cleaned texts (the ceiling): int lists and int32 numpy buffers
  stages in-process   read -> clean -> tokenize -> pack -> write, serially, time per stage
  pipeline (N cores)  run_pipeline with Ray Data, Ray pinned to N cores (taskset), N tokenize
                      actors. "steady" = tokens of blocks 2..n / time between the arrival of block 1
                      and block n (excludes worker/actor start-up, ~10 s on 2 cores); "wall" = all
                      of run_pipeline, start-up included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "data_pipeline")]

from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, load_tokenizer  # noqa: E402
from forge_data.config import CleaningConfig  # noqa: E402
from forge_data.stages import TokenizePackWorker, read_clean_batch  # noqa: E402
from forge_data.sources import encode_unit, list_input_files, plan_work_units  # noqa: E402


def build_corpus(dst: Path, copies: int) -> Path:
    """Copy the stdlib's .py files `copies` times (real code, ~30 MB per copy)."""
    src = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in src.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    for c in range(copies):
        for p in files:
            out = dst / f"copy{c}" / p.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, out)
    return dst


def train(corpus: Path, out: Path, vocab_size: int) -> str:
    from forge_data.tokenizer import train_from_texts

    texts = [p.read_text("utf-8", "replace") for p in sorted((corpus / "copy0").rglob("*.py"))[::7]]
    cfg = TokenizerConfig(vocab_size=vocab_size, show_progress=False)
    return train_from_texts(cfg, texts).save(str(out))


def pipeline_config(corpus: Path, out: Path, tok: str, actors: int, unit_bytes: int) -> DataPipelineConfig:
    return DataPipelineConfig(inputs=[str(corpus)], output_dir=str(out), include_suffixes=[".py"],
                              tokenizer=TokenizerConfig(model_path=tok), packing=PackingConfig(seq_len=2048),
                              cleaning=CleaningConfig(), num_tokenize_actors=actors, work_unit_bytes=unit_bytes)


def plain_and_stages(cfg: DataPipelineConfig) -> dict[str, float]:
    """Ceiling and per-stage costs in this process (ns per token)."""
    tok = load_tokenizer(cfg.tokenizer.model_path)
    units = plan_work_units(list_input_files(cfg.inputs, cfg.format, cfg.include_suffixes), cfg.work_unit_bytes, 0)
    worker = TokenizePackWorker(tok.model_proto, cfg, pad_id=tok.pad_id)
    t_read = t_rest = 0.0
    texts: list[str] = []
    tokens = 0
    for i, unit in enumerate(units):
        t0 = time.perf_counter()
        docs = read_clean_batch(__import__("pyarrow").Table.from_pylist([encode_unit(i, unit)]), "text", cfg.cleaning)
        t1 = time.perf_counter()
        report = worker.process(docs)
        t_rest += time.perf_counter() - t1
        t_read += t1 - t0
        tokens += report["counts"]["tokens_tokenized"]
        texts += [t for t in docs.column("text").to_pylist() if t is not None]
    res = {"tokens": tokens}
    for name, kw in (("plain encode (int lists)", {}), ("plain encode (numpy)", {"out_type": "numpy"})):
        best = 1e9
        for _ in range(2):
            t0 = time.perf_counter()
            out = tok.processor.encode(texts, num_threads=1, add_eos=True, **kw)
            best = min(best, time.perf_counter() - t0)
        assert sum(map(len, out)) == tokens
        res[name] = tokens / best
    res["stages: read+clean ns/tok"] = t_read / tokens * 1e9
    res["stages: tokenize+pack+write ns/tok"] = t_rest / tokens * 1e9
    res["stages in-process tok/s"] = tokens / (t_read + t_rest)
    return res


def run_ray(cfg: DataPipelineConfig, cores: int) -> dict[str, float]:
    """run_pipeline in a fresh process pinned to `cores` cores (Ray inherits the affinity)."""
    code = (
        "import json,sys,time,os; sys.path.insert(0, %r); os.environ.setdefault('RAY_AUTH_MODE','disabled');"
        "import ray; ray.init(address='local', num_cpus=4, include_dashboard=False, log_to_driver=False);"
        "ray.data.DataContext.get_current().enable_progress_bars=False;"
        "from forge_data import run_pipeline; from forge_data.config import *; import pickle;"
        "cfg=pickle.loads(bytes.fromhex(%r)); arrivals=[];"
        "t=time.perf_counter(); m=run_pipeline(cfg, on_report=lambda r: arrivals.append((time.perf_counter(), r['counts']['tokens_written'])));"
        "dt=time.perf_counter()-t; steady=sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0]);"
        "print('BENCH ' + json.dumps({'tokens': m.counts['tokens_written'], 'wall': dt, 'steady': steady, 'blocks': len(arrivals),"
        " 'padding_ratio': m.padding_ratio}), flush=True)"
    ) % (str(REPO / "data_pipeline"), __import__("pickle").dumps(cfg).hex())
    cpus = ",".join(str(c) for c in range(cores))
    out = subprocess.run(["taskset", "-c", cpus, sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    result = json.loads(line[len("BENCH "):])
    result["tok/s"] = result["tokens"] / result["wall"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--unit-mb", type=float, default=8.0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="forge_bench_"))
    corpus = build_corpus(work / "corpus", args.copies) if not (work / "corpus").exists() else work / "corpus"
    tok = train(corpus, work / "tok", args.vocab_size)
    unit_bytes = int(args.unit_mb * 2**20)

    base = plain_and_stages(pipeline_config(corpus, work / "inproc", tok, 1, unit_bytes))
    ceiling = max(base["plain encode (int lists)"], base["plain encode (numpy)"])
    print(f"corpus: {args.copies} x stdlib, {base['tokens'] / 1e6:.1f} M tokens, vocab {args.vocab_size}")
    print(f"{'measurement':44s} {'tok/s':>12s} {'tok/s/core':>12s} {'x ceiling':>10s}")
    for key in ("plain encode (int lists)", "plain encode (numpy)", "stages in-process tok/s"):
        print(f"{key:44s} {base[key]:12.3e} {base[key]:12.3e} {base[key] / ceiling:10.2f}")
    print(f"  stage cost: read+clean {base['stages: read+clean ns/tok']:.1f} ns/tok, "
          f"tokenize+pack+write {base['stages: tokenize+pack+write ns/tok']:.1f} ns/tok, "
          f"ceiling {1e9 / ceiling:.1f} ns/tok")
    results = {}
    for cores in (1, 2):
        r = run_ray(pipeline_config(corpus, work / f"ray{cores}", tok, cores, unit_bytes), cores)
        results[cores] = r
        for label, rate in (("steady", r["steady"]), ("wall", r["tok/s"])):
            name = f"pipeline {label}, {cores} core(s), {cores} actor(s)"
            print(f"{name:44s} {rate:12.3e} {rate / cores:12.3e} {rate / cores / ceiling:10.2f}"
                  + (f"   ({r['blocks']} blocks, wall {r['wall']:.1f} s, padding {r['padding_ratio']:.4f})" if label == "wall" else ""))
    print(f"scaling 1 -> 2 cores: steady x{results[2]['steady'] / results[1]['steady']:.2f}, "
          f"wall x{results[2]['tok/s'] / results[1]['tok/s']:.2f}")


if __name__ == "__main__":
    main()
