"""RULER-style synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER `scripts/data/synthetic/`), built to a
length in tokens of the run's tokenizer and scored by RULER's string match.

Tasks (each sample: a prompt ending in an answer prefix, and the strings a right answer contains):
- `niah_single`: one needle ("the special magic number for <key> is <7 digits>") at a chosen depth;
- `niah_multikey`: four needles with different keys, one asked for (the others distract);
- `niah_multivalue`: four needles with the same key, all four values asked for;
- `niah_multiquery`: four needles with different keys, two asked for;
- `vt` (variable tracking): a chain `VAR A = 12345`, `VAR B = VAR A`, ... spread through the
  haystack; every name bound to the value is asked for;
- `cwe` (common words): a numbered list where five words appear four times each and every other
  word once or twice; the five common ones are asked for;
- `fwe` (frequent words): coded words drawn from a Zipf law; the three most frequent are asked for.

Keys and words are made up from syllables (forge_eval.names), values are random digits: nothing
in a haystack can answer by chance. Score: the share of the answer strings found in the prediction
(RULER's `string_match_all`), averaged over samples.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from forge_eval.haystack import HAYSTACKS, Haystack
from forge_eval.names import SYLLABLES
from forge_eval.prompts import TextTokenizer, grow_to_length

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
HAYSTACK_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt")
NUM_NEEDLES = 4
__all__ = ["HAYSTACKS", "TASKS", "RulerSample", "make_samples", "string_match_all"]


@dataclass(frozen=True)
class RulerSample:
    """One prompt and the strings its answer must contain."""

    task: str
    prompt: str
    answers: tuple[str, ...]
    depth: float | None = None
    """Depth of the (first) needle, for the single-needle sweep."""

    @property
    def target(self) -> str:
        """The answer as the model should write it after the prompt (teacher forcing, generation budget)."""
        return " " + ", ".join(self.answers) + "."


def _word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables))


def _words(rng: random.Random, count: int, syllables: int = 3) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault(_word(rng, syllables))
    return list(seen)


def _number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def _needle(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _insert(units: list[str], items: Sequence[tuple[float, str]]) -> str:
    """Haystack units with each item placed at its depth (0 before the first unit, 1 after the last)."""
    out = list(units)
    for depth, item in sorted(items, key=lambda x: -x[0]):  # deepest first keeps earlier indices valid
        out.insert(round(depth * len(units)), item)
    return " ".join(out)


def _niah(task: str, rng: random.Random, depth: float | None) -> tuple[Callable[[list[str]], str], tuple[str, ...], float]:
    keys = _words(rng, NUM_NEEDLES)
    values = [_number(rng) for _ in range(NUM_NEEDLES)]
    depths = [rng.random() for _ in range(NUM_NEEDLES)]
    if depth is not None:
        depths[0] = depth
    intro = ("Some special magic numbers are hidden in the following text. Remember them: I will ask about "
             "them afterwards.\n\n")
    if task == "niah_single":
        needles = [(depths[0], _needle(keys[0], values[0]))]
        asked, answers = [keys[0]], (values[0],)
    elif task == "niah_multikey":
        needles = [(d, _needle(k, v)) for d, k, v in zip(depths, keys, values)]
        asked, answers = [keys[0]], (values[0],)
    elif task == "niah_multivalue":
        needles = [(d, _needle(keys[0], v)) for d, v in zip(depths, values)]
        asked, answers = [keys[0]], tuple(values)
    else:  # niah_multiquery
        needles = [(d, _needle(k, v)) for d, k, v in zip(depths, keys, values)]
        asked, answers = keys[:2], tuple(values[:2])
    if task == "niah_multivalue":
        question = (f"What are all the special magic numbers for {asked[0]} mentioned in the text?\n"
                    f"Answer: The special magic numbers for {asked[0]} mentioned in the text are:")
    else:
        names = " and ".join(asked)
        question = (f"What is the special magic number for {names} mentioned in the text?\n"
                    f"Answer: The special magic number for {names} mentioned in the text is:")
    return (lambda units: intro + _insert(units, needles) + "\n\n" + question), answers, depths[0]


def _vt(rng: random.Random) -> tuple[Callable[[list[str]], str], tuple[str, ...], float]:
    names = [w.upper() for w in _words(rng, NUM_NEEDLES + 1, 2)]
    value = str(rng.randrange(10_000, 100_000))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = sorted(rng.random() for _ in chain)  # in order: each assignment reads an earlier one
    question = (f"Find every variable that is assigned the value {value} in the text above, directly or "
                f"through other variables.\nAnswer: The variables assigned the value {value} are:")
    intro = "Memorize the variable assignments in the following text and track their values.\n\n"
    return (lambda units: intro + _insert(units, list(zip(depths, chain))) + "\n\n" + question), tuple(names), depths[0]


def _cwe(rng: random.Random) -> tuple[Callable[[int], str], Callable[[int], tuple[str, ...]]]:
    """Five words appear 4 times each, every other word once or twice."""
    common = _words(rng, 5)
    pool = _words(rng, 1 << 15)
    pool = [w for w in pool if w not in common]
    order_seed = rng.random()

    def words(n: int) -> list[str]:
        listed = [w for w in common for _ in range(4)] + [w for i, w in enumerate(pool[:n]) for _ in range(1 + i % 2)]
        random.Random(order_seed).shuffle(listed)
        return listed

    def build(n: int) -> str:
        listed = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(words(n)))
        return (f"Below is a numbered list of words. Some of them appear several times.\n{listed}\n\n"
                "Question: what are the 5 most common words in the list above?\n"
                "Answer: The 5 most common words in the list are:")

    return build, lambda n: tuple(common)


def _fwe(rng: random.Random) -> tuple[Callable[[int], str], Callable[[int], tuple[str, ...]]]:
    """Coded words from a Zipf law (weight 1/rank^2): the top three are far ahead of the rest."""
    vocab = _words(rng, 400, 2)
    weights = [1.0 / (rank + 1) ** 2 for rank in range(len(vocab))]
    stream_seed = rng.random()

    def words(n: int) -> list[str]:
        return random.Random(stream_seed).choices(vocab, weights, k=n)

    def build(n: int) -> str:
        return ("Read the following coded text and count how often each coded word appears.\n"
                f"{' '.join(words(n))}\n\nQuestion: which three coded words appear most often in the text above?\n"
                "Answer: The three most frequent coded words are:")

    def top3(n: int) -> tuple[str, ...]:
        return tuple(w for w, _ in Counter(words(n)).most_common(3))

    return build, top3


def make_samples(task: str, tokenizer: TextTokenizer, length: int, num_samples: int, haystack: str = "filler",
                 depth: float | None = None, seed: int = 0) -> list[RulerSample]:
    """`num_samples` prompts of task `task`, each at most `length` tokens of `tokenizer` (the largest
    haystack or list that fits). `depth` fixes the (first) needle's depth; None draws it."""
    if task not in TASKS:
        raise ValueError(f"RULER task {task!r}: must be one of {', '.join(TASKS)}")
    try:
        return _make_samples(task, tokenizer, length, num_samples, haystack, depth, seed)
    except ValueError as err:
        raise ValueError(f"RULER task {task!r} ({haystack} haystack): {err}") from None


def _make_samples(task: str, tokenizer: TextTokenizer, length: int, num_samples: int, haystack: str,
                  depth: float | None, seed: int) -> list[RulerSample]:
    count_tokens = lambda text: len(tokenizer.encode(text))  # noqa: E731
    samples = []
    for i in range(num_samples):
        rng = random.Random(f"ruler-{task}-{haystack}-{length}-{depth}-{seed}-{i}")
        if task in HAYSTACK_TASKS:
            hay = Haystack(haystack, rng.randrange(1 << 30))
            render, answers, first_depth = _vt(rng) if task == "vt" else _niah(task, rng, depth)
            _, prompt, _ = grow_to_length(lambda n: render(hay.units(n)), count_tokens, length,
                                          hay.tokens_per_unit_guess, minimum=0)
            samples.append(RulerSample(task, prompt, answers, first_depth if task == "niah_single" else None))
        else:
            build, answers_at = _cwe(rng) if task == "cwe" else _fwe(rng)
            n, prompt, _ = grow_to_length(build, count_tokens, length, 5.0, minimum=0 if task == "cwe" else 1)
            samples.append(RulerSample(task, prompt, answers_at(n)))
    return samples


def string_match_all(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """RULER's score: per sample, the share of its answer strings the prediction contains (case-blind), averaged."""
    if not predictions:
        return 0.0
    per_sample = [sum(a.lower() in p.lower() for a in refs) / len(refs) for p, refs in zip(predictions, answers, strict=True)]
    return sum(per_sample) / len(per_sample)
