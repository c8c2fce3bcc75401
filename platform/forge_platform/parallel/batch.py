"""The TP batch contract: every rank of a tensor-parallel group computes on the same micro-batch.

TP ranks hold slices of one model replica, so they must see identical inputs; only data-parallel
ranks read different data. The loader contract that gives this for free is
`dp_rank = rank // tp, dp_size = world // tp` (ParallelGroups.dp_rank / .dp), so all TP peers
read the same sample. Two helpers for when that is not enough:

- `tp_broadcast_batch`: the first rank of the TP group reads, the others receive (use it with a
  loader that cannot be made deterministic, or to read once per replica);
- `check_tp_batch`: a cheap fingerprint comparison that fails loudly when peers disagree (run it
  on the first steps: a silent mismatch trains garbage with no error anywhere else).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from forge_platform.parallel.dims import ParallelGroups

Batch = dict[str, torch.Tensor]


def tp_broadcast_batch(batch: Batch | None, groups: ParallelGroups) -> Batch:
    """Rank 0 of the TP group sends its batch to its peers (their `batch` is ignored, may be None)."""
    if groups.tp == 1:
        assert batch is not None
        return batch
    is_src = groups.rank == groups.tp_src_rank
    if is_src and batch is None:
        raise ValueError("the first rank of a tensor-parallel group must pass a batch")
    # Shapes and dtypes first (a tiny pickled message), then the tensors themselves.
    meta = [[(k, tuple(v.shape), v.dtype, v.device) for k, v in batch.items()] if is_src else None]
    dist.broadcast_object_list(meta, src=groups.tp_src_rank, group=groups.tp_group)
    out = {}
    for key, shape, dtype, device in meta[0]:
        tensor = batch[key].contiguous() if is_src else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, src=groups.tp_src_rank, group=groups.tp_group)
        out[key] = tensor
    return out


def _fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Two position-sensitive sums: equal tensors give bit-equal fingerprints."""
    flat = tensor.detach().reshape(-1).double()
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    return torch.stack([flat.sum(), (flat * weights).sum(), torch.tensor(float(flat.numel()), dtype=torch.float64,
                                                                         device=flat.device)])


def check_tp_batch(batch: Batch, groups: ParallelGroups) -> None:
    """Raise RuntimeError naming the keys that differ between this rank and its TP peers."""
    if groups.tp == 1:
        return
    keys = sorted(batch)
    local = torch.stack([_fingerprint(batch[k]) for k in keys])
    gathered = [torch.empty_like(local) for _ in range(groups.tp)]
    dist.all_gather(gathered, local, group=groups.tp_group)
    differing = [k for i, k in enumerate(keys) if any(not torch.equal(g[i], gathered[0][i]) for g in gathered)]
    if differing:
        raise RuntimeError(
            f"tensor-parallel ranks {groups.tp_ranks} got different batches (keys {differing}); "
            "the loader must give every TP rank the same sample: dp_rank = rank // tp, dp_size = world // tp"
        )
