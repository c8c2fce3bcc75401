"""Context parallelism for forge_models: each CP rank holds 1/cp of every row's tokens; the mixers
see whole rows for 1/cp of their heads. Applied from outside the single-device model.

Legend: B batch, L row length, Ls = L / cp the shard length, D d_model.

Why head-parallel (docs/architecture.md, "Context parallelism", has the comparison): the residual
stream, norms, MLPs, embedding, head and loss are per token, so they run on the rank's contiguous
shard of the sequence with full weights. A Mamba-2 or attention mixer is not per token; around
each one `apply_context_parallel` puts

    all-gather the mixer input over CP      (B, Ls, D) -> (B, L, D)      backward: reduce-scatter
    the mixer over whole rows, for heads/groups [cp_rank * H/cp, (cp_rank + 1) * H/cp) only
    reduce-scatter its output over CP       (B, L, D) partial sums -> (B, Ls, D)   backward: all-gather

so the causal conv, the SSD scan and attention see the whole row: they are exact, and document
resets are exact by construction even when a document crosses a shard edge (seq_idx and
position_ids are all-gathered too: RoPE sees global positions). No state is handed between
ranks, so there is nothing to get wrong at the edge.

The mixer weights stay whole on every CP rank (the mixer computes with a slice of them, a view, for
the length of its call): CP ranks hold identical weights, so their gradients are averaged with
the data-parallel ones over the replica group (dp x cp, DeepSpeed's data-parallel group: mpu.py),
and checkpoints do not depend on cp. Rank r's gradient of a mixer weight is nonzero only on its
slice; the replica average assembles the whole. The split of each weight is the tensor-parallel
table (forge_models.tp_plan.MIXER_SPLITS): a mixer under TP x CP is split tp x cp ways, the TP
slice in place, the CP slice of it at run time, and each mixer's size attributes are shrunk by cp
as TP shrinks them by tp. cp = 1 installs nothing.

The loader gives CP peers the same rows (dp_rank = rank // (tp * cp)); `shard_batch` cuts each
rank's shard, with position_ids computed on the whole row first.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from forge_models import LanguageModel
from forge_models.attention import Attention
from forge_models.mamba2 import Mamba2Mixer
from forge_models.model import positions_from_seq_idx
from forge_models.tp_plan import MIXER_SPLITS, check_context_parallel
from torch import nn
from torch.distributed import ProcessGroup

from forge_platform.parallel.groups import ParallelGroups

Batch = dict[str, torch.Tensor]
# The mixer kinds CP runs head-parallel; check_context_parallel refuses the others (Mamba-1).
HEAD_PARALLEL_KINDS = {"mamba2": Mamba2Mixer, "attention": Attention}


# --- The batch ---------------------------------------------------------------------------------
def shard_batch(batch: Batch, cp_rank: int, cp: int) -> Batch:
    """This CP rank's contiguous shard [cp_rank * Ls, (cp_rank + 1) * Ls) of every (B, L) tensor.

    position_ids, when absent, are derived from the whole row first (positions inside each
    document, as LanguageModel would): derived by the model from a shard they would restart at its
    edge. A context-parallel model must always be given position_ids; this makes sure it is.
    """
    length = batch["input_ids"].shape[1]
    if length % cp:
        raise ValueError(f"sequence length {length} is not divisible by parallel.context_parallel = {cp}")
    if cp == 1:
        return batch
    batch = dict(batch)
    if "position_ids" not in batch:
        ids = batch["input_ids"]
        batch["position_ids"] = (positions_from_seq_idx(batch["seq_idx"]) if "seq_idx" in batch
                                 else torch.arange(length, device=ids.device).expand_as(ids))
    size = length // cp
    return {k: v.narrow(1, cp_rank * size, size) if v.dim() >= 2 and v.shape[1] == length else v
            for k, v in batch.items()}


# --- Collectives along the sequence (dim 1), explicit group ------------------------------------
def _gather_sequence_raw(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def _reduce_scatter_sequence_raw(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    shard = x.shape[1] // size
    if dist.get_backend(group) == "gloo":  # gloo has no reduce-scatter: all-reduce, keep own shard
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out.narrow(1, rank * shard, shard).contiguous()
    # NCCL: one reduce-scatter of the shards laid out shard-major along dim 0.
    chunks = x.unflatten(1, (size, shard)).movedim(1, 0).contiguous()
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter_tensor(out, chunks, group=group)
    return out


class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence forward; reduce-scatter of the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _gather_sequence_raw(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _reduce_scatter_sequence_raw(grad, ctx.group), None


class _ReduceScatterSequence(torch.autograd.Function):
    """Sum over CP ranks and keep this rank's shard forward; all-gather of the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _reduce_scatter_sequence_raw(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _gather_sequence_raw(grad, ctx.group), None


def gather_sequence(x_BLsD: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Concatenate the group's sequence shards (dim 1); the backward sums the gradients and keeps this
    rank's shard (a reduce-scatter). For a consumer that computes a partial result per rank."""
    return _GatherSequence.apply(x_BLsD, group)


def reduce_scatter_sequence(x_BLD: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Sum the group's partial (B, L, D) results and keep this rank's sequence shard; the backward
    all-gathers the gradient."""
    return _ReduceScatterSequence.apply(x_BLD, group)


def gather_row_ids(seq_idx_BLs: torch.Tensor | None, position_ids_BLs: torch.Tensor | None,
                   group: ProcessGroup) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The whole rows' seq_idx and position_ids from every rank's shard (no gradient): the mixer
    resets exactly where the documents of the whole row start, and RoPE sees global positions."""
    return tuple(None if ids is None else _gather_sequence_raw(ids, group)  # type: ignore[return-value]
                 for ids in (seq_idx_BLs, position_ids_BLs))


# --- The mixers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _sliced_parameters(mixer: nn.Module, splits: dict[str, int | None], cp_rank: int, cp: int) -> Iterator[None]:
    """For the duration of the block, each split parameter of `mixer` reads as this rank's slice of it
    (a differentiable view: the gradient lands in the whole parameter's slice)."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for name, dim in splits.items():
            if dim is None:
                continue
            path, _, attr = name.rpartition(".")
            owner = mixer.get_submodule(path) if path else mixer
            whole = owner._parameters.get(attr)
            if whole is None:  # e.g. conv biases when conv_bias=False
                continue
            size = whole.shape[dim] // cp
            owner._parameters[attr] = whole.narrow(dim, cp_rank * size, size)  # type: ignore[assignment]
            swapped.append((owner, attr, whole))
        yield
    finally:
        for owner, attr, whole in swapped:
            owner._parameters[attr] = whole


def _context_parallel_forward(mixer: nn.Module, forward: Any, splits: dict[str, int | None], cp_rank: int,
                              cp: int, group: ProcessGroup, u_BLsD: torch.Tensor,
                              seq_idx_BLs: torch.Tensor | None = None, position_ids_BLs: torch.Tensor | None = None,
                              state: object | None = None) -> torch.Tensor:
    if state is not None:
        raise RuntimeError("a context-parallel model does not decode with a cache; gather its weights "
                           "(parallel.gather_state_dict) into a single-device model to generate")
    u_BLD = gather_sequence(u_BLsD, group)
    with _sliced_parameters(mixer, splits, cp_rank, cp):
        out_BLD = forward(u_BLD, *gather_row_ids(seq_idx_BLs, position_ids_BLs, group), None)
    return reduce_scatter_sequence(out_BLD, group)


def _shrink_mixer(mixer: nn.Module, cp: int) -> None:
    """The size attributes the forward code reads describe this rank's heads (as TP does by tp)."""
    if isinstance(mixer, Mamba2Mixer):
        mixer.d_inner //= cp
        mixer.num_heads //= cp
        mixer.ngroups //= cp
        mixer.norm.num_groups //= cp  # whole norm groups per rank: local statistics, no all-reduce
    elif isinstance(mixer, Attention):
        mixer.num_heads //= cp
        mixer.num_kv_groups //= cp


def apply_context_parallel(model: LanguageModel, groups: ParallelGroups) -> int:
    """Make every Mamba-2 and attention mixer of `model` head-parallel over `groups.cp_group`;
    returns how many were wrapped (0 at cp 1: nothing installed).

    Call after tensor parallelism (the CP slice is taken of the TP slice) and before recompute
    (the recomputed forward runs the CP collectives again, in the same order on every rank).
    Feed the model `shard_batch`'s shards, position_ids included (the model would otherwise
    derive them from the shard).
    """
    cp = groups.cp
    if cp == 1:
        return 0
    if getattr(model, "_forge_context_parallel", None) is not None:
        raise RuntimeError("apply_context_parallel was already applied to this model")
    check_context_parallel(model.config, groups.tp, cp)
    wrapped = 0
    for block in model.layers:
        kind = block.spec.kind
        if kind not in HEAD_PARALLEL_KINDS:
            continue  # per-token layers (MLP) run on the shard as they are
        mixer = block.mixer
        _shrink_mixer(mixer, cp)
        mixer.forward = functools.partial(_context_parallel_forward, mixer, mixer.forward, MIXER_SPLITS[kind],
                                          groups.cp_rank, cp, groups.cp_group)
        wrapped += 1
    model._forge_context_parallel = cp
    return wrapped
