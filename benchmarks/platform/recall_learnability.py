"""How many steps until a small model learns the reproduction study's recall practice: accuracy on the
answer digits of held-out practice documents (forge_eval.practice) as training goes, per model.

The study (jobs/specs/reproduce_recall*.toml) asks phonebook and needle questions after minutes of
training; if no arm has learned in-context lookup by then, every score is 0 and the study says
nothing. This trains the study's arms on practice documents alone (one document per row, the same
rows for every arm) and prints, every `--eval-every` steps, the share of answer digits each model
predicts right given the true text before them (teacher forcing, as the study scores):

- phonebook: the number after the final `Answer: <name>:`; chance is 0.1 per digit;
- associative recall: every value after `key?` in the `Recall:` section.

A model that copies from context rises far above 0.1; one that has learned only the format sits at
~0.1. Arms, sizes, sequence length, batch, learning rate and practice mix come from a study spec; on
the CPU one thread per process (run arms in separate processes to use more cores), on CUDA in bf16:

    python benchmarks/platform/recall_learnability.py --arms transformer --vocab 512
    python benchmarks/platform/recall_learnability.py --spec jobs/specs/reproduce_recall.toml \
        --arms transformer hybrid mamba2 --vocab 4096 --device cuda
    python benchmarks/platform/recall_learnability.py --practice.pairs 2,6 --stage.optim.lr 1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import random
import re
import textwrap
import time
from pathlib import Path

import torch
from forge_data import IGNORE_INDEX, TokenizerConfig
from forge_data.tokenizer import Tokenizer, train_from_texts
from forge_eval.practice import practice_documents
from forge_models import build_model, language_model_loss
from forge_platform.job_config import StudyConfig, load_job_config
from forge_platform.tracking.plots import pyplot, save_figure

LAPTOP_SPEC = "jobs/specs/reproduce_recall_laptop.toml"
_ANSWER = re.compile(r"(?<=Answer: )[^\n:]+: (\d{3}-\d{3}-\d{4})\n\Z|(?<=\? )(\d\d)(?=\n)")


def answer_spans(doc: str) -> list[tuple[int, int]]:
    """Character spans of the recall answers in a practice document (see the module docstring)."""
    return [m.span(1) if m.group(1) else m.span(2) for m in _ANSWER.finditer(doc)]


def encode_with_answers(tokenizer: Tokenizer, doc: str) -> tuple[list[int], list[int]]:
    """(ids, positions of the answer digits' tokens), from SentencePiece's piece offsets (practice text is
    ASCII, so its byte offsets are character offsets; split_digits makes every digit its own piece)."""
    pieces = tokenizer.processor.encode(doc, return_type="proto").pieces
    digits = {i for start, end in answer_spans(doc) for i in range(start, end) if doc[i].isdigit()}
    return [p.id for p in pieces], [t for t, p in enumerate(pieces) if p.begin in digits and p.end == p.begin + 1]


_worker_tokenizer: Tokenizer | None = None


def _start_worker(model_proto: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_proto)


def _encode_in_worker(doc: str) -> tuple[list[int], list[int]]:
    assert _worker_tokenizer is not None
    return encode_with_answers(_worker_tokenizer, doc)


def encode_all(tokenizer: Tokenizer, docs: list[str], processes: int) -> list[tuple[list[int], list[int]]]:
    """encode_with_answers over every document, in `processes` processes (~5 ms a document at the GPU
    spec's sizes: the GPU spec's 77K documents take minutes in one)."""
    if processes <= 1:
        return [encode_with_answers(tokenizer, d) for d in docs]
    with multiprocessing.get_context("spawn").Pool(processes, _start_worker, (tokenizer.model_proto,)) as pool:
        return pool.map(_encode_in_worker, docs, chunksize=256)


def rows_of(docs: list[tuple[list[int], list[int]]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One document per row, cut to seq_len: (inputs, labels with padding ignored, answer mask on labels)."""
    inputs = torch.zeros(len(docs), seq_len, dtype=torch.long)
    labels = torch.full((len(docs), seq_len), IGNORE_INDEX, dtype=torch.long)
    answers = torch.zeros(len(docs), seq_len, dtype=torch.bool)
    for r, (ids, positions) in enumerate(docs):
        ids = ids[:seq_len + 1]
        inputs[r, :len(ids) - 1] = torch.tensor(ids[:-1])
        labels[r, :len(ids) - 1] = torch.tensor(ids[1:])
        for p in positions:
            if 1 <= p <= seq_len and p < len(ids):
                answers[r, p - 1] = True  # the label at p - 1 is token p
    return inputs, labels, answers


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm up over ~5% of the steps, in whole steps and at least two: OneCycleLR divides by its warm-up
    length less one, so a share that comes to exactly one step (20 steps at 5%) divides by zero. Needs
    at least 4 steps (main checks)."""
    warmup = max(2, round(0.05 * steps))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup / steps,
                                               final_div_factor=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=LAPTOP_SPEC, help="the study spec whose arms and stage to train")
    parser.add_argument("--arms", nargs="+", default=["transformer"], help="arm names of the spec")
    parser.add_argument("--steps", type=int, default=0, help="0: the spec's stage.train.steps")
    parser.add_argument("--vocab", type=int, default=0, help="0: the spec's data.tokenizer.vocab_size")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--processes", type=int, default=1, help="processes that tokenize the documents")
    parser.add_argument("--documents", type=int, default=0,
                        help="distinct training documents, reshuffled each pass (0: one per row, never repeated); "
                             "tokenizing is ~5 ms a document, so thousands of steps at the GPU spec's batch need a cap")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop an arm at the first evaluation after this much training time (0: no limit), "
                             "to fit a bounded device call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the curves here")
    parser.add_argument("--plot", default="", help="draw the curves of --from (or of this run) into this PNG")
    parser.add_argument("--from", dest="sources", nargs="+", default=[], metavar="JSON",
                        help="curves written by earlier runs (--json): plot them, train nothing")
    args, overrides = parser.parse_known_args()  # the rest override the spec: --practice.pairs 2,6
    if args.sources:
        if not args.plot:
            parser.error("--from needs --plot")
        print(f"wrote {plot_curves([json.loads(Path(f).read_text()) for f in args.sources], args.plot)}")
        return
    torch.set_num_threads(args.threads)
    spec = load_job_config(StudyConfig, args.spec, overrides)
    arms = {arm.name: arm.model for arm in spec.arms}
    if unknown := sorted(set(args.arms) - set(arms)):
        parser.error(f"arms {unknown} are not in {args.spec} (it has {sorted(arms)})")
    steps = args.steps or spec.stage.train.steps
    if steps < 4:
        parser.error(f"--steps {steps}: a warm-up and a decay need at least 4 steps")
    batch, seq_len, lr = spec.stage.train.micro_batch_size, spec.stage.seq_len, spec.stage.optim.lr
    device = torch.device(args.device)

    rows = steps * batch
    num_train = min(args.documents or rows, rows)
    train_texts = list(practice_documents(num_train, seed=args.seed, mix=spec.practice))
    held_out = list(practice_documents(256, seed=10_000 + args.seed, mix=spec.practice))
    tokenizer = train_from_texts(TokenizerConfig(model_type="bpe", vocab_size=args.vocab or spec.data.tokenizer.vocab_size,
                                                 show_progress=False, sample_bytes=4_000_000), train_texts[:20_000])
    train = encode_all(tokenizer, train_texts, args.processes)
    val_inputs, val_labels, val_answers = (t.to(device) for t in rows_of(
        encode_all(tokenizer, held_out, 1), seq_len))
    cut = sum(len(ids) > seq_len + 1 for ids, _ in train)
    print(f"{num_train} training documents ({cut} cut to {seq_len} tokens) for {rows} rows, {len(held_out)} held out; "
          f"vocabulary {tokenizer.vocab_size}; {int(val_answers.sum())} held-out answer digits; "
          f"{steps} steps of {batch} x {seq_len}, lr {lr}, on {device}")

    curves: dict[str, list[tuple[int, float, float]]] = {}
    result = {"args": vars(args), "overrides": overrides, "tokens_per_step": batch * seq_len,
              "rows_per_step": batch, "curves": curves}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for arm in args.arms:
        torch.manual_seed(args.seed)
        model = build_model(dataclasses.replace(arms[arm], vocab_size=tokenizer.vocab_size)).to(device)
        params = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        schedule = one_cycle(optimizer, lr, steps)
        shuffle = random.Random(args.seed)
        order = [i for _ in range(-(-rows // num_train)) for i in shuffle.sample(range(num_train), num_train)]
        curve = curves[arm] = []
        start = time.perf_counter()
        for step in range(1, steps + 1):
            model.train()
            inputs, labels, _ = rows_of([train[i] for i in order[(step - 1) * batch:step * batch]], seq_len)
            with autocast:
                loss = language_model_loss(model(inputs.to(device)), labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if step % args.eval_every == 0 or step == steps:
                model.eval()
                with torch.no_grad(), autocast:
                    predicted = torch.cat([model(val_inputs[i:i + 32]).argmax(-1) for i in range(0, len(val_inputs), 32)])
                right = (predicted == val_labels) & val_answers
                accuracy = float(right.sum() / val_answers.sum())
                curve.append((step, float(loss.detach()), accuracy))
                elapsed = time.perf_counter() - start
                print(f"{arm} ({params / 1e6:.2f}M) step {step}: train loss {float(loss.detach()):.3f}, held-out "
                      f"answer-digit accuracy {accuracy:.3f} ({elapsed:.0f} s)", flush=True)
                if args.json:  # after every evaluation: a run cut off by a device call's limit keeps its curve
                    Path(args.json).write_text(json.dumps(result, indent=1))
                if args.minutes and elapsed > 60 * args.minutes:
                    print(f"{arm}: stopped at step {step} of {steps} after {elapsed / 60:.1f} min (--minutes)")
                    break
    if args.plot:
        print(f"wrote {plot_curves([result], args.plot)}")


def plot_curves(results: list[dict], path: str) -> Path:
    """Answer-digit accuracy against the training documents seen (steps x rows a step), a line per
    (run, arm), chance marked; the legend under the axes names each run's spec and overrides. Documents,
    not steps: on the small problems a batch of 16 was at 0.96 after 2,000 steps where a batch of 4
    was at 0.59 after 6,000, and the two curves lie on each other against documents until the jump."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.35 * sum(len(r["curves"]) for r in results)), dpi=110)
    for result in results:
        label = " ".join([result["args"].get("spec", "").rsplit("/", 1)[-1].removesuffix(".toml")]
                         + result.get("overrides", []))
        rows = result["rows_per_step"]
        for arm, curve in result["curves"].items():
            ax.plot([step * rows for step, _, _ in curve], [acc for _, _, acc in curve], marker=".",
                    label=textwrap.fill(f"{arm}, {rows} x {result['tokens_per_step'] // rows} a step: {label}", 90),
                    linewidth=1.4)
    ax.axhline(0.1, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training documents seen (one a row)")
    ax.set_ylabel("held-out answer-digit accuracy\n(dashed: chance)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    return save_figure(plt, fig, path)


if __name__ == "__main__":
    main()
