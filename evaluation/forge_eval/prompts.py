"""What every generated task needs from the run's tokenizer: checked encoding, a neutral fill token,
an answer split off its prompt as the model would have seen it, and texts grown to a token length."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class TextTokenizer(Protocol):
    """What the suites need of a tokenizer (forge_data's `Tokenizer` is one)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class UnencodableTextError(ValueError):
    """The run's tokenizer cannot write the task's characters back (no byte fallback for them)."""


def check_encodable(tokenizer: TextTokenizer, text: str, task: str) -> None:
    """Refuse, in one line, a task whose characters the tokenizer loses (e.g. <unk> without byte fallback)."""
    lost = sorted(c for c in set(text) if c not in tokenizer.decode(tokenizer.encode(c)))
    if lost:
        raise UnencodableTextError(f"task {task!r}: the tokenizer cannot encode the characters "
                                   f"{''.join(lost)!r} (it decodes them to something else); use a tokenizer "
                                   "trained with byte_fallback = true or text it covers")


def fill_token(tokenizer: TextTokenizer) -> int | None:
    """A token that means nothing to a prompt (a newline), used to bring prompts to one length."""
    ids = tokenizer.encode("\n")
    return ids[-1] if ids and tokenizer.decode(ids[-1:]) == "\n" else None


def split_answer(tokenizer: TextTokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as `prompt + answer` tokenizes: the answer's first piece may carry the
    space before it, exactly as in training text."""
    context = tokenizer.encode(prompt)
    whole = tokenizer.encode(prompt + answer)
    if whole[:len(context)] == context and len(whole) > len(context):
        return context, whole[len(context):]
    return context, tokenizer.encode(answer)


def grow_to_length(build: Callable[[int], str], count_tokens: Callable[[str], int], target: int,
                   tokens_per_item: float, minimum: int = 1) -> tuple[int, str, int]:
    """The largest item count n >= `minimum` whose text `build(n)` is at most `target` tokens.

    Starts from the estimate `tokens_per_item` and corrects it with measured lengths (a handful of
    encodes of the whole text, not one per item). Returns (n, text, its token count); a target too
    short for `minimum` items raises ValueError naming what `minimum` items take.
    """
    fits: tuple[int, str, int] | None = None  # the largest n known to fit
    too_long: int | None = None  # the smallest n known not to
    n = max(minimum, int(target / max(tokens_per_item, 1e-3)))
    shortest = 0
    for _ in range(60):
        text = build(n)
        length = count_tokens(text)
        if length <= target:
            if fits is None or n > fits[0]:
                fits = (n, text, length)
        else:
            too_long = n if too_long is None else min(too_long, n)
            if n == minimum:
                shortest = length
        lower = fits[0] + 1 if fits else minimum
        upper = too_long - 1 if too_long is not None else 1 << 40
        if lower > upper:
            break
        # Secant step on the measured tokens per item, kept strictly inside the open bracket.
        guess = n + int((target - length) / max(length / max(n, 1), 1e-3))
        n = min(max(guess if guess != n else n + (1 if length <= target else -1), lower), upper)
    if fits is None:
        raise ValueError(f"a length of {target} tokens is too short for this task: {minimum} items already take "
                         f"{shortest} tokens")
    return fits
