"""Choosing the next token from the last-position logits: greedy, or temperature / top-k / top-p sampling.

Legend: B batch, V vocabulary.

The settings are validated when they are made (a bad value is a ValueError naming it), so an
engine never starts a prefill it cannot finish. Sampling draws from a seeded generator on the
logits' device: the same seed, prompts and settings give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. temperature 0 is greedy (argmax); the other fields then do nothing."""

    temperature: float = 0.0
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int | None = None
    """Sample only among the k largest logits (None: all of them)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p (1.0: all)."""
    seed: int | None = None
    """Seed of the sampling generator; None draws from the device's default generator."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:  # also refuses nan
            raise ValueError(f"temperature={self.temperature!r} is invalid: must be >= 0 (0 is greedy)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r} is invalid: must be None or an int >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} is invalid: must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        """Whether this is plain argmax decoding."""
        return self.temperature == 0.0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A generator seeded with `seed` on `device`, or None for the default generator."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def filter_logits(logits_BV: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf (fp32)."""
    logits = logits_BV.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next(logits_BV: torch.Tensor, sampling: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from the last-position logits."""
    if sampling.greedy:
        return logits_BV.argmax(dim=-1)
    logits = filter_logits(logits_BV.float() / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
