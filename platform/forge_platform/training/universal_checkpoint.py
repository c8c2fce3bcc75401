"""The optimizer's state by parameter name, independent of the parallel layout: how a run resumes
with other tensor- and data-parallel degrees (and another ZeRO partitioning) than its checkpoint's.

DeepSpeed's own shards (`state/`) are flat ZeRO partitions of each TP rank's parameters: they load
only into the layout that wrote them. Next to them every rank writes `universal/rank_NNNNN.pt`: for
each parameter NAME of the single-device model, the elements it holds of its TP slice, as
(offset in the flattened slice, fp32 master values, and each per-element optimizer state: AdamW's
`exp_avg` and `exp_avg_sq`). Rank 0's file also holds the scalar optimizer state (AdamW's `step`),
the schedule's state and the engine's counters. A resume with another layout puts each name's TP
slices back together (concatenated along the dimension forge_models' TP plan splits), slices it for
its own TP rank, and keeps the part this rank's ZeRO partition owns: through the fragment map
DeepSpeed gives each parameter under ZeRO-1/2 (`param._hp_mapping`: where the parameter's elements
lie in the flat fp32 partition), through its public local-partition API under ZeRO-3
(`safe_get_local_fp32_param`, `safe_set_local_optimizer_state`, ...), whole at stage 0.

Why written at save time, and not converted at resume time from DeepSpeed's shards:
- Writing is cheap in time: no communication at all (each rank writes what it already holds, a
  ZeRO partition under ZeRO-1/2/3, the whole slice on data-parallel rank 0 at stage 0), in
  parallel on every rank. It costs disk: the fp32 master and the two moments again, 12 bytes per
  parameter spread over the ranks (an 8B model: ~96 GB more per checkpoint, next to DeepSpeed's
  ~96 GB of optimizer shards); `checkpoint.keep_last` bounds how many are kept, and
  `checkpoint.reshardable = false` leaves it out (a resume must then keep the layout and ZeRO stage).
- Converting DeepSpeed's shards would read its flat-partition files, whose layout (padding,
  alignment, per-stage formats, stage 0 keeping a plain torch state_dict keyed by index) is
  private and changes between versions. DeepSpeed's universal checkpoint (`ds_to_universal`, then
  `checkpoint.load_universal`) is that conversion: an offline step that needs per-model TP slicing
  patterns, loads only into ZeRO-1/2/3 engines (a run with one data-parallel rank runs as stage 0),
  and is switched on at engine creation. The fragments here are read through the same fragment
  maps (`_hp_mapping` under ZeRO-1/2, the ZeRO-3 local partition) that DeepSpeed's own
  `safe_get_full_*` helpers and universal loader use; the helpers themselves all-reduce every
  full tensor over the data-parallel group, which a save does not need.

Resuming with the SAME layout still loads DeepSpeed's shards (bitwise, tested by the fault-tolerance
drills); this path is taken only when the layout differs. The precision is fp32 throughout (the
model's parameters are fp32 masters: bf16 is autocast only), so a resharded resume continues within
fp32 rounding of the run that was not interrupted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.utils import (
    safe_get_local_fp32_param,
    safe_get_local_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_optimizer_state,
)
from forge_models import ModelConfig
from forge_models.tp_plan import partition_dims

from forge_platform.parallel.mpu import ModelParallelUnit
from forge_platform.parallel.parallelize import ParallelModel
from forge_platform.parallel.sharding import shard_tensor
from forge_platform.training.checkpoint_files import IncompatibleCheckpointError, UNIVERSAL_DIR

MASTER = "fp32"
"""The key of the fp32 master weight among a fragment's tensors (the optimizer state's keys beside it)."""


def _zero_rank(parallel: ParallelModel) -> int:
    """This rank's place among the ranks DeepSpeed partitions the optimizer over (its data-parallel
    group: every rank holding the same TP slice, dp x cp)."""
    return dist.get_rank(ModelParallelUnit(parallel.groups).get_data_parallel_group())


def _base_optimizer(parallel: ParallelModel) -> torch.optim.Optimizer:
    """The torch AdamW itself: wrapped by the ZeRO optimizer at stages 1-3, the engine's at stage 0."""
    optimizer = parallel.engine.optimizer
    return optimizer.optimizer if parallel.zero_stage > 0 else optimizer


def _masters(parallel: ParallelModel, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The fp32 tensors the optimizer updates (with state or not yet). ZeRO-3 puts its flat fp32
    partitions into `param_groups` only during its step, so they are taken from its optimizer."""
    masters = [hp for group in optimizer.param_groups for hp in group["params"]]
    if parallel.zero_stage == 3:
        masters += list(parallel.engine.optimizer.fp32_partitioned_groups_flat)
    return list({id(hp): hp for hp in masters}.values())


def _state_layout(parallel: ParallelModel, optimizer: torch.optim.Optimizer) -> tuple[list[str], dict[str, float]]:
    """(per-element state keys, scalar state) of the optimizer: AdamW's (['exp_avg', 'exp_avg_sq'],
    {'step': n}). Every parameter's state has the same keys and step (DeepSpeed asserts it too)."""
    for hp in _masters(parallel, optimizer):
        state = optimizer.state.get(hp)
        if state:
            per_element = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.shape == hp.shape)
            scalars = {k: float(v) for k, v in state.items() if k not in per_element}
            return per_element, scalars
    return [], {}


def _fragment(parallel: ParallelModel, param: torch.nn.Parameter, base: torch.optim.Optimizer,
              keys: list[str]) -> dict[str, Any] | None:
    """The elements of `param`'s TP slice this rank's optimizer holds: {'start', MASTER, key...}, or None."""
    if parallel.zero_stage == 0:
        if _zero_rank(parallel) != 0:  # every data-parallel rank holds the same: one writes it
            return None
        state = base.state.get(param, {})
        return {"start": 0, MASTER: param.detach().flatten(), **{k: state[k].flatten() for k in keys}}
    if parallel.zero_stage == 3:
        start, count = _zero3_partition(parallel, param)
        if count <= 0:
            return None
        values = {k: safe_get_local_optimizer_state(param, k).narrow(0, 0, count) for k in keys}
        return {"start": start, MASTER: safe_get_local_fp32_param(param).narrow(0, 0, count), **values}
    mapping = param._hp_mapping  # ZeRO-1/2: the fragment of the flat fp32 partition this rank owns
    if mapping is None:
        return None
    # The state is read from the optimizer, not through the mapping's own links to it: DeepSpeed
    # links them once, after the first step, and a group without state then (seen for the
    # no-weight-decay group under TP) stays unlinked for good.
    state = base.state[_flat_partition(base, mapping)]
    hp = mapping.hp_fragment_address
    return {"start": mapping.lp_fragment_address.start, MASTER: mapping.hp_fragment,
            **{k: state[k].narrow(0, hp.start, hp.numel) for k in keys}}


def _zero3_partition(parallel: ParallelModel, param: torch.nn.Parameter) -> tuple[int, int]:
    """(offset, element count) of this rank's ZeRO-3 partition in the flattened TP slice: partitions
    have equal sizes, the last one padded past the end."""
    size = param.ds_tensor.ds_numel
    start = _zero_rank(parallel) * size
    return start, max(0, min(size, param.ds_numel - start))


def _flat_partition(base: torch.optim.Optimizer, mapping: Any) -> torch.Tensor:
    """The flat fp32 partition (the optimizer's parameter) a ZeRO-1/2 fragment lies in."""
    return base.param_groups[mapping.param_group_index]["params"][0]


def save_universal_state(folder: Path, parallel: ParallelModel) -> None:
    """Every rank writes its fragments to `folder/universal/rank_NNNNN.pt` (no communication)."""
    groups, engine = parallel.groups, parallel.engine
    base = _base_optimizer(parallel)
    keys, scalars = _state_layout(parallel, base)
    if engine.global_steps > 0 and not keys:  # a resume from it would silently restart Adam's moments
        raise RuntimeError(f"no optimizer state found in {type(base).__name__} after {engine.global_steps} steps "
                           f"(has DeepSpeed's ZeRO-{parallel.zero_stage} layout changed?): no universal state written")
    fragments, shapes = {}, {}
    for name, param in parallel.module.named_parameters():
        shapes[name] = tuple(param.ds_shape if parallel.zero_stage == 3 else param.shape)
        fragment = _fragment(parallel, param, base, keys)
        if fragment is not None:
            fragments[name] = {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in fragment.items()}
    payload: dict[str, Any] = {"tp": groups.tp, "tp_rank": groups.tp_rank, "shapes": shapes, "keys": keys,
                               "fragments": fragments}
    if groups.rank == 0:
        payload.update(scalars=scalars, schedule=engine.lr_scheduler.state_dict(),
                       counters={"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                                 "skipped_steps": engine.skipped_steps})
    out = Path(folder) / UNIVERSAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out / f"rank_{groups.rank:05d}.pt")


def _read_fragments(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    files = sorted((Path(folder) / UNIVERSAL_DIR).glob("rank_*.pt"))
    if not files:
        raise IncompatibleCheckpointError(f"{folder} has no layout-independent optimizer state ({UNIVERSAL_DIR}/)")
    parts = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    head = next((p for p in parts if "schedule" in p), None)
    tps = {p["tp"] for p in parts}
    if head is None or len(tps) != 1 or {p["tp_rank"] for p in parts} != set(range(next(iter(tps)))):
        raise IncompatibleCheckpointError(
            f"{folder / UNIVERSAL_DIR} is incomplete ({len(files)} files, tp degrees {sorted(tps)}, rank 0's "
            f"{'present' if head else 'missing'}): resume with the layout that wrote it or from another checkpoint")
    return parts, head


class _FullState:
    """One name at a time, the full single-device tensors of a checkpoint's universal state."""

    def __init__(self, parts: list[dict[str, Any]], cfg: ModelConfig) -> None:
        self.old_tp = parts[0]["tp"]
        self.shapes = {p["tp_rank"]: p["shapes"] for p in parts}
        self.by_name: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for part in parts:
            for name, fragment in part["fragments"].items():
                self.by_name[name][part["tp_rank"]].append(fragment)
        self.dims = partition_dims(cfg, list(self.shapes[0]))

    def full(self, name: str, key: str) -> torch.Tensor:
        """The single-device tensor `key` (MASTER or a state key) of parameter `name`."""
        slices = []
        for tp_rank in range(self.old_tp):
            shape = self.shapes[tp_rank].get(name)
            if shape is None:
                raise IncompatibleCheckpointError(f"the checkpoint's universal state has no parameter {name!r}")
            flat = torch.empty(math.prod(shape), dtype=torch.float32)
            covered = 0
            for fragment in self.by_name[name][tp_rank]:
                values = fragment[key]
                flat.narrow(0, fragment["start"], values.numel()).copy_(values)
                covered += values.numel()
            if covered != flat.numel():
                raise IncompatibleCheckpointError(
                    f"the checkpoint's universal state covers {covered} of the {flat.numel()} elements of {name!r} "
                    f"({key}, tp rank {tp_rank}): a rank's file is missing or from another save")
            slices.append(flat.view(shape))
        dim = self.dims[name]
        return slices[0] if dim is None or self.old_tp == 1 else torch.cat(slices, dim=dim)


def _ensure_state(parallel: ParallelModel, base: torch.optim.Optimizer, keys: list[str],
                  scalars: dict[str, float]) -> None:
    """Give every fp32 master the optimizer state (zeros, then filled) and the checkpoint's scalars.

    torch's AdamW makes its state at its first step, so a fresh engine has none (at every ZeRO
    stage); the first step then finds it and continues from it. The step count is a tensor on the
    parameters' device for the fused CUDA AdamW (and `capturable`), on the CPU otherwise, as torch
    makes it.
    """
    on_device = any(group.get("fused") or group.get("capturable") for group in base.param_groups)
    for hp in _masters(parallel, base):
        state = base.state[hp]
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(hp)
        for key, value in scalars.items():
            old = state.get(key)
            where = old.device if torch.is_tensor(old) else (hp.device if on_device else torch.device("cpu"))
            state[key] = torch.tensor(value, dtype=old.dtype if torch.is_tensor(old) else torch.float32, device=where)


def _set_parameter(parallel: ParallelModel, param: torch.nn.Parameter, base: torch.optim.Optimizer,
                   values: dict[str, torch.Tensor]) -> None:
    """Put this TP rank's slice (`values`: MASTER and the state keys) into the engine's copies of it."""
    device = param.device
    master = values[MASTER].to(device)
    if parallel.zero_stage == 0:
        param.data.copy_(master)
        for key, value in values.items():
            if key != MASTER:
                base.state[param][key].copy_(value)
        return
    if parallel.zero_stage == 3:
        start, count = _zero3_partition(parallel, param)
        for key, value in values.items():
            local = torch.zeros(param.ds_tensor.ds_numel, dtype=torch.float32, device=device)
            local.narrow(0, 0, count).copy_(value.flatten().narrow(0, start, count))
            if key == MASTER:
                safe_set_local_fp32_param(param, local)
                param.ds_tensor.data.copy_(local)  # the module's own partition (fp32 like the master)
            else:
                safe_set_local_optimizer_state(param, local, key)
        return
    param.data.copy_(master)  # ZeRO-1/2 keep whole weights in the module, the master in the optimizer
    mapping = param._hp_mapping
    if mapping is None:
        return
    lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
    mapping.hp_fragment.data.copy_(master.flatten().narrow(0, lp.start, lp.numel))
    state = base.state[_flat_partition(base, mapping)]
    for key, value in values.items():
        if key != MASTER:
            state[key].narrow(0, hp.start, hp.numel).copy_(value.to(device).flatten().narrow(0, lp.start, lp.numel))


def load_universal_state(folder: Path, parallel: ParallelModel, cfg: ModelConfig) -> None:
    """Load a checkpoint's universal state into this run's engine (any TP degree, DP degree and ZeRO
    stage). Every rank reads only the files (memory-mapped), one parameter at a time; no communication."""
    parts, head = _read_fragments(folder)
    keys, scalars = parts[0]["keys"], head["scalars"]
    state = _FullState(parts, cfg)
    groups, engine = parallel.groups, parallel.engine
    base = _base_optimizer(parallel)
    _ensure_state(parallel, base, keys, scalars)
    dims = partition_dims(cfg, [name for name, _ in parallel.module.named_parameters()])
    for name, param in parallel.module.named_parameters():
        local_shape = tuple(param.ds_shape if parallel.zero_stage == 3 else param.shape)
        values = {}
        for key in (MASTER, *keys):
            full = state.full(name, key)
            values[key] = shard_tensor(full, dims[name], groups.tp_rank, groups.tp)
        if tuple(values[MASTER].shape) != local_shape:
            raise IncompatibleCheckpointError(
                f"parameter {name!r}: the checkpoint's {tuple(values[MASTER].shape)} slice does not fit this "
                f"run's {local_shape}: it was written by another model")
        _set_parameter(parallel, param, base, values)
    engine.lr_scheduler.load_state_dict(head["schedule"])
    schedule = engine.lr_scheduler
    # The learning rate of the next step, from this run's schedule (recomputed if train.steps changed).
    for group, base_lr, factor in zip(base.param_groups, schedule.base_lrs, schedule.lr_lambdas):
        group["lr"] = base_lr * factor(schedule.last_epoch)
    for name, value in head["counters"].items():
        setattr(engine, name, value)
