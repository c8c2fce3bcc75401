"""What an evaluation measures: the `[eval]` section of a stage (and of `jobs.evaluate`).

Fields carry their docstrings below them (the platform's `--help` reads them); values are
checked where they are born, in the one error style `eval.field = value: must be ...`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from forge_eval.answering import ANSWER_MODES
from forge_eval.names import name_pool_size
from forge_eval.phonebook import FORMATS
from forge_eval.haystack import HAYSTACKS
from forge_eval.ruler import TASKS
from forge_eval.suite_names import HELD_OUT_SUITES, SUITE_NAMES, lm_eval_task

MAX_LENGTH = 1 << 20
"""Longest prompt or document any suite builds (tokens): 4x the 256K the suites must reach."""


def _fail(name: str, value: object, must: str) -> None:
    raise ValueError(f"eval.{name} = {value!r}: must {must}")


@dataclass
class EvalConfig:
    """Which suites run after a stage, and how much each one measures."""

    suites: list[str] = field(default_factory=lambda: ["validation", "phonebook"])
    """Suites to run, in order: names from `forge_eval.SUITES` (validation, validation_plain, phonebook,
    ruler, ppl) or
    `lm-eval:<task>`, an lm-evaluation-harness task (ours: forge_phonebook, forge_niah)."""
    val_batches: int = 8
    """Held-out packed rows averaged into the validation loss (the first ones, each at most once; they
    run `batch_tokens // seq_len` rows per forward pass)."""
    answer_mode: str = "generate"
    """How Phonebook and RULER ask for answers: `generate` (greedy decoding) or `teacher_forcing` (the
    model's top token at each answer position in one forward pass: same exact match, far cheaper)."""
    batch_tokens: int = 16384
    """Tokens per forward pass when prompts are batched (rows x length); a longer prompt runs alone."""
    seed: int = 0
    """Seed of every generated book, haystack and question: each stage sees the same ones."""

    phonebook_entries: list[int] = field(default_factory=lambda: [4, 16])
    """Phonebook sizes in names (metrics `phonebook_<n>_*`, standard format)."""
    phonebook_lengths: list[int] = field(default_factory=list)
    """Phonebook sizes in tokens of the run's tokenizer: the largest book whose prompt fits
    (metrics `phonebook_<format>_<tokens>_*`)."""
    phonebook_formats: list[str] = field(default_factory=lambda: ["standard"])
    """Formats measured at `phonebook_lengths`: standard (book, examples, query), reversed (query first)."""
    phonebook_queries: int = 8
    """Lookups per book size; 0 skips Phonebook."""
    phonebook_examples: int = 2
    """In-context example questions (answered from the book) before the query."""
    phonebook_depth: float | None = None
    """Where the queried line sits (0 first line .. 1 last); none spreads the queries evenly over the book."""

    ruler_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """RULER-style tasks (forge_eval.ruler.TASKS)."""
    ruler_lengths: list[int] = field(default_factory=lambda: [1024])
    """Prompt lengths (tokens) every RULER task is built at."""
    ruler_depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    """Needle depths swept by the single-needle task (0 top .. 1 bottom of the haystack)."""
    ruler_samples: int = 4
    """Samples per task, length (and depth for the single needle)."""
    ruler_haystacks: list[str] = field(default_factory=lambda: ["filler"])
    """Haystacks: `filler` (one sentence repeated) and/or `text` (the bundled tiny Shakespeare)."""

    ppl_bucket: int = 1024
    """Width (tokens) of the position buckets of perplexity by position."""
    ppl_max_position: int = 8192
    """Positions past this are not measured (set it to 2x the trained length)."""
    ppl_rows: int = 8
    """Held-out packed rows scored for perplexity by position: those whose documents run longest."""

    length_multiples: list[float] = field(default_factory=list)
    """Lengths as multiples of the stage's seq_len (e.g. [0.5, 1, 2]): in a campaign each stage then
    measures Phonebook and RULER at those lengths and perplexity by position up to the largest
    (replacing phonebook_lengths, ruler_lengths and ppl_max_position, and narrowing ppl_bucket to at
    most 1/8 of that range); empty keeps them as given."""

    lm_eval_limit: int = 0
    """Documents per lm-eval task (0: all)."""
    lm_eval_max_length: int = 8192
    """Longest context (tokens) the lm-eval adapter gives the model; longer inputs keep their end."""

    def __post_init__(self) -> None:
        # A TOML `suites = "validation"` would otherwise be read letter by letter.
        if isinstance(self.suites, str) or not all(isinstance(name, str) for name in self.suites):
            _fail("suites", self.suites, f"be a list of suite names ({', '.join(sorted(SUITE_NAMES))})")
        unknown = [name for name in self.suites if name not in SUITE_NAMES and not lm_eval_task(name)]
        if unknown:
            _fail("suites", self.suites, f"name known suites ({', '.join(sorted(SUITE_NAMES))}, or lm-eval:<task>); "
                  f"unknown: {', '.join(unknown)}")
        if self.val_batches < 1:
            _fail("val_batches", self.val_batches, "be >= 1")
        if self.answer_mode not in ANSWER_MODES:
            _fail("answer_mode", self.answer_mode, f"be one of {', '.join(ANSWER_MODES)}")
        if self.batch_tokens < 1:
            _fail("batch_tokens", self.batch_tokens, "be >= 1")
        pool = name_pool_size()
        if not all(1 <= n <= pool for n in self.phonebook_entries):
            _fail("phonebook_entries", self.phonebook_entries,
                  f"each be in [1, {pool}] (the distinct names a book can hold)")
        for name in ("phonebook_lengths", "ruler_lengths"):
            lengths = getattr(self, name)
            if not all(64 <= n <= MAX_LENGTH for n in lengths):
                _fail(name, lengths, f"each be in [64, {MAX_LENGTH}] tokens")
        for name, allowed in (("phonebook_formats", FORMATS), ("ruler_tasks", TASKS), ("ruler_haystacks", HAYSTACKS)):
            values = getattr(self, name)
            if isinstance(values, str) or not all(v in allowed for v in values):
                _fail(name, values, f"be a list of {', '.join(allowed)}")
        if self.phonebook_queries < 0:
            _fail("phonebook_queries", self.phonebook_queries, "be >= 0")
        if self.phonebook_examples < 0:
            _fail("phonebook_examples", self.phonebook_examples, "be >= 0")
        if self.phonebook_depth is not None and not 0.0 <= self.phonebook_depth <= 1.0:
            _fail("phonebook_depth", self.phonebook_depth, "be in [0, 1] or none")
        if not self.ruler_depths or not all(0.0 <= d <= 1.0 for d in self.ruler_depths):
            _fail("ruler_depths", self.ruler_depths, "each be in [0, 1] (at least one)")
        if self.ruler_samples < 1:
            _fail("ruler_samples", self.ruler_samples, "be >= 1")
        if self.ppl_bucket < 1:
            _fail("ppl_bucket", self.ppl_bucket, "be >= 1")
        if not self.ppl_bucket <= self.ppl_max_position <= MAX_LENGTH:
            _fail("ppl_max_position", self.ppl_max_position, f"be in [ppl_bucket = {self.ppl_bucket}, {MAX_LENGTH}]")
        if self.ppl_rows < 1:
            _fail("ppl_rows", self.ppl_rows, "be >= 1")
        if not all(0 < m <= 64 for m in self.length_multiples):
            _fail("length_multiples", self.length_multiples, "each be in (0, 64]")
        if self.lm_eval_limit < 0:
            _fail("lm_eval_limit", self.lm_eval_limit, "be >= 0 (0: every document)")
        if not 16 <= self.lm_eval_max_length <= MAX_LENGTH:
            _fail("lm_eval_max_length", self.lm_eval_max_length, f"be in [16, {MAX_LENGTH}]")

    @property
    def longest_prompt(self) -> int:
        """The longest prompt the configured suites build (tokens), for the model's limits."""
        lengths = [0]
        if "phonebook" in self.suites:
            lengths += self.phonebook_lengths
        if "ruler" in self.suites:
            lengths += self.ruler_lengths
        if "ppl" in self.suites:
            lengths.append(self.ppl_max_position)
        if any(lm_eval_task(name) for name in self.suites):
            lengths.append(self.lm_eval_max_length)
        return max(lengths)

    def for_length(self, seq_len: int) -> "EvalConfig":
        """This config with `length_multiples` resolved against a stage's `seq_len` (itself when empty)."""
        if not self.length_multiples:
            return self
        lengths = sorted({max(64, round(m * seq_len)) for m in self.length_multiples})
        # At least 8 position buckets over the range, or the loss-by-position plot is a point per stage.
        return dataclasses.replace(self, phonebook_lengths=lengths, ruler_lengths=lengths, ppl_max_position=lengths[-1],
                                   ppl_bucket=min(self.ppl_bucket, max(1, lengths[-1] // 8)), length_multiples=[])

    @property
    def lm_eval_tasks(self) -> list[str]:
        """The lm-eval tasks among `suites`."""
        return [task for task in map(lm_eval_task, self.suites) if task]

    @property
    def needs_tokenizer(self) -> bool:
        """Whether a suite asks questions in text (all but validation and ppl)."""
        return any(name not in HELD_OUT_SUITES for name in self.suites)
