"""The tensor-parallel plan of every layer kind, as data: which parameter splits along which dimension.

Nothing here knows about process groups: the platform's tensor-parallel code reads this table to
slice a live model and to gather its weights back (Megatron-style: one all-reduce per layer
forward and one backward). Because the mixers keep z / x / B / C / dt (and q / k / v, gate / up)
as separate weights and lay heads and groups out contiguously, every split is an even,
contiguous slice of one parameter along one dimension.

Convention (Megatron's, for `nn.Linear` weights of shape (out, in)):
- COLUMN_PARALLEL = 0: the output rows are split (an in-projection: each rank computes its own
  heads, groups or hidden units from the whole input);
- ROW_PARALLEL = 1: the input columns are split (an out-projection: each rank's partial sum is
  then all-reduced);
- for 1-D and conv parameters, 0 is their channel dimension, split like the rows feeding them;
- None: replicated (every rank keeps the whole tensor).

Why each split is consistent (rank r of tp holds the r-th contiguous slice of everything):
- Mamba-2: rank r gets heads [r*H/tp, (r+1)*H/tp) and groups [r*G/tp, (r+1)*G/tp). Head h
  reads B/C group h // (H/G); the local ratio H/G is unchanged, so local head -> local group is
  the same mapping. The gated norm's groups are contiguous channel blocks of d_inner, and
  G/tp whole groups land on each rank: normalisation stays local (paper, Section 2.1).
- Attention: heads and KV groups split the same way; GQA's head -> group map is preserved.
- MLP: hidden units are independent; up/gate by rows, down by columns.
- Embedding and LM head: the vocabulary rows, evenly.
- Mamba-1 has no plan: its dt / B / C projections reduce over all channels, which needs a
  second all-reduce per layer. `check_tensor_parallel` refuses it, here and nowhere else.

Context parallelism reuses the mixers' rows of this table: each of the tp x cp ranks of a
TP x CP block runs its mixers over whole rows for 1/(tp x cp) of the heads and groups, so the
mixers' heads and groups must divide by the whole product (`check_context_parallel`); the MLPs,
norms, embedding and head run on the rank's sequence shard and only TP splits them.
"""

from __future__ import annotations

import warnings

from forge_models.config import ModelConfig
from forge_models.patterns import parse_pattern

COLUMN_PARALLEL, ROW_PARALLEL = 0, 1
CHANNELS = 0  # 1-D parameters and depthwise conv weights: split by channel, like the rows feeding them

# Per mixer kind: local parameter name -> partition dim. A mixer parameter missing here is an
# error, not silently replicated: a new weight must be given a rule before TP can run.
MIXER_SPLITS: dict[str, dict[str, int | None]] = {
    "mamba2": {
        "z_proj.weight": COLUMN_PARALLEL, "x_proj.weight": COLUMN_PARALLEL,  # by head
        "dt_proj.weight": COLUMN_PARALLEL,  # by head
        "B_proj.weight": COLUMN_PARALLEL, "C_proj.weight": COLUMN_PARALLEL,  # by group
        "conv_x_weight": CHANNELS, "conv_x_bias": CHANNELS, "conv_B_weight": CHANNELS,
        "conv_B_bias": CHANNELS, "conv_C_weight": CHANNELS, "conv_C_bias": CHANNELS,
        "A_log": CHANNELS, "D": CHANNELS, "dt_bias": CHANNELS,
        "norm.weight": CHANNELS,  # the grouped norm: each rank normalises its own groups
        "out_proj.weight": ROW_PARALLEL,
    },
    "attention": {
        "q_proj.weight": COLUMN_PARALLEL, "k_proj.weight": COLUMN_PARALLEL, "v_proj.weight": COLUMN_PARALLEL,
        "o_proj.weight": ROW_PARALLEL,
    },
    "mlp": {"up_proj.weight": COLUMN_PARALLEL, "gate_proj.weight": COLUMN_PARALLEL,
            "down_proj.weight": ROW_PARALLEL},
}
# Outside the mixers: vocabulary-parallel embedding and head; the norms are replicated.
MODEL_SPLITS: dict[str, int | None] = {"embedding.weight": 0, "lm_head.weight": 0, "final_norm.weight": None}
BLOCK_REPLICATED = ("norm.weight",)  # each block's pre-norm

# Paper, Section 2.1: GroupNorm matched LayerNorm "as long as the group size (the model hidden
# dimension divided by the number of groups) is ... greater than 256". The norm it refers to
# normalises Mamba-2's inner activations, so the group size is d_inner / ngroups.
MIN_NORM_GROUP_SIZE = 256


def partition_dims(cfg: ModelConfig, param_names: list[str]) -> dict[str, int | None]:
    """Partition dim (or None) of every name in `param_names` (state_dict or parameter names)."""
    kinds = {spec.index: spec.kind for spec in parse_pattern(cfg.pattern)}
    table: dict[str, int | None] = {}
    for name in param_names:
        if name in MODEL_SPLITS:
            table[name] = MODEL_SPLITS[name]
            continue
        parts = name.split(".", 2)  # layers.<i>.mixer.<local> or layers.<i>.norm.weight
        if len(parts) < 3 or parts[0] != "layers" or not parts[1].isdigit():
            raise ValueError(f"no tensor-parallel rule for parameter {name!r}")
        if parts[2] in BLOCK_REPLICATED:
            table[name] = None
            continue
        kind = kinds[int(parts[1])]
        local = parts[2].removeprefix("mixer.")
        splits = MIXER_SPLITS.get(kind, {})
        if not parts[2].startswith("mixer.") or local not in splits:
            raise ValueError(f"no tensor-parallel rule for {kind} parameter {name!r}; add it to MIXER_SPLITS")
        table[name] = splits[local]
    return table


def check_tensor_parallel(cfg: ModelConfig, tp: int, strict: bool = False) -> None:
    """Raise ValueError naming every field that keeps `cfg` from being split tp ways.

    The paper's Mamba-2 norm group-size rule (d_inner / ngroups > 256) is a model-quality rule,
    not a correctness one: debug models break it on purpose. It is checked here because TP is
    what forces ngroups up (ngroups % tp == 0), which shrinks the groups. strict=True makes it an
    error (production presets), otherwise a warning.
    """
    if tp < 1:
        raise ValueError(f"tensor-parallel degree tp = {tp}: must be >= 1")
    if tp == 1:
        return
    problems = []
    if cfg.vocab_size % tp:
        problems.append(f"vocab_size={cfg.vocab_size} (pad the vocabulary to a multiple of {tp})")
    kinds = {spec.kind for spec in parse_pattern(cfg.pattern)}
    unplanned = sorted(kinds - set(MIXER_SPLITS))
    if "mamba" in unplanned:
        problems.append("pattern has Mamba-1 layers ('m'), which have no TP plan (they need two all-reduces)")
    elif unplanned:
        problems.append(f"layer kinds {unplanned} have no TP plan")
    problems += _head_problems(cfg, kinds, tp)
    if "mlp" in kinds and cfg.mlp_hidden_size % tp:
        problems.append(f"mlp hidden size = {cfg.mlp_hidden_size}")
    if problems:
        raise ValueError(f"cannot split the model tp={tp} ways; not divisible by {tp}: " + "; ".join(problems))
    if "mamba2" in kinds:
        _check_norm_group_size(cfg, strict)


def check_context_parallel(cfg: ModelConfig, tp: int, cp: int) -> None:
    """Raise ValueError naming every field that keeps `cfg`'s mixers from being split tp x cp ways.

    Under context parallelism a mixer runs whole rows for a share of its heads (and Mamba-2
    groups, attention KV groups) on each of the tp * cp ranks, so each count must divide by
    the product; the rest of `check_tensor_parallel` (vocabulary, MLP) needs only tp.
    """
    if cp < 1:
        raise ValueError(f"context-parallel degree cp = {cp}: must be >= 1")
    if cp == 1:
        return
    kinds = {spec.kind for spec in parse_pattern(cfg.pattern)}
    product = tp * cp
    problems = []
    if "mamba" in kinds:
        problems.append("pattern has Mamba-1 layers ('m'), which have no head-parallel plan")
    problems += _head_problems(cfg, kinds, product)
    if problems:
        raise ValueError(f"cannot run the mixers context-parallel over tp {tp} x cp {cp} = {product} ranks; "
                         f"not divisible by {product}: " + "; ".join(problems))


def _head_problems(cfg: ModelConfig, kinds: set[str], ways: int) -> list[str]:
    """The head and group counts of `cfg`'s mixers that do not divide by `ways` (TP, or TP x CP)."""
    counts = []
    if "mamba2" in kinds:
        counts += [(f"Mamba-2 heads = expand*d_model/head_dim = {cfg.mamba2_num_heads}", cfg.mamba2_num_heads),
                   (f"mamba2.ngroups={cfg.mamba2.ngroups}", cfg.mamba2.ngroups)]
    if "attention" in kinds:
        counts += [(f"attention.num_heads={cfg.attention.num_heads}", cfg.attention.num_heads),
                   (f"attention.num_kv_groups={cfg.attention.num_kv_groups}", cfg.attention.num_kv_groups)]
    return [name for name, count in counts if count % ways]


def _check_norm_group_size(cfg: ModelConfig, strict: bool) -> None:
    group_size = cfg.mamba2_d_inner // cfg.mamba2.ngroups
    if group_size > MIN_NORM_GROUP_SIZE:
        return
    message = (
        f"Mamba-2 norm group size d_inner/ngroups = {cfg.mamba2_d_inner}/{cfg.mamba2.ngroups} = {group_size} "
        f"is not > {MIN_NORM_GROUP_SIZE}; the paper (Section 2.1) saw GroupNorm match LayerNorm only above that"
    )
    if strict:
        raise ValueError(message + "; lower mamba2.ngroups (keeping it divisible by tp) or pass strict=False")
    warnings.warn(message, stacklevel=3)
