"""Haystacks for RULER-style tasks: text the needles hide in, as many units as a length needs.

- `filler`: one plain sentence repeated (RULER's "noise" haystack: nothing in it resembles a needle);
- `text`: real prose, the bundled tiny Shakespeare (datasets/tinyshakespeare), or the interpreter's
  own standard-library sources where the repository's datasets folder is not at hand (an installed
  package): both ship with what we already have, nothing is downloaded.
"""

from __future__ import annotations

import random
import sysconfig
from functools import lru_cache
from pathlib import Path

HAYSTACKS = ("filler", "text")
FILLER = "The lake was calm and the boats stayed by the shore all day."
SHAKESPEARE = Path(__file__).resolve().parents[2] / "datasets" / "tinyshakespeare" / "input.txt"


@lru_cache(maxsize=1)
def _text_lines() -> tuple[str, ...]:
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")
    else:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        text = "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in sorted(stdlib.glob("*.py"))[:60])
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class Haystack:
    """Unit i of a haystack (a sentence or a line), deterministic for a seed."""

    def __init__(self, kind: str, seed: int) -> None:
        if kind not in HAYSTACKS:
            raise ValueError(f"haystack {kind!r}: must be one of {', '.join(HAYSTACKS)}")
        self.kind = kind
        self.lines = _text_lines() if kind == "text" else (FILLER,)
        # Each sample reads the text from its own place, so samples do not share one passage.
        self.start = random.Random(f"haystack-{kind}-{seed}").randrange(len(self.lines))

    @property
    def tokens_per_unit_guess(self) -> float:
        """A first guess of tokens per unit; measured lengths correct it."""
        return 14.0 if self.kind == "filler" else 10.0

    def units(self, count: int) -> list[str]:
        """The first `count` units."""
        return [self.lines[(self.start + i) % len(self.lines)] for i in range(count)]
