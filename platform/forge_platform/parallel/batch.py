"""The TP batch contract: every rank of a tensor-parallel group computes on the same micro-batch
(and every rank of a context-parallel group reads the same rows, then keeps its sequence shard).

TP ranks hold slices of one model replica, so they must see identical inputs; only data-parallel
ranks read different data. The loader contract that gives this for free is
`dp_rank = rank // tp, dp_size = world // tp` (ParallelGroups.dp_rank / .dp), so all TP peers
read the same sample. `check_tp_batch` is a cheap fingerprint comparison that fails loudly when
peers disagree; the trainer runs it on its first step, since a silent mismatch trains garbage with
no error anywhere else.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from forge_platform.parallel.groups import ParallelGroups

Batch = dict[str, torch.Tensor]


def _fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Two position-sensitive sums: equal tensors give bit-equal fingerprints."""
    flat = tensor.detach().reshape(-1).double()
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    return torch.stack([flat.sum(), (flat * weights).sum(), torch.tensor(float(flat.numel()), dtype=torch.float64,
                                                                         device=flat.device)])


def check_tp_batch(batch: Batch, groups: ParallelGroups) -> None:
    """Raise RuntimeError naming the keys that differ between this rank and its TP peers, or (before
    the rows are cut into sequence shards) its context-parallel peers, which must read the same rows."""
    keys = sorted(batch)
    local = torch.stack([_fingerprint(batch[k]) for k in keys])
    for kind, size, group, ranks in (("tensor", groups.tp, groups.tp_group, groups.tp_ranks),
                                     ("context", groups.cp, groups.cp_group, groups.cp_ranks)):
        if size == 1:
            continue
        gathered = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(gathered, local, group=group)
        differing = [k for i, k in enumerate(keys) if any(not torch.equal(g[i], gathered[0][i]) for g in gathered)]
        if differing:
            raise RuntimeError(
                f"{kind}-parallel ranks {ranks} got different batches (keys {differing}); the loader must give "
                "every TP and CP rank of a replica the same rows: dp_rank = rank // (tp x cp), dp_size = dp"
            )
