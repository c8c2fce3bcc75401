"""Feeding training: packed shards -> (B, L) torch batches per data-parallel rank, exactly resumable.

The sample stream. Global sample i (i = 0, 1, 2, ...) is row `perm_e(i mod N)` of epoch
e = i // N, where N is the number of rows and perm_e a permutation fixed by (shuffle_seed, e):
shards in a shuffled order, rows shuffled inside each shard (one shard in memory at a time).
Data-parallel rank r of D takes global samples r, r + D, r + 2D, ... so

- tensor-parallel ranks of one group pass the same dp_rank and get the same rows;
- different dp ranks get disjoint rows; together they see every row once per epoch;
- the only state is `samples_consumed` (global samples, a multiple of D): the platform stores
  it in the checkpoint and resumes with `start_sample=` — nothing is repeated or skipped, and
  resuming with a different D works as long as the offset is divisible by it.

Legend: B micro batch size, L sequence length, N rows per epoch, D data-parallel size.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch

from forge_data.manifest import Manifest
from forge_data.shards import COLUMNS, read_shard


class PackedShardLoader:
    """Iterable over {input_ids, labels, position_ids (int64), seq_idx (int32)} of shape (B, L).

    Infinite: epochs wrap deterministically. Use `samples_consumed` / `state_dict()` to checkpoint.
    """

    def __init__(self, manifest_path: str, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 start_sample: int = 0, shuffle_seed: int = 0, shuffle: bool = True,
                 return_row_index: bool = False) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size = {micro_batch_size} must be >= 1")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank = {dp_rank} must be in [0, dp_size = {dp_size})")
        if start_sample < 0 or start_sample % dp_size:
            raise ValueError(f"start_sample = {start_sample} must be >= 0 and a multiple of dp_size = {dp_size}")
        self.manifest = Manifest.load(manifest_path)
        self.root = self.manifest.root
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.shuffle, self.shuffle_seed = shuffle, shuffle_seed
        self.return_row_index = return_row_index
        self.samples_consumed = start_sample
        self.shard_rows = np.array([s.num_rows for s in self.manifest.shards], dtype=np.int64)
        self.num_rows = int(self.shard_rows.sum())
        if self.num_rows == 0:
            raise ValueError(f"dataset {manifest_path!r} has no rows")
        self._shard_starts = np.concatenate([[0], np.cumsum(self.shard_rows)])  # in manifest order
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._row_perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self._shard_cache: dict[int, dict[str, np.ndarray]] = {}

    # -- the permutation -------------------------------------------------------------------
    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, cumulative rows in that order) for one epoch."""
        if epoch not in self._epoch_cache:
            num_shards = len(self.shard_rows)
            order = (np.random.default_rng([self.shuffle_seed, epoch]).permutation(num_shards)
                     if self.shuffle else np.arange(num_shards))
            self._epoch_cache = {epoch: (order, np.concatenate([[0], np.cumsum(self.shard_rows[order])]))}
        return self._epoch_cache[epoch]

    def _row_perm(self, epoch: int, shard: int) -> np.ndarray:
        key = (epoch, shard)
        if key not in self._row_perm_cache:
            n = int(self.shard_rows[shard])
            perm = (np.random.default_rng([self.shuffle_seed, epoch, shard]).permutation(n)
                    if self.shuffle else np.arange(n))
            if len(self._row_perm_cache) > 8:  # the stream walks shards in order: a few suffice
                self._row_perm_cache.clear()
            self._row_perm_cache[key] = perm
        return self._row_perm_cache[key]

    def global_rows(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map global sample indices to (shard, row inside shard)."""
        shards = np.empty(len(samples), dtype=np.int64)
        rows = np.empty(len(samples), dtype=np.int64)
        for k, i in enumerate(samples.tolist()):
            epoch, pos = divmod(i, self.num_rows)
            order, cum = self._epoch_layout(epoch)
            slot = int(np.searchsorted(cum, pos, side="right")) - 1
            shard = int(order[slot])
            shards[k] = shard
            rows[k] = self._row_perm(epoch, shard)[pos - cum[slot]]
        return shards, rows

    # -- reading ---------------------------------------------------------------------------
    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._shard_cache:
            if len(self._shard_cache) >= 2:  # current and next shard at a boundary
                self._shard_cache.pop(next(iter(self._shard_cache)))
            path = os.path.join(self.root, self.manifest.shards[shard].path)
            self._shard_cache[shard] = read_shard(path)
        return self._shard_cache[shard]

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro batch of this rank; advances `samples_consumed` by B x D."""
        b = self.micro_batch_size
        samples = self.samples_consumed + self.dp_rank + self.dp_size * np.arange(b, dtype=np.int64)
        shards, rows = self.global_rows(samples)
        out = {name: np.empty((b, self.manifest.seq_len), dtype=np.int32) for name in COLUMNS}
        for shard in np.unique(shards).tolist():
            sel = shards == shard
            data = self._shard(shard)
            for name in COLUMNS:
                out[name][sel] = data[name][rows[sel]]
        self.samples_consumed += b * self.dp_size
        batch = {name: torch.from_numpy(out[name]).long() for name in ("input_ids", "labels", "position_ids")}
        batch["seq_idx"] = torch.from_numpy(out["seq_idx"])
        if self.return_row_index:
            batch["row_index"] = torch.from_numpy(self._shard_starts[shards] + rows)
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    # -- checkpointing ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epoch of the next sample."""
        return self.samples_consumed // self.num_rows

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume exactly (the dataset hash guards against a swap)."""
        return {"samples_consumed": self.samples_consumed, "shuffle_seed": self.shuffle_seed,
                "dataset_sha256": self.manifest.sha256()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; refuses another dataset or shuffle seed."""
        if state["dataset_sha256"] != self.manifest.sha256() or state["shuffle_seed"] != self.shuffle_seed:
            raise ValueError("loader state belongs to another dataset or shuffle_seed")
        if state["samples_consumed"] % self.dp_size:
            raise ValueError(f"samples_consumed = {state['samples_consumed']} is not a multiple of dp_size = {self.dp_size}")
        self.samples_consumed = int(state["samples_consumed"])
