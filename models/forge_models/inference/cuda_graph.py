"""The decode step captured once per batch-size bucket with torch.cuda.CUDAGraph, then replayed.

A decode step of a 2B model is several hundred small kernels; launched from Python they cost far
more than the ~1 ms the step's memory traffic needs (issue #15: ~40x). Captured in a graph, one
replay launches them all. The program (decode_step.py) reads its inputs from static buffers
(tokens here, lengths and states in DecodeBuffers) and writes its logits to a tensor the graph
owns, so a replay needs no Python-side shape or address change.

A batch of n rows runs the graph of the smallest bucket >= n; rows n..bucket-1 are padding that
decodes token 0 from an empty state (harmless: every row has its own state and length).
Capturing runs the step twice first (warm-up on a side stream, as CUDA graphs require), which
writes into the buffers: capture before a prefill fills them, never between decode steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFn = Callable[[torch.Tensor], torch.Tensor]


class GraphedDecodeStep:
    """step(rows) replays the captured graph of `rows` rows (a bucket); capture(rows) builds it."""

    def __init__(self, program: StepFn, lengths: torch.Tensor, max_rows: int, device: torch.device,
                 warmup_steps: int = 2) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {device}")
        self.program, self.lengths, self.warmup_steps = program, lengths, warmup_steps
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def captured(self, rows: int) -> bool:
        """Whether the graph of `rows` rows exists."""
        return rows in self.graphs

    @torch.no_grad()
    def capture(self, rows: int) -> None:
        """Warm up and capture the step over the first `rows` rows (their state is clobbered)."""
        tokens = self.tokens[:rows]
        tokens.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.lengths[:rows] = 0
                self.program(tokens)
        torch.cuda.current_stream().wait_stream(side)
        self.lengths[:rows] = 0
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.program(tokens)
        self.graphs[rows], self.logits[rows] = graph, logits
        self.lengths[:rows] = 0

    def step(self, tokens_b: torch.Tensor) -> torch.Tensor:
        """Replay the graph of len(tokens_b) rows on these tokens; the logits belong to the graph
        (read them before the next replay)."""
        rows = tokens_b.shape[0]
        self.tokens[:rows].copy_(tokens_b)
        self.graphs[rows].replay()
        return self.logits[rows]
