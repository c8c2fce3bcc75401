"""Tensor x context x data parallelism (and sequence parallelism inside TP) for forge_models,
applied from outside the single-device model.

`parallelize.parallelize_hybrid` is the one place that applies it (its docstring gives the order).
On every rank:

    dims = job.parallel.dims                                 # validated: tp x cp x dp == world
    groups = build_process_groups(dims)                      # collective: every rank, same order
    model = build_model(cfg); load_weights(model, path)      # same seed / same weights everywhere
    parallel = parallelize_hybrid(model, groups, stage, tokens_per_step=...)
    loss = parallel.loss(batch); parallel.engine.backward(loss); parallel.engine.step()

The loader reads with dp_rank = groups.dp_rank and dp_size = groups.dp, so TP and CP peers see the
same rows (`check_tp_batch` verifies it for TP); under CP each rank keeps its sequence shard
(`shard_batch`) and `apply_context_parallel` runs the mixers head-parallel over whole rows. Consolidated weights: `gather_state_dict` (collective).
What splits along which dimension is data, in `forge_models.tp_plan`.

(`parallelize` is not re-exported here: it builds DeepSpeed engines from job configs, and the job
config module imports `parallel.dims`, so importing it from this package would be circular.)
"""

from forge_platform.parallel.batch import check_tp_batch
from forge_platform.parallel.comm import copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region
from forge_platform.parallel.context_parallel import apply_context_parallel, shard_batch
from forge_platform.parallel.cross_entropy import build_loss_fn, vocab_parallel_cross_entropy, vocab_parallel_loss
from forge_platform.parallel.dims import ParallelDims
from forge_platform.parallel.grad_norm import global_grad_norm, is_tensor_parallel_param
from forge_platform.parallel.groups import ParallelGroups, build_process_groups
from forge_platform.parallel.mpu import ModelParallelUnit
from forge_platform.parallel.sharding import gather_state_dict, shard_tensor
from forge_platform.parallel.tensor_parallel import VocabParallelEmbedding, parallelize_model

__all__ = [
    "ModelParallelUnit",
    "ParallelDims",
    "ParallelGroups",
    "VocabParallelEmbedding",
    "apply_context_parallel",
    "build_loss_fn",
    "build_process_groups",
    "check_tp_batch",
    "copy_to_tp_region",
    "gather_from_tp_region",
    "gather_state_dict",
    "global_grad_norm",
    "is_tensor_parallel_param",
    "parallelize_model",
    "reduce_from_tp_region",
    "shard_batch",
    "shard_tensor",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_loss",
]
