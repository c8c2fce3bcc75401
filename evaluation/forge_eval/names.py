"""Made-up names for Phonebook: syllables combined in code, so no word list is downloaded.

A syllable is an onset (consonants) then a vowel group; a given name is two syllables and a family
name two syllables and an ending. Onsets are all consonants and vowel groups all vowels, so a name
splits back into its syllables one way only: distinct indices always give distinct names. The pool
(about 4e9 full names) is far larger than the ~25K entries a 256K-token book holds, so names are
unique within any book by sampling distinct indices.
"""

from __future__ import annotations

import random

ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "br", "ch", "dr", "gr", "kl", "pr", "sh", "st", "th", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou")
ENDINGS = ("", "n", "r", "s", "l", "x", "nd", "rt")
SYLLABLES = tuple(onset + vowel for onset in ONSETS for vowel in VOWELS)
NUM_GIVEN = len(SYLLABLES) ** 2
NUM_FAMILY = len(SYLLABLES) ** 2 * len(ENDINGS)


def name_pool_size() -> int:
    """How many distinct full names exist (given x family names)."""
    return NUM_GIVEN * NUM_FAMILY


def name_at(index: int) -> str:
    """The full name with this index in [0, name_pool_size()), e.g. 'Bazou Treanx'."""
    if not 0 <= index < name_pool_size():
        raise ValueError(f"name index {index} outside [0, {name_pool_size()})")
    given, family = divmod(index, NUM_FAMILY)
    n = len(SYLLABLES)
    family, ending = divmod(family, len(ENDINGS))
    first = SYLLABLES[given // n] + SYLLABLES[given % n]
    last = SYLLABLES[family // n] + SYLLABLES[family % n] + ENDINGS[ending]
    return f"{first.capitalize()} {last.capitalize()}"


def sample_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct names drawn uniformly from the pool."""
    if count > name_pool_size():
        raise ValueError(f"cannot draw {count} distinct names from a pool of {name_pool_size()}")
    return [name_at(i) for i in rng.sample(range(name_pool_size()), count)]
