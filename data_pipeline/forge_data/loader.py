"""Feeding training: packed shards -> (B, L) torch batches per data-parallel rank, exactly resumable.

The sample stream. Global sample i (i = 0, 1, 2, ...) is row `perm_e(i mod N)` of epoch
e = i // N, where N is the number of rows and perm_e a permutation fixed by (shuffle_seed, e):
shards in a shuffled order, grouped into windows of `shuffle_window` shards, rows shuffled across
each whole window (at most a window of shards in memory). Shuffling inside single shards was not
enough: one long document packs into consecutive rows of one shard, and a model trained on a
shard at a time learned that shard and nothing else (the demo's loss fell to 1.2 on one shard and
was 6.8 on the next).
Data-parallel rank r of D takes global samples r, r + D, r + 2D, ... so

- tensor-parallel ranks of one group pass the same dp_rank and get the same rows;
- different dp ranks get disjoint rows; together they see every row once per epoch;
- the only state is `samples_consumed` (global samples, a multiple of D): the platform stores
  it in the checkpoint and resumes with `start_sample=` — nothing is repeated or skipped, and
  resuming with a different D works as long as the offset is divisible by it.

Nothing reaches training unchecked. At construction every shard must exist with the size the
manifest recorded (a stat each: a missing or truncated shard fails before step 1); when a shard is
opened its sha256 is checked against the manifest, and every token id and label against the
manifest's vocabulary ([0, vocab_size), labels also IGNORE_INDEX). Each failure is one line naming
the shard and the manifest (`CorruptShardError`, `TokenIdRangeError`): under tensor parallelism
an id past the vocabulary would otherwise embed to zeros and its target fall in no rank's slice,
silently. Manifests older than version 4 carry no checksums: they load, with a warning, unverified.

Legend: B micro batch size, L sequence length, N rows per epoch, D data-parallel size.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from typing import Any, Iterator, Optional

import numpy as np
import torch

from forge_data import storage
from forge_data.manifest import MANIFEST_FILE, Manifest
from forge_data.packing import IGNORE_INDEX
from forge_data.shards import COLUMNS, CorruptShardError, read_shard


def without_document_resets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` as plain packing presents it: each row one stream (seq_idx all 0, positions 0..L-1),
    so SSM and conv state, attention and positions run on across document boundaries.

    Labels are left as they are (cross-document labels stay masked when the packer masked them):
    the same tokens are predicted with and without resets, so the two losses compare. This is
    what the paper's context extension did (Section 4.4) and what `train.document_resets = false`
    trains on; the reproduction study (jobs/specs/reproduce_*.toml) measures what it changes.
    """
    rows, length = batch["input_ids"].shape
    out = dict(batch)
    out["seq_idx"] = torch.zeros_like(batch["seq_idx"])
    out["position_ids"] = torch.arange(length, dtype=batch["position_ids"].dtype).expand(rows, length).clone()
    return out


class TokenIdRangeError(ValueError):
    """A shard holds a token id (or label) outside the manifest's vocabulary."""


class PackedShardLoader:
    """Iterable over {input_ids, labels, position_ids (int64), seq_idx (int32)} of shape (B, L).

    Infinite: epochs wrap deterministically. Use `samples_consumed` / `state_dict()` to checkpoint.
    """

    def __init__(self, manifest_path: str, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 start_sample: int = 0, shuffle_seed: int = 0, shuffle: bool = True,
                 return_row_index: bool = False, shuffle_window: int = 8) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size = {micro_batch_size}: must be >= 1")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank = {dp_rank}: must be in [0, dp_size = {dp_size})")
        if start_sample < 0 or start_sample % dp_size:
            raise ValueError(f"start_sample = {start_sample}: must be >= 0 and a multiple of dp_size = {dp_size}")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window = {shuffle_window}: must be >= 1 (shards mixed together)")
        self.shuffle_window = shuffle_window
        self.manifest = Manifest.load(manifest_path)
        self.root = self.manifest.root
        self.manifest_path = storage.join(self.root, MANIFEST_FILE)
        vocab_size = self.manifest.tokenizer.get("vocab_size")
        self.vocab_size: Optional[int] = int(vocab_size) if vocab_size else None
        self._check_shard_files()
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
        self._epoch_cache: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}
        self._window_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._shard_cache: dict[int, dict[str, np.ndarray]] = {}

    # -- the permutation -------------------------------------------------------------------
    def _epoch_layout(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """(the shard windows in order, cumulative rows at each window start) for one epoch."""
        if epoch not in self._epoch_cache:
            num_shards = len(self.shard_rows)
            order = (np.random.default_rng([self.shuffle_seed, epoch]).permutation(num_shards)
                     if self.shuffle else np.arange(num_shards))
            windows = [order[i : i + self.shuffle_window] for i in range(0, num_shards, self.shuffle_window)]
            sizes = [int(self.shard_rows[w].sum()) for w in windows]
            self._epoch_cache = {epoch: (windows, np.concatenate([[0], np.cumsum(sizes)]))}
        return self._epoch_cache[epoch]

    def _window_rows(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of every position of one window, in the epoch's order."""
        key = (epoch, window)
        if key not in self._window_cache:
            shards = self._epoch_layout(epoch)[0][window]
            counts = self.shard_rows[shards]
            shard_of = np.repeat(shards, counts)
            row_of = np.concatenate([np.arange(n) for n in counts])
            if self.shuffle:
                perm = np.random.default_rng([self.shuffle_seed, epoch, window]).permutation(len(shard_of))
                shard_of, row_of = shard_of[perm], row_of[perm]
            if len(self._window_cache) > 2:  # the stream walks windows in order: a few suffice
                self._window_cache.clear()
            self._window_cache[key] = (shard_of, row_of)
        return self._window_cache[key]

    def global_rows(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map global sample indices to (shard, row inside shard)."""
        shards = np.empty(len(samples), dtype=np.int64)
        rows = np.empty(len(samples), dtype=np.int64)
        for k, i in enumerate(samples.tolist()):
            epoch, pos = divmod(i, self.num_rows)
            _, cum = self._epoch_layout(epoch)
            window = int(np.searchsorted(cum, pos, side="right")) - 1
            shard_of, row_of = self._window_rows(epoch, window)
            shards[k], rows[k] = shard_of[pos - cum[window]], row_of[pos - cum[window]]
        return shards, rows

    # -- checking --------------------------------------------------------------------------
    def _shard_name(self, shard: int) -> str:
        return f"{self.manifest.shards[shard].path} of {self.manifest_path}"

    def _check_shard_files(self) -> None:
        """Every shard is there with its recorded size (cheap: one stat per shard, no reading)."""
        unverified = 0
        # On an object store one listing gives every size (a request per shard would not scale).
        listed = None
        if storage.is_uri(self.root):
            listed = {}
            for folder in sorted({posixpath.dirname(info.path) for info in self.manifest.shards}):
                listed.update({posixpath.join(folder, name): size
                               for name, size in storage.file_sizes(storage.join(self.root, folder)).items()})
        for k, info in enumerate(self.manifest.shards):
            path = storage.join(self.root, info.path)
            try:
                size = os.stat(path).st_size if listed is None else listed[info.path]
            except (FileNotFoundError, KeyError):
                raise CorruptShardError(f"shard {self._shard_name(k)}: missing (the manifest lists it; "
                                        "pack the data again)") from None
            if info.num_bytes is not None and size != info.num_bytes:
                raise CorruptShardError(f"shard {self._shard_name(k)}: {size} bytes, the manifest recorded "
                                        f"{info.num_bytes} (truncated or overwritten; pack the data again)")
            unverified += info.sha256 is None
        if unverified:
            warnings.warn(f"{self.manifest_path}: {unverified} of {len(self.manifest.shards)} shards have no checksum "
                          f"(manifest version {self.manifest.version} < 4): they are read unverified; pack the data "
                          "again to get checksums", stacklevel=3)

    def _check_token_ids(self, shard: int, data: dict[str, np.ndarray]) -> None:
        """Every input id in [0, vocab_size), every label too or IGNORE_INDEX: else one line naming shard, row and id."""
        if self.vocab_size is None:
            return
        for column in ("input_ids", "labels"):
            ids = data[column]
            bad = (ids < 0) | (ids >= self.vocab_size)
            if column == "labels":
                bad &= ids != IGNORE_INDEX
            if bad.any():
                row, col = np.unravel_index(int(np.argmax(bad)), ids.shape)
                raise TokenIdRangeError(
                    f"shard {self._shard_name(shard)}: row {row} position {col} has {column} {int(ids[row, col])} "
                    f"outside the vocabulary [0, {self.vocab_size}) ({int(bad.sum())} such values in the shard)")

    # -- reading ---------------------------------------------------------------------------
    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._shard_cache:
            if len(self._shard_cache) >= self.shuffle_window + 1:  # a window, plus the next at a boundary
                self._shard_cache.pop(next(iter(self._shard_cache)))
            info = self.manifest.shards[shard]
            data = read_shard(storage.join(self.root, info.path), num_bytes=info.num_bytes, sha256=info.sha256,
                              name=self._shard_name(shard))
            self._check_token_ids(shard, data)
            self._shard_cache[shard] = data
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
