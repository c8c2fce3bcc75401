"""What an evaluation measures: the `[eval]` section of a stage (and of `jobs.evaluate`).

Fields carry their docstrings below them (the platform's `--help` reads them); values are
checked where they are born, in the one error style `eval.field = value: must be ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forge_eval.phonebook import name_pool_size
from forge_eval.suites import SUITES


@dataclass
class EvalConfig:
    """Which suites run after a stage, and how much each one measures."""

    suites: list[str] = field(default_factory=lambda: ["validation", "phonebook"])
    """Suites to run, in order (names from `forge_eval.SUITES`: validation, phonebook)."""
    val_batches: int = 8
    """Held-out packed sequences (batches of one) averaged into the validation loss."""
    phonebook_entries: list[int] = field(default_factory=lambda: [4, 16])
    """Phonebook sizes (names in the book) at which lookup accuracy is measured by greedy generation."""
    phonebook_queries: int = 8
    """Lookups per book size; 0 skips Phonebook."""

    def __post_init__(self) -> None:
        # A TOML `suites = "validation"` would otherwise be read letter by letter.
        if isinstance(self.suites, str) or not all(isinstance(name, str) for name in self.suites):
            raise ValueError(f"eval.suites = {self.suites!r}: must be a list of suite names "
                             f"({', '.join(sorted(SUITES))})")
        unknown = [name for name in self.suites if name not in SUITES]
        if unknown:
            raise ValueError(f"eval.suites = {self.suites!r}: must name known suites ({', '.join(sorted(SUITES))}); "
                             f"unknown: {', '.join(unknown)}")
        if self.val_batches < 1:
            raise ValueError(f"eval.val_batches = {self.val_batches!r}: must be >= 1")
        pool = name_pool_size()
        if not all(1 <= n <= pool for n in self.phonebook_entries):
            raise ValueError(f"eval.phonebook_entries = {self.phonebook_entries!r}: must each be in [1, {pool}] "
                             "(the distinct names a book can hold)")
        if self.phonebook_queries < 0:
            raise ValueError(f"eval.phonebook_queries = {self.phonebook_queries!r}: must be >= 0")
