"""Worker functions for the tensor-parallel tests, run in gloo processes started by mp.spawn.

They live in their own module (not the test file) so `spawn` children can import them by name.
Each worker asserts inside the child: a failure surfaces in pytest as the child's traceback.

Legend: B batch, L length, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from forge_data import IGNORE_INDEX
from forge_models import ModelConfig, build_model, get_preset, language_model_loss, weight_decay_groups
from torch import nn

from forge_platform.config_sections import OptimConfig, TrainConfig
from forge_platform.parallel import (
    ModelParallelUnit,
    ParallelDims,
    ParallelGroups,
    build_loss_fn,
    build_process_groups,
    check_tp_batch,
    gather_from_tp_region,
    gather_state_dict,
    global_grad_norm,
    parallelize_model,
    shard_tensor,
    vocab_parallel_cross_entropy,
)
from forge_models.tp_plan import partition_dims
from forge_platform.training.deepspeed_config import build_deepspeed_config

REPO = Path(__file__).resolve().parents[2]
SEED = 1234
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """Environment for children: DeepSpeed's JIT cache in the workspace, quiet accelerator probe."""
    return {
        "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"),
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
    }


def launch(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run fn(rank, world_size, port, *args) in world_size spawned processes; raise on any failure."""
    os.environ.update(worker_env())  # inherited by spawn children
    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


def _entry(rank: int, fn: Callable[..., None], world_size: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)  # several processes share two cores
    # Debug models break the paper's norm group-size rule on purpose (tested in the main process).
    warnings.filterwarnings("ignore", message="Mamba-2 norm group size")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()
    # A worker that finished leaves at once: the interpreter's normal exit runs native destructors
    # (gloo's and DeepSpeed's threads), and one of them aborted a passing child about one run in
    # seven here ("terminate called without an active exception", SIGABRT). Failures still raise
    # above and reach pytest as the child's traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Models and batches
# ---------------------------------------------------------------------------------------------
def debug_config(name: str) -> ModelConfig:
    """A debug preset in fp32 on the reference kernels; `hybrid-tied` ties the embeddings."""
    if name == "hybrid-tied":
        return dataclasses.replace(get_preset("hybrid-debug"), tie_embeddings=True, kernels="reference")
    return dataclasses.replace(get_preset(name), kernels="reference")


def packed_batch(cfg: ModelConfig, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows of three packed documents (boundaries cross the debug chunk size of 8).

    Every row has the same boundaries, so every data-parallel share counts the same number of
    labels and the DP average of per-rank means equals the mean over the concatenated batch.
    """
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
    cuts = [0, length // 3 + 1, 2 * length // 3 + 3, length]
    seq_idx = torch.zeros(batch, length, dtype=torch.int32)
    position_ids = torch.zeros(batch, length, dtype=torch.int64)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.int64)
    for doc, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        seq_idx[:, start:end] = doc
        position_ids[:, start:end] = torch.arange(end - start)
        labels[:, start:end - 1] = input_ids[:, start + 1:end]  # the last token of a doc predicts nothing
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_idx": seq_idx}


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The train loop's loss: model on the packed batch, then the TP-aware loss function."""
    logits = model(batch["input_ids"], seq_idx=batch["seq_idx"], position_ids=batch["position_ids"])
    return loss_fn(logits, batch["labels"])


def fresh_model(cfg: ModelConfig) -> nn.Module:
    """Same seed, same weights, on every rank and in the reference."""
    torch.manual_seed(SEED)
    return build_model(cfg)


def gather_grads(model: nn.Module, cfg: ModelConfig, groups: ParallelGroups) -> dict[str, torch.Tensor]:
    """Full-size gradients of a TP model (split ones concatenated over the TP group)."""
    named = dict(model.named_parameters())
    dims = partition_dims(cfg, list(named))
    full = {}
    for name, p in named.items():
        grad = p.grad.detach()
        if dims[name] is not None and groups.tp > 1:
            parts = [torch.empty_like(grad) for _ in range(groups.tp)]
            dist.all_gather(parts, grad.contiguous(), group=groups.tp_group)
            grad = torch.cat(parts, dim=dims[name])
        full[name] = grad
    return full


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """fp32 parity: relative 1e-5 with an absolute floor scaled to the tensor's magnitude."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL * max(scale, 1.0), msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------
def tp_parity_worker(rank: int, world_size: int, presets: list[str]) -> None:
    """TP = world_size versus the single-device model, per preset: loss, gradients, norm, weights, decode."""
    groups = build_process_groups(ParallelDims(tp=world_size, dp=1, world_size=world_size))
    for name in presets:
        cfg = debug_config(name)
        batch = packed_batch(cfg, batch=2, length=24, seed=7)

        reference = fresh_model(cfg)
        ref_loss = forward_loss(reference, batch, language_model_loss)
        ref_loss.backward()
        ref_grads = {n: p.grad for n, p in reference.named_parameters()}
        ref_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in ref_grads.values()]))

        model = parallelize_model(fresh_model(cfg), groups)
        check_tp_batch(batch, groups)
        loss = forward_loss(model, batch, build_loss_fn(groups))
        loss.backward()
        assert_close(loss.detach(), ref_loss.detach(), f"{name} loss")
        grads = gather_grads(model, cfg, groups)
        assert grads.keys() == ref_grads.keys()
        for param_name, grad in grads.items():
            assert_close(grad, ref_grads[param_name], f"{name} grad {param_name}")
        assert_close(global_grad_norm(model, groups), ref_norm, f"{name} global grad norm")

        # Checkpoints stay TP-independent: gather reproduces the full weights, shard slices them back.
        full_sd = reference.state_dict()
        gathered = gather_state_dict(model, cfg, groups)
        for key, value in full_sd.items():
            assert torch.equal(gathered[key], value), f"{name} gather_state_dict {key}"
        own = model.state_dict()
        sharded = shard_full_state_dict(full_sd, cfg, groups)
        for key, value in sharded.items():
            assert torch.equal(own[key], value), f"{name} shard of {key}"
        model.load_state_dict(sharded)

        _check_decode(reference, model, cfg, groups)
    _check_batch_mismatch_detected(groups)
    _check_cross_entropy(groups)


def _check_cross_entropy(groups: ParallelGroups) -> None:
    """vocab_parallel_cross_entropy on random (B, L, V) logits equals F.cross_entropy, value and grad."""
    g = torch.Generator().manual_seed(11)
    logits = (torch.randn(3, 5, 32, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, 32, (3, 5), generator=g)
    labels[0, :2] = IGNORE_INDEX
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").reshape(3, 5)
    (expected * torch.arange(15.0).reshape(3, 5)).sum().backward()  # non-uniform output grads
    local_vocab = 32 // groups.tp
    start = groups.tp_rank * local_vocab
    local = logits.detach()[..., start:start + local_vocab].clone().requires_grad_()
    losses = vocab_parallel_cross_entropy(local, labels, groups.tp_group, vocab_start=start)
    (losses * torch.arange(15.0).reshape(3, 5)).sum().backward()
    assert_close(losses.detach(), expected.detach(), "vocab-parallel cross-entropy")
    assert_close(local.grad, logits.grad[..., start:start + local_vocab], "vocab-parallel cross-entropy grad")


def _check_decode(reference: nn.Module, model: nn.Module, cfg: ModelConfig, groups: ParallelGroups) -> None:
    """Prefill + two cached decode steps: local state sizes follow the shrunk mixers."""
    prompt = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(3))
    step_ids = torch.tensor([[5], [9]])
    with torch.no_grad():
        outputs = []
        for net in (reference, model):
            cache = net.allocate_cache(1, 16)
            logits = [net(prompt, cache=cache)[:, -1]]
            logits += [net(step_ids[i:i + 1], cache=cache)[:, -1] for i in range(2)]
            outputs.append(torch.stack(logits))
    assert_close(gather_from_tp_region(outputs[1], groups.tp_group), outputs[0], "decode logits")


def _check_batch_mismatch_detected(groups: ParallelGroups) -> None:
    batch = {"input_ids": torch.arange(6).reshape(1, 6) + groups.tp_rank}
    try:
        check_tp_batch(batch, groups)
    except RuntimeError as err:
        assert "input_ids" in str(err)
    else:
        raise AssertionError("check_tp_batch accepted different batches on TP peers")


def shard_full_state_dict(full_sd: dict[str, torch.Tensor], cfg: ModelConfig,
                          groups: ParallelGroups) -> dict[str, torch.Tensor]:
    """This TP rank's slice of every tensor of a single-device state_dict, by forge_models' plan."""
    dims = partition_dims(cfg, list(full_sd))
    return {name: shard_tensor(t, dims[name], groups.tp_rank, groups.tp) for name, t in full_sd.items()}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One short training run; the same spec drives the DeepSpeed workers and the reference."""

    preset: str = "hybrid-debug"
    steps: int = 3
    micro_batch: int = 2
    """Rows per data-parallel rank and step."""
    length: int = 24
    lr: float = 1e-3
    weight_decay: float = 0.1
    clip: float = 0.5
    """Low enough that clipping engages, so a wrong TP norm would change the updates."""

    def global_batch(self, step: int, dp: int) -> dict[str, torch.Tensor]:
        """The step's batch for all data-parallel ranks together (DP rank r takes rows r*mb:(r+1)*mb)."""
        return packed_batch(debug_config(self.preset), self.micro_batch * dp, self.length, seed=100 + step)


def deepspeed_worker(rank: int, world_size: int, tp: int, zero_stages: list[int], spec: RunSpec,
                     out_dir: str) -> None:
    """tp x (world/tp) with DeepSpeed ZeRO, per stage: per-step global loss and grad norm, final weights."""
    import deepspeed

    dims = ParallelDims.from_world(world_size, tp)
    groups = build_process_groups(dims)
    cfg = debug_config(spec.preset)
    results = {}
    for stage in zero_stages:
        model = parallelize_model(fresh_model(cfg), groups)
        optimizer = torch.optim.AdamW(weight_decay_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.95))
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, mpu=ModelParallelUnit(groups), dist_init_required=False,
            config=build_deepspeed_config(TrainConfig(micro_batch_size=spec.micro_batch, zero_stage=stage),
                                          OptimConfig(lr=spec.lr, grad_clip=spec.clip), dims.dp),
        )
        assert (engine.mp_world_size, engine.dp_world_size) == (dims.tp, dims.dp)  # DeepSpeed read the mpu
        loss_fn = build_loss_fn(groups)
        losses, norms = [], []
        for step in range(spec.steps):
            rows = slice(groups.dp_rank * spec.micro_batch, (groups.dp_rank + 1) * spec.micro_batch)
            batch = {k: v[rows] for k, v in spec.global_batch(step, dims.dp).items()}
            check_tp_batch(batch, groups)
            loss = forward_loss(engine, batch, loss_fn)
            engine.backward(loss)
            engine.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss, group=groups.dp_group)
            losses.append(float(mean_loss) / dims.dp)
            norms.append(float(engine.get_global_grad_norm()))
        if stage == 3:
            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                weights = gather_state_dict(model, cfg, groups)
        else:
            weights = gather_state_dict(model, cfg, groups)
        results[stage] = {"losses": losses, "grad_norms": norms}
        if rank == 0:
            torch.save(weights, Path(out_dir) / f"weights_zero{stage}.pt")
        engine.destroy()
    if rank == 0:
        (Path(out_dir) / "results.json").write_text(json.dumps(results))


@functools.cache  # two tests compare against the same run: compute it once per session
def reference_run(spec: RunSpec, dp: int) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """Single process, DP = 1, on the concatenated batch: plain AdamW with torch's norm clipping."""
    cfg = debug_config(spec.preset)
    model = fresh_model(cfg)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.95))
    losses, norms = [], []
    for step in range(spec.steps):
        optimizer.zero_grad()
        loss = forward_loss(model, spec.global_batch(step, dp), language_model_loss)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)))
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, norms, {k: v.detach().clone() for k, v in model.state_dict().items()}
