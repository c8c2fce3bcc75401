"""What the evaluation suites read besides the model: held-out data, the tokenizer, the scorer."""

from __future__ import annotations

from dataclasses import dataclass

from forge_eval.prompts import TextTokenizer
from forge_eval.scoring import Scorer


@dataclass(frozen=True)
class EvalInputs:
    """What the suites read besides the model."""

    val_manifest: str | None = None
    """manifest.json of held-out packed shards (validation and ppl need it)."""
    tokenizer: TextTokenizer | None = None
    """The tokenizer the model was trained with (Phonebook and RULER need it)."""
    scorer: Scorer | None = None
    """How answers are asked for; None: `ModelScorer` over the model (reference generation)."""
    progress: bool = True
    """Progress bars on the long loops."""
    ppl_manifest: str | None = None
    """manifest.json of held-out shards packed at (at least) `ppl_max_position` tokens, for the ppl
    suite: rows of the stage's own length stop there. None: ppl reads `val_manifest`."""
