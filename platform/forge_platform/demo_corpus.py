"""The demo's raw corpus: bundled tiny Shakespeare plus the interpreter's standard library sources.

Written as plain text files (one file = one document) into `train/` and `val/` folders, the input
shape every user corpus can take. Shakespeare is split at the published 90/10 character boundary;
standard-library files are split by position in sorted order, so both splits are deterministic.

Documents are whole on purpose, for the context-extension stage: the training part of the play is
one document (about 390K tokens with the demo's 2048-piece tokenizer) and each module is one
(median about 3K tokens; 198 of the 271 training documents are longer than 1024 tokens).
"""

from __future__ import annotations

import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from forge_platform.config_sections import CorpusConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class DemoCorpus:
    """The two folders of documents and how many documents each holds."""

    train_dir: Path
    val_dir: Path
    num_train_docs: int
    num_val_docs: int


def stdlib_sources(limit: int) -> list[Path]:
    """Standard-library `.py` files in sorted order (tests and site-packages left out)."""
    files = sorted(
        p for p in STDLIB.rglob("*.py")
        if "site-packages" not in p.parts and "test" not in p.parts and "tests" not in p.parts
    )
    return files if limit < 0 else files[:limit]


def prepare_demo_corpus(cfg: CorpusConfig, out_dir: str | Path) -> DemoCorpus:
    """Write the corpus's train and validation documents under `out_dir` (replacing old ones)."""
    out = Path(out_dir)
    train_dir, val_dir = out / "train", out / "val"
    for folder in (train_dir, val_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    counts = {train_dir: 0, val_dir: 0}

    if cfg.shakespeare:
        source = Path(cfg.shakespeare)
        if not source.is_file():
            raise FileNotFoundError(f"corpus.shakespeare = {cfg.shakespeare!r}: no such file")
        text = source.read_text(encoding="utf-8")
        cut = int(len(text) * (1 - cfg.val_fraction))
        (train_dir / "shakespeare.txt").write_text(text[:cut], encoding="utf-8")
        (val_dir / "shakespeare.txt").write_text(text[cut:], encoding="utf-8")
        counts[train_dir] += 1
        counts[val_dir] += 1

    files = stdlib_sources(cfg.stdlib_files) if cfg.stdlib_files else []
    num_val = max(1, round(len(files) * cfg.val_fraction)) if files else 0
    for i, path in enumerate(files):
        folder = val_dir if i >= len(files) - num_val else train_dir
        # Raw bytes on purpose: the pipeline, not this copy, decides what to do with bad UTF-8.
        name = "stdlib__" + "__".join(path.relative_to(STDLIB).parts)
        (folder / name).write_bytes(path.read_bytes())
        counts[folder] += 1
    return DemoCorpus(train_dir, val_dir, counts[train_dir], counts[val_dir])
