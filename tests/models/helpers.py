"""Helpers shared by the forge_models tests (imported as tests.models.helpers)."""

from __future__ import annotations

import torch

FAMILIES = ("hybrid-debug", "mamba2-debug", "mamba-debug", "transformer-debug")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are zero)."""
    a, b = a.detach().float(), b.detach().float()
    denom = b.norm()
    diff = (a - b).norm()
    return float(diff / denom) if denom > 0 else float(diff)


def packed_seq_idx(doc_lengths: list[int]) -> torch.Tensor:
    """(1, sum(doc_lengths)) int32 seq_idx for one packed row."""
    return torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(doc_lengths)])[None]
