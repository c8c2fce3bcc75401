"""The memory plan: each stage's peak memory per GPU, predicted before anything launches.

`plan_stage` adds up, for one rank of a stage's layout, what a training step holds at its peak:

- weights, gradients and AdamW state (fp32: 4 + 4 + 8 bytes per local parameter). TP slices
  the parameters its table splits; ZeRO shards over the data-parallel ranks (1: optimizer state,
  2: + gradients, 3: + weights) and, at stages 1-2, keeps an fp32 copy of the rank's partition;
- the bf16 weight copies autocast makes and the linears keep for their backward (without
  recompute they all live until the backward; with recompute only one layer's at a time);
- saved activations: every layer's fp32 input, plus everything a layer that is not recomputed
  keeps (forge_models.memory, per token), times the micro-batch's tokens;
- the transient peak: the larger of the loss's working set (logits of one chunk, or all of them
  when the loss is not chunked) and the biggest layer's backward (its recomputed activations,
  its working set and the residual stream's gradient);
- communication buffers: ZeRO's reduce bucket, TP's all-reduce of one layer's output, CP's
  all-gather of one mixer's whole rows;
- allocator slack and the CUDA context, which PyTorch's own peak does not count.

Context parallelism (parallel/context_parallel.py) gives each rank 1/cp of every row's tokens:
every per-token term (block inputs, MLPs, norms, the loss) is counted for L/cp tokens. A mixer
runs the whole rows for heads/(tp x cp): its head-split activations are L x width/(tp x cp) =
(L/cp) x width/tp, the same per local token as TP alone; on top it keeps the gathered input of the
whole rows (what its in-projection saves, L x d_model in the compute dtype, instead of the shard's
norm output) and its backward holds the whole rows' output gradient and input gradient (2 x L x
d_model). The plan assumes the collectives' own buffers are one whole-row (L x d_model) tensor
and its pieces, live one mixer at a time (the all-gather's pieces and their concatenation), and
that NCCL's internal buffers sit inside the CUDA-context term. ZeRO shards over the replica
ranks (dp x cp). Sequence parallelism (`parallel.sequence_parallel`) shards the residual stream
over the TP group too: every layer's fp32 input (and the residual stream's gradient) is counted
for 1/tp of the rank's tokens; what the mixers and MLPs keep is unchanged (their first linear
saves the gathered input, as it saved the replicated one).

Recompute modes: "none" keeps everything; "full" recomputes every layer from its input;
"selective" recomputes every layer but attention (an attention layer's backward would redo the
quadratic score computation, while what it keeps is linear in the length and small);
"auto" takes the fastest of none, selective, full that the plan says fits.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from forge_models import ModelConfig, build_model, parse_pattern
from forge_models import memory as act
from forge_models.tp_plan import check_context_parallel, check_tensor_parallel, partition_dims

from forge_platform.config_loader import ConfigError
from forge_platform.config_sections import ParallelConfig, StageConfig

GiB = 2**30
RECOMPUTE_ORDER = ("none", "selective", "full")
"""Fastest first: what `auto` tries, in order."""
SELECTIVE_KEEPS = ("attention",)
"""Layer kinds the selective mode does not recompute."""
ALLOCATOR_SLACK = 0.05
"""Fragmentation on top of PyTorch's own peak (expandable segments keep it small)."""
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
"""The CUDA context and kernels' workspaces, outside PyTorch's allocator."""
ZERO_REDUCE_BUCKET = 500_000_000
"""DeepSpeed 0.19.8's reduce bucket, in elements (fp32 here), at ZeRO stages 1-2."""
LOSS_CHUNK = 4096
"""Tokens per chunk of `LanguageModel.loss`."""
CONTEXT_PARALLEL_KINDS = ("mamba2", "attention")
"""Layer kinds that run whole rows under context parallelism (the rest run the rank's shard)."""


@dataclass(frozen=True)
class LayerParams:
    """One group of parameters (a layer, or what sits outside the layers) as counts."""

    total: int
    sliced: int
    """Split by tensor parallelism (divided by tp on each rank)."""
    matmul: int
    """Weights a linear reads (autocast makes a bf16 copy of each)."""

    def local(self, tp: int) -> int:
        return self.sliced // tp + (self.total - self.sliced)


@dataclass(frozen=True)
class ParameterCounts:
    """The model's parameters: per layer, the LM head (its gradient is made first in the
    backward) and the embedding (last; nothing when tied to the head), and the rest (norms)."""

    layers: tuple[LayerParams, ...]
    head: LayerParams
    embedding: LayerParams
    other: LayerParams

    def local(self, tp: int) -> int:
        return sum(p.local(tp) for p in (*self.layers, self.head, self.embedding, self.other))


def count_parameters(model: ModelConfig) -> ParameterCounts:
    """Parameter counts from the model built on the meta device (no memory, no init)."""
    meta = build_model(model, device="meta")
    named = dict(meta.named_parameters())
    dims = partition_dims(model, list(named))

    def group(names: list[str]) -> LayerParams:
        return LayerParams(
            total=sum(named[n].numel() for n in names),
            sliced=sum(named[n].numel() for n in names if dims[n] is not None),
            matmul=sum(named[n].numel() for n in names if named[n].dim() == 2 and "conv" not in n),
        )

    layers = tuple(group([n for n in named if n.startswith(f"layers.{i}.")]) for i in range(len(meta.layers)))
    head_name = "embedding.weight" if model.tie_embeddings else "lm_head.weight"
    embedding = [] if model.tie_embeddings else ["embedding.weight"]
    other = [n for n in named if not n.startswith("layers.") and n not in (head_name, *embedding)]
    return ParameterCounts(layers, group([head_name]), group(embedding), group(other))


@dataclass
class StagePlan:
    """The predicted peak of one stage on one rank, term by term (at the moment of the peak)."""

    stage: str
    seq_len: int
    micro_batch: int
    recompute: str
    terms: dict[str, int] = field(default_factory=dict)
    """Bytes, by term name, in the order they are printed."""
    capacity: int | None = None
    """The GPU's memory in bytes; None when it is not known (nothing is checked)."""
    moment: str = ""
    """When in the step the peak falls."""

    @property
    def allocated(self) -> int:
        """What PyTorch's allocator peaks at (`torch.cuda.max_memory_allocated`)."""
        return sum(v for k, v in self.terms.items() if k not in ("allocator slack", "CUDA context"))

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total <= self.capacity

    def biggest(self, n: int = 3) -> str:
        top = sorted(self.terms.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {value / GiB:.1f}" for name, value in top)

    def table(self) -> str:
        """The terms, one per line, then the total against the GPU."""
        head = (f"stage {self.stage!r}: {self.seq_len} tokens x micro-batch {self.micro_batch}, "
                f"recompute {self.recompute}; peak {self.moment}")
        lines = [head] + [f"  {name:<30}{value / GiB:9.2f} GiB" for name, value in self.terms.items()]
        capacity = "GPU memory unknown" if self.capacity is None else f"GPU {self.capacity / GiB:.1f} GiB"
        verdict = "" if self.capacity is None else ("  fits" if self.fits else "  DOES NOT FIT")
        lines.append(f"  {'peak (predicted)':<30}{self.total / GiB:9.2f} GiB of {capacity}{verdict}")
        return "\n".join(lines)


def plan_stage(model: ModelConfig, stage: StageConfig, parallel: ParallelConfig, *, capacity: int | None,
               recompute: str | None = None, cp: int | None = None,
               params: ParameterCounts | None = None) -> StagePlan:
    """Predict one rank's peak for `stage` (`recompute` overrides the stage's own, `auto` excluded;
    `cp` the layout's context-parallel degree, with the same number of data-parallel replicas).

    The backward is swept layer by layer from the last: a layer's saved activations are freed as
    its gradients are made, so the peak falls at the loss (everything saved, the logits' working
    set), at some layer's backward, or at the optimizer step (every gradient), whichever is largest.
    """
    train = stage.train
    mode = recompute or train.recompute
    if mode == "auto":
        raise ValueError("plan_stage takes a concrete recompute mode; choose_recompute resolves 'auto'")
    dims = parallel.dims
    tp, cp = dims.tp, cp or dims.cp
    dp = dims.dp * cp  # the replica ranks ZeRO shards over (dp x cp)
    zero = train.zero_stage if dp > 1 else 0
    params = params or count_parameters(model)
    a = 2 if train.precision == "bf16" else 4
    tokens = train.micro_batch_size * stage.seq_len // cp
    row_tokens = tokens * cp  # what a context-parallel mixer sees

    def grad_bytes(p: LayerParams) -> int:  # fp32 gradients; ZeRO-2/3 keep their partition only
        return 4 * p.local(tp) // (dp if zero >= 2 else 1)

    static = {"weights (fp32)": 4 * params.local(tp) // (dp if zero == 3 else 1),
              "optimizer state (AdamW)": 8 * params.local(tp) // (dp if zero >= 1 else 1)}
    if zero in (1, 2):
        static["ZeRO fp32 partition"] = 4 * params.local(tp) // dp
    comm = 4 * ZERO_REDUCE_BUCKET if zero in (1, 2) else 0
    if tp > 1:  # one layer's output being all-reduced, and its gradient (whole rows for a CP mixer)
        comm += 2 * a * model.d_model * row_tokens
    if cp > 1:  # one mixer's all-gather: the pieces and their concatenation
        comm += 2 * a * model.d_model * row_tokens
    if comm:
        static["communication buffers"] = comm

    kinds = [spec.kind for spec in parse_pattern(model.pattern)]
    fused_mlp = model.compile_pointwise and tp == 1 and parallel.use_gpu
    sequence_shards = tp if parallel.sequence_parallel else 1
    block_input = act.block_input_bytes(model) * tokens // sequence_shards
    saved, transient, grads = [], [], []
    for kind, layer_params in zip(kinds, params.layers):
        layer = act.layer_activations(model, kind, a, tp, fused_mlp)
        if cp > 1 and kind in CONTEXT_PARALLEL_KINDS:  # per local token: the whole rows' extra
            layer = act.LayerActivations(layer.saved + a * model.d_model * (cp - 1),
                                         layer.working + 2 * a * model.d_model * (cp - 1))
        copies = 2 * layer_params.matmul // tp if a == 2 else 0  # autocast's bf16 weight copies
        if _recomputed(mode, kind):
            saved.append(block_input)
            transient.append((layer.saved + layer.working) * tokens + copies)
        else:
            saved.append(block_input + layer.saved * tokens + copies)
            transient.append(layer.working * tokens)
        grads.append(grad_bytes(layer_params))
    chunk = LOSS_CHUNK if tp == 1 and zero < 3 else 0
    loss = act.loss_bytes(model, a, tokens, tp, chunk)
    head_copy = 2 * params.head.matmul // tp if a == 2 else 0
    final = block_input + loss["saved"] + head_copy  # the final norm's input, the hidden states, the head's copy
    residual_grad = 2 * block_input  # the gradient flowing down the residual stream, and the next one
    head_grads = grad_bytes(params.head) + grad_bytes(params.other)

    # (moment, gradients held, activations held, transient)
    moments = [("at the loss", grad_bytes(params.head), sum(saved) + final, loss["working"])]
    for j in reversed(range(len(kinds))):
        moments.append((f"in layer {j}'s backward ({kinds[j]})", head_grads + sum(grads[j:]),
                        sum(saved[:j + 1]), transient[j] + residual_grad))
    all_grads = head_grads + sum(grads) + grad_bytes(params.embedding)
    moments.append(("at the optimizer step", all_grads, 0, 0))
    moment, held_grads, held_acts, peak = max(moments, key=lambda m: m[1] + m[2] + m[3])
    terms = dict(static)
    terms["gradients (held)"] = held_grads
    terms["saved activations (held)"] = held_acts
    terms["transient peak"] = peak
    terms["allocator slack"] = int(ALLOCATOR_SLACK * sum(terms.values()))
    if parallel.use_gpu:
        terms["CUDA context"] = CUDA_CONTEXT_BYTES
    return StagePlan(stage.name, stage.seq_len, train.micro_batch_size, mode, terms, capacity, moment)


def _recomputed(mode: str, kind: str) -> bool:
    return mode == "full" or (mode == "selective" and kind not in SELECTIVE_KEEPS)


def choose_recompute(model: ModelConfig, stage: StageConfig, parallel: ParallelConfig, *,
                     capacity: int | None, params: ParameterCounts | None = None) -> StagePlan:
    """The stage's plan under its recompute mode; `auto` becomes the fastest mode that fits.

    With the GPU's memory unknown, `auto` is "none" on CPU workers (host memory, nothing to
    plan against) and "full" on GPUs (the mode that fits the most)."""
    params = params or count_parameters(model)
    if stage.train.recompute != "auto":
        return plan_stage(model, stage, parallel, capacity=capacity, params=params)
    if capacity is None:
        mode = "full" if parallel.use_gpu else "none"
        return plan_stage(model, stage, parallel, capacity=None, recompute=mode, params=params)
    plans = [plan_stage(model, stage, parallel, capacity=capacity, recompute=m, params=params)
             for m in RECOMPUTE_ORDER]
    return next((p for p in plans if p.fits), plans[-1])


def suggestions(model: ModelConfig, stage: StageConfig, parallel: ParallelConfig, capacity: int,
                params: ParameterCounts) -> list[str]:
    """Settings, one change each, under which the stage would fit (cheapest change first)."""
    train = stage.train
    found = []

    def tries() -> Iterable[tuple[str, StageConfig, ParallelConfig]]:
        if train.recompute not in ("full", "auto"):
            yield "recompute = full", _with_train(stage, recompute="full"), parallel
        base = _with_train(stage, recompute="full")
        mb = train.micro_batch_size
        while mb > 1:
            mb //= 2
            yield (f"recompute = full, micro_batch_size = {mb} and grad_accum_steps x{train.micro_batch_size // mb}",
                   _with_train(base, micro_batch_size=mb), parallel)
        one = _with_train(base, micro_batch_size=1)
        if parallel.dims.replicas > 1:
            last_zero = 3 if parallel.context_parallel == 1 else 2  # context parallelism refuses ZeRO-3
            for z in range(train.zero_stage + 1, last_zero + 1):
                yield f"recompute = full, micro-batch 1, zero_stage = {z}", _with_train(one, zero_stage=z), parallel
        cp = parallel.context_parallel
        for tp in (2, 4, 8):
            if tp > parallel.tensor_parallel and parallel.num_workers % (tp * cp) == 0 and _splits(model, tp, cp):
                yield (f"recompute = full, micro-batch 1, tensor_parallel = {tp}", one,
                       dataclasses.replace(parallel, tensor_parallel=tp))
        tp = parallel.tensor_parallel
        if tp > 1 and not parallel.sequence_parallel:
            yield ("recompute = full, micro-batch 1, sequence_parallel = true", one,
                   dataclasses.replace(parallel, sequence_parallel=True))
        for cp in (2, 4, 8, 16):
            if cp > parallel.context_parallel and parallel.num_workers % (tp * cp) == 0 and _splits(model, tp, cp):
                yield (f"recompute = full, micro-batch 1, context_parallel = {cp}", one,
                       dataclasses.replace(parallel, context_parallel=cp))
    for label, s, p in tries():
        try:
            plan = plan_stage(model, s, p, capacity=capacity, params=params)  # every try recomputes fully
        except ValueError:
            continue
        if plan.fits:
            found.append(label)
            break
    return found


def _splits(model: ModelConfig, tp: int, cp: int) -> bool:
    """Whether the model's heads, groups, vocabulary and MLP split tp x cp ways (a layout to suggest)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the norm group-size rule is advice, not a refusal
            check_tensor_parallel(model, tp)
        check_context_parallel(model, tp, cp)
    except ValueError:
        return False
    return True


def _with_train(stage: StageConfig, **changes: object) -> StageConfig:
    return dataclasses.replace(stage, train=dataclasses.replace(stage.train, **changes))


def plan_stages(model: ModelConfig, stages: list[StageConfig], parallel: ParallelConfig, *,
                capacity: int | None) -> list[StagePlan]:
    """Every stage's plan, `auto` resolved."""
    params = count_parameters(model)
    return [choose_recompute(model, s, parallel, capacity=capacity, params=params) for s in stages]


def unfit_message(model: ModelConfig, stage: StageConfig, parallel: ParallelConfig, plan: StagePlan) -> str:
    """One line: what does not fit, its biggest terms, and a change under which it would."""
    assert plan.capacity is not None
    fixes = suggestions(model, stage, parallel, plan.capacity, count_parameters(model))
    if fixes:
        hint = f"it would fit with {fixes[0]}"
    else:
        hint = ("nothing tried on this layout fits (recompute, micro-batch, ZeRO stage, tensor, sequence or context "
                "parallelism): it needs more GPUs or GPUs with more memory")
    return (f"stages.{stage.name}: needs {plan.total / GiB:.1f} GiB per GPU, more than the GPU's "
            f"{plan.capacity / GiB:.1f} GiB (recompute {plan.recompute}; biggest, GiB: {plan.biggest()}); {hint} "
            "(python -m jobs.plan prints every term)")


def gpu_capacity(parallel: ParallelConfig) -> int | None:
    """Bytes of one GPU: the configured size, else this machine's first GPU; None if unknown or CPU."""
    if not parallel.use_gpu:
        return None
    if parallel.gpu_memory_gib > 0:
        return int(parallel.gpu_memory_gib * GiB)
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None


def resolve_recompute(stage: StageConfig, plan: StagePlan) -> StageConfig:
    """The stage with the mode its plan chose (workers never see `auto`)."""
    return _with_train(stage, recompute=plan.recompute)



def plan_for_job(model: ModelConfig, stages: list[StageConfig], parallel: ParallelConfig,
                 *, echo: bool = True) -> list[StageConfig]:
    """What every job does before it starts anything: plan each stage, print the plans, refuse
    (ConfigError, one line) a stage that cannot fit, and return the stages with `auto` resolved."""
    capacity = gpu_capacity(parallel)
    for stage in stages:  # a shard is a whole number of tokens (the workers would refuse it one by one)
        if stage.seq_len % parallel.context_parallel:
            raise ConfigError(f"stages.{stage.name}: seq_len = {stage.seq_len} is not divisible by "
                              f"parallel.context_parallel = {parallel.context_parallel}")
        if parallel.context_parallel > 1 and stage.train.zero_stage == 3:
            raise ConfigError(f"stages.{stage.name}: train.zero_stage = 3 with parallel.context_parallel = "
                              f"{parallel.context_parallel}: context parallelism supports ZeRO stages 0-2")
        if parallel.sequence_parallel and (stage.seq_len // parallel.context_parallel) % parallel.tensor_parallel:
            raise ConfigError(f"stages.{stage.name}: seq_len = {stage.seq_len} is not divisible by "
                              f"parallel.tensor_parallel x parallel.context_parallel = "
                              f"{parallel.tensor_parallel * parallel.context_parallel} (sequence parallelism)")
    plans = plan_stages(model, stages, parallel, capacity=capacity)
    if echo:
        for plan in plans:
            print(plan.table(), flush=True)
        if capacity is None and parallel.use_gpu:
            print("memory plan: GPU memory unknown here, nothing checked (set parallel.gpu_memory_gib)", flush=True)
    for stage, plan in zip(stages, plans):
        if not plan.fits:
            raise ConfigError(unfit_message(model, stage, parallel, plan))
    return [resolve_recompute(s, p) for s, p in zip(stages, plans)]
