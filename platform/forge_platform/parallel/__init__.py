"""Tensor x data parallelism for forge_models, applied from outside the single-device model.

Order on every rank (each step commented in train_loop):

    dims = ParallelDims.from_world(world_size, tp)         # validated: tp x dp == world
    groups = build_process_groups(dims)                     # collective: every rank, same order
    model = build_model(cfg)                                 # same seed on every rank
    load_weights(model, path)                                # optional: single-device weights
    model = parallelize_model(model, groups)                 # slices in place; hooks for comms
    optimizer = build_optimizer(model, ...)                  # AFTER parallelize: the slices
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      mpu=ModelParallelUnit(groups), ...)
    loss_fn = build_loss_fn(groups)                          # full CE at tp 1, vocab-parallel CE above
    loss = loss_fn(engine(input_ids, seq_idx=..., position_ids=...), labels)

The loader reads with dp_rank = groups.dp_rank and dp_size = groups.dp, so TP peers see the same
batch (`check_tp_batch` verifies it). Consolidated weights: `gather_state_dict` (collective).
"""

from forge_platform.parallel.batch import check_tp_batch, tp_broadcast_batch
from forge_platform.parallel.comm import copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region
from forge_platform.parallel.cross_entropy import build_loss_fn, vocab_parallel_cross_entropy, vocab_parallel_loss
from forge_platform.parallel.dims import ParallelDims, ParallelGroups, build_process_groups
from forge_platform.parallel.grad_norm import global_grad_norm, is_tensor_parallel_param
from forge_platform.parallel.mpu import ModelParallelUnit
from forge_platform.parallel.plan import check_tensor_parallel, partition_dims
from forge_platform.parallel.sharding import gather_state_dict, merge_state_dicts, shard_state_dict
from forge_platform.parallel.tensor_parallel import VocabParallelEmbedding, parallelize_model

__all__ = [
    "ModelParallelUnit",
    "ParallelDims",
    "ParallelGroups",
    "VocabParallelEmbedding",
    "build_loss_fn",
    "build_process_groups",
    "check_tensor_parallel",
    "check_tp_batch",
    "copy_to_tp_region",
    "gather_from_tp_region",
    "gather_state_dict",
    "global_grad_norm",
    "is_tensor_parallel_param",
    "merge_state_dicts",
    "parallelize_model",
    "partition_dims",
    "reduce_from_tp_region",
    "shard_state_dict",
    "tp_broadcast_batch",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_loss",
]
