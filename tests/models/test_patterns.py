"""Algorithm 1 (paper Appendix A) against Table 11, and the pattern parser's errors.

Table 11's text extraction is garbled (rows lost characters), so each row is checked by its
layer counts and ends; row 4 survived intact and is compared character for character, and the
56-layer row is also checked against Table 6's description (24 M, 4 *, 28 +, Mamba first).
"""

from __future__ import annotations

import pytest

from forge_models import allocate_layers, count_layers, parse_pattern

# (total, attention ratio, mlp ratio) -> (mamba2, attention, mlp) counts per Algorithm 1's rounding.
TABLE_11 = [
    ((24, 0.00, 0.00), (24, 0, 0)),
    ((24, 0.08, 0.00), (22, 2, 0)),
    ((24, 0.17, 0.00), (20, 4, 0)),
    ((24, 0.08, 0.30), (15, 2, 7)),
    ((24, 0.08, 0.50), (10, 2, 12)),
    ((24, 0.50, 0.50), (0, 12, 12)),
    ((48, 0.08, 0.50), (20, 4, 24)),
    ((56, 0.08, 0.50), (24, 4, 28)),
]


@pytest.mark.parametrize(("args", "counts"), TABLE_11)
def test_table_11_counts_and_ends(args: tuple[int, float, float], counts: tuple[int, int, int]) -> None:
    pattern = allocate_layers(*args)
    got = count_layers(pattern)
    assert len(pattern) == args[0]
    assert (got["mamba2"], got["attention"], got["mlp"]) == counts
    if got["mamba2"]:
        assert pattern[0] == "M"  # a Mamba layer comes first
    if got["mlp"]:
        assert pattern[-1] == "+"  # and an MLP layer last
    elif got["mamba2"]:
        assert pattern[-1] == "M"


def test_table_11_intact_rows() -> None:
    assert allocate_layers(24, 0.08, 0.30) == "MM+MM+M*M+MMM+MM*+MM+MM+"
    assert allocate_layers(24, 0.17, 0.0) == "MMMM*MMMM*MMMM*MMMM*MMMM"  # equal Mamba runs


def test_hybrid_8b_pattern() -> None:
    pattern = allocate_layers(56, 0.08, 0.5)
    assert pattern == "M+M+M++M+M*+M+M+M+M++M*+M+M+M+M+M*++M+M+M+M+M*+M++M+M+M+"
    assert pattern.startswith("M+M+M++") and pattern.endswith("M+M+M+")  # Table 6's legible ends


def test_attention_runs_are_balanced() -> None:
    runs = [len(r) for r in allocate_layers(56, 0.08, 0.0).split("*")]
    assert max(runs) - min(runs) <= 1


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 0.1, 0.1), "total"), ((24, -0.1, 0.0), "attention_ratio"), ((24, 0.6, 0.6), "attention_ratio \\+ mlp_ratio")],
)
def test_allocate_rejects_bad_arguments(args: tuple[int, float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        allocate_layers(*args)


def test_parse_pattern_specs() -> None:
    specs = parse_pattern("Mm*+")
    assert [(s.index, s.kind) for s in specs] == [(0, "mamba2"), (1, "mamba"), (2, "attention"), (3, "mlp")]


@pytest.mark.parametrize("bad", ["", "M+X", "M M"])
def test_parse_pattern_rejects_unknown_symbols(bad: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(bad)
