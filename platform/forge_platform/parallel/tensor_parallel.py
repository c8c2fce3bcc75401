"""Apply Megatron-style tensor parallelism to a single-device forge_models LanguageModel, from outside.

Legend: B batch, L length, D d_model, V vocabulary, Vl = V / tp.

Nothing in forge_models changes. `parallelize_model`:
1. slices every split parameter in place (the table in forge_models/tp_plan.py), tagging it for the gradient
   norm (`tensor_model_parallel`, `partition_dim`, read by DeepSpeed and global_grad_norm) and
   keeping forge_models' own tags (`_no_weight_decay`, `_keep_fp32`);
2. shrinks the size attributes the mixers read at run time (Mamba-2: d_inner, num_heads,
   ngroups, norm.num_groups; attention: num_heads, num_kv_groups), so the unchanged forward code
   computes this rank's heads only, on the reference and the CUDA-kernel paths alike;
3. wraps every mixer in the two communication operators with forward hooks: copy-to-TP on its
   input, reduce-from-TP on its output. A Mamba-2, attention or MLP layer is column-parallel in,
   row-parallel out, so each costs exactly one all-reduce forward and one backward;
4. makes the embedding vocab-parallel (masked lookup + all-reduce) and the LM head column-parallel
   over the vocabulary (copy-to-TP after the final norm). The model then returns local logits
   (B, L, Vl) for vocabulary ids [tp_rank * Vl, (tp_rank + 1) * Vl): compute the loss with
   `build_loss_fn(groups)` (vocab-parallel cross-entropy), never gather them for training.

Hooks rather than wrapper modules keep parameter names, hence state_dict keys, identical to the
single-device model's (the same mechanism torch.distributed.tensor.parallel uses).

Sequence parallelism (`sequence_parallel=True`, Megatron's): outside the mixers the residual
stream, the norms and the residual adds run on 1/tp of the sequence (shard r of every row), so
each TP rank keeps 1/tp of every block input. The collectives change, not their number: a
mixer's copy-to-TP becomes an all-gather along the sequence (backward: reduce-scatter) and its
reduce-from-TP a reduce-scatter (backward: all-gather); the embedding's all-reduce becomes a
reduce-scatter and the head's copy an all-gather, so the logits and the loss cover every token
of the rows on every TP rank. The replicated norm weights now see 1/tp of the tokens each, so
their gradients are summed over the TP group by a hook (Megatron's all-reduce of "sequence-parallel"
parameters). The sequence length must divide by tp.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from forge_models import LanguageModel
from forge_models.attention import Attention
from forge_models.mamba2 import Mamba2Mixer
from forge_models.tp_plan import check_tensor_parallel, partition_dims
from torch import nn
from torch.distributed import ProcessGroup

from forge_platform.parallel.comm import copy_to_tp_region, reduce_from_tp_region
from forge_platform.parallel.context_parallel import gather_sequence, reduce_scatter_sequence
from forge_platform.parallel.groups import ParallelGroups
from forge_platform.parallel.sharding import shard_tensor

# Tags forge_models sets on parameters (forge_models/params.py); a re-wrapped slice must keep them.
PARAMETER_TAGS = ("_no_weight_decay", "_keep_fp32")


class VocabParallelEmbedding(nn.Module):
    """Embedding rows [vocab_start, vocab_start + Vl) on this rank; ids elsewhere look up zeros,
    and the all-reduce sums in the one rank that owns each id."""

    def __init__(self, weight: nn.Parameter, vocab_start: int, group: ProcessGroup,
                 sequence_parallel: bool = False) -> None:
        super().__init__()
        self.weight = weight  # same attribute name as nn.Embedding: state_dict keys do not change
        self.vocab_start = vocab_start
        self.num_embeddings, self.embedding_dim = weight.shape
        self.group = group
        self.sequence_parallel = sequence_parallel

    def forward(self, input_ids_BL: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) embeddings, replicated on every TP rank (sequence parallel: this
        rank's (B, L/tp, D) shard of them)."""
        local_ids = input_ids_BL - self.vocab_start
        outside = (local_ids < 0) | (local_ids >= self.num_embeddings)
        x_BLD = F.embedding(local_ids.masked_fill(outside, 0), self.weight)
        x_BLD = x_BLD.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_sequence(x_BLD, self.group)
        return reduce_from_tp_region(x_BLD, self.group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, vocab_start={self.vocab_start}"


def _copy_input_hook(group: ProcessGroup, sequence_parallel: bool = False):  # noqa: ANN202 - a forward pre-hook
    enter = gather_sequence if sequence_parallel else copy_to_tp_region

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args:
            raise TypeError(f"{type(module).__name__} under TP must get its input positionally")
        return (enter(args[0], group), *args[1:])

    return hook


def _reduce_output_hook(group: ProcessGroup, sequence_parallel: bool = False):  # noqa: ANN202 - a forward hook
    leave = reduce_scatter_sequence if sequence_parallel else reduce_from_tp_region

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return leave(output, group)

    return hook


def _copy_output_hook(group: ProcessGroup, sequence_parallel: bool = False):  # noqa: ANN202 - a forward hook
    enter = gather_sequence if sequence_parallel else copy_to_tp_region

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return enter(output, group)

    return hook


def _sum_grad_over_tp_hook(group: ProcessGroup):  # noqa: ANN202 - a tensor hook
    def hook(grad: torch.Tensor) -> torch.Tensor:
        # Out of place: autograd may still hold `grad` elsewhere.
        summed = grad.clone()
        torch.distributed.all_reduce(summed, group=group)
        return summed

    return hook


def _slice_parameters(model: nn.Module, dims: dict[str, int | None], tp_rank: int, tp: int) -> None:
    """Replace each split parameter by its slice; tag every parameter for norm computations."""
    for name, dim in dims.items():
        module_path, _, attr = name.rpartition(".")
        module = model.get_submodule(module_path)
        old = getattr(module, attr)
        if dim is None:
            new = old
        else:
            new = nn.Parameter(shard_tensor(old.detach(), dim, tp_rank, tp), requires_grad=old.requires_grad)
            for tag in PARAMETER_TAGS:
                if hasattr(old, tag):
                    setattr(new, tag, getattr(old, tag))
            new.partition_dim = dim  # type: ignore[attr-defined]
            setattr(module, attr, new)
        # deepspeed.runtime.utils.is_model_parallel_parameter reads this attribute.
        new.tensor_model_parallel = dim is not None  # type: ignore[attr-defined]


def _shrink_sizes(model: LanguageModel, tp: int) -> None:
    """Make each module's size attributes describe its local slice."""
    for module in model.modules():
        if isinstance(module, Mamba2Mixer):
            module.d_inner //= tp
            module.num_heads //= tp
            module.ngroups //= tp
            module.norm.num_groups //= tp  # whole norm groups per rank: local statistics
        elif isinstance(module, Attention):
            module.num_heads //= tp
            module.num_kv_groups //= tp
        elif isinstance(module, nn.Linear):  # keep repr and in/out_features honest
            module.out_features, module.in_features = module.weight.shape


def parallelize_model(model: LanguageModel, groups: ParallelGroups, *, strict: bool = False,
                      sequence_parallel: bool = False) -> LanguageModel:
    """Split `model` in place over `groups.tp_group` and return it (TP = 1: returned unchanged but tagged).

    Call after the full weights are in the model (build, load, then parallelize) and before
    deepspeed.initialize. Every TP rank must start from identical full weights (same seed or
    same checkpoint). strict=True turns the paper's Mamba-2 group-size rule into an error.
    sequence_parallel=True shards the residual stream along the sequence too (module docstring).
    """
    if getattr(model, "_forge_tensor_parallel", None) is not None:
        raise RuntimeError("parallelize_model was already applied to this model")
    cfg = model.config
    tp, tp_rank, group = groups.tp, groups.tp_rank, groups.tp_group
    check_tensor_parallel(cfg, tp, strict)
    dims = partition_dims(cfg, [name for name, _ in model.named_parameters()])
    if tp == 1:
        _slice_parameters(model, {name: None for name in dims}, 0, 1)
        model._forge_tensor_parallel = 1
        return model

    _slice_parameters(model, dims, tp_rank, tp)
    _shrink_sizes(model, tp)
    sp = sequence_parallel
    for block in model.layers:
        block.mixer.register_forward_pre_hook(_copy_input_hook(group, sp))
        block.mixer.register_forward_hook(_reduce_output_hook(group, sp))
    model.embedding = VocabParallelEmbedding(model.embedding.weight, tp_rank * (cfg.vocab_size // tp), group, sp)
    # The head (lm_head, or the tied embedding) is column-parallel over the vocabulary; its input is
    # the final norm's output, whose gradient must be summed over the vocabulary slices.
    model.final_norm.register_forward_hook(_copy_output_hook(group, sp))
    if sp:  # replicated weights (the norms) saw this rank's tokens only: sum their gradients over TP
        for param in model.parameters():
            if not param.tensor_model_parallel and param.requires_grad:
                param.register_hook(_sum_grad_over_tp_hook(group))
    model._forge_tensor_parallel = tp
    model._forge_sequence_parallel = sp
    return model
