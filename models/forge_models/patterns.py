"""Layer patterns: one string describes a stack, parsed once into per-layer specs.

Symbols follow the paper's Table 11: `M` Mamba-2, `*` self-attention, `+` MLP; we add `m` for
Mamba-1. Every symbol is one residual layer (pre-norm + mixer + residual add), so a Transformer
block is the two layers `*+`.

`allocate_layers` is the paper's Appendix A, Algorithm 1: attention layers are placed so the
Mamba runs between them are as equal as possible (starting and ending with Mamba), then MLP
layers replace Mamba layers evenly, biased away from the start so a Mamba layer comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

# One symbol per layer kind, as in the paper's Table 11 (plus `m` for Mamba-1).
LAYER_SYMBOLS = {"M": "mamba2", "m": "mamba", "*": "attention", "+": "mlp"}

MAMBA2, MAMBA, ATTENTION, MLP = "M", "m", "*", "+"


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the stack: its position, pattern symbol and mixer kind."""

    index: int
    """Position in the stack, 0-based."""
    symbol: str
    """The pattern character."""
    kind: str
    """"mamba2", "mamba", "attention" or "mlp"."""


def parse_pattern(pattern: str) -> list[LayerSpec]:
    """Turn a pattern string into layer specs; raise ValueError on an empty or unknown symbol."""
    symbols = ", ".join(f"{s!r} ({kind})" for s, kind in LAYER_SYMBOLS.items())
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern = {pattern!r}: must be a non-empty string of the symbols {symbols}")
    bad = next((c for c in pattern if c not in LAYER_SYMBOLS), None)
    if bad is not None:
        raise ValueError(f"pattern = {pattern!r}: must be made of the symbols {symbols} "
                         f"({bad!r} at position {pattern.index(bad)} is not one)")
    return [LayerSpec(i, c, LAYER_SYMBOLS[c]) for i, c in enumerate(pattern)]


def count_layers(pattern: str) -> dict[str, int]:
    """Number of layers of each kind, e.g. {"mamba2": 24, "attention": 4, "mlp": 28, "mamba": 0}."""
    counts = {kind: 0 for kind in LAYER_SYMBOLS.values()}
    for spec in parse_pattern(pattern):
        counts[spec.kind] += 1
    return counts


def allocate_layers(total: int, attention_ratio: float, mlp_ratio: float) -> str:
    """Algorithm 1 of the paper: a hybrid pattern of `total` layers with the target ratios.

    Python's `round` (ties to even) is what the algorithm's reference implementation uses;
    the counts of every Table 11 row depend on it only through non-tie values.
    """
    if total <= 0:
        raise ValueError(f"total={total!r} is invalid: allowed a positive int")
    for name, ratio in (("attention_ratio", attention_ratio), ("mlp_ratio", mlp_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name}={ratio!r} is invalid: allowed 0.0 <= ratio <= 1.0")
    if attention_ratio + mlp_ratio > 1.0:
        raise ValueError(
            f"attention_ratio + mlp_ratio = {attention_ratio + mlp_ratio!r} is invalid: allowed <= 1.0"
        )

    layers = [MAMBA2] * total
    num_attention = round(total * attention_ratio)
    num_mamba = total - num_attention
    # Attention first: a running budget `x` of Mamba layers still owed to the current section.
    section_length = num_mamba / (num_attention + 1)
    x = section_length
    for i in range(total):
        if x < 0.5:
            layers[i] = ATTENTION
            x += section_length
        else:
            x -= 1

    num_mlp = round(total * mlp_ratio)
    if num_mlp > 0:
        # Then MLPs replace Mamba layers at an even stride; starting the budget at a full stride
        # is what keeps the first layer a Mamba layer and the last an MLP.
        num_mamba -= num_mlp
        mamba_per_mlp = num_mamba / num_mlp
        x = mamba_per_mlp
        for i in range(total):
            if layers[i] == MAMBA2:
                if x < 0.5:
                    layers[i] = MLP
                    x += mamba_per_mlp
                else:
                    x -= 1
    return "".join(layers)
