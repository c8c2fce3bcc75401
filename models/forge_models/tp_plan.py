"""The tensor-parallel split of every parameter, as data: what the platform's TP code slices.

Megatron-style: each mixer's input projections are split by output rows ("column parallel"),
its output projection by input columns ("row parallel"), so a layer needs one all-reduce
(Mamba-1: two, its dt/B/C projections reduce over all channels). Because the mixers keep
z / x / B / C / dt (and q / k / v, gate / up) as separate weights, every split is a contiguous
slice along one dimension; nothing here knows about process groups.

`SPLITS[kind][param_name] = (dim, unit)`: slice `dim` into tp equal parts, where `unit` says
what must divide evenly ("heads", "groups", "kv_groups", "channels", "hidden"); (None, "replicate")
means every rank keeps the whole tensor (pre-norms, Mamba-1's B/C/dt-low which are reduced).
"""

from __future__ import annotations

from forge_models.config import ModelConfig
from forge_models.patterns import count_layers

ROW, COL = 0, 1

SPLITS: dict[str, dict[str, tuple[int | None, str]]] = {
    "mamba2": {
        "z_proj.weight": (ROW, "heads"), "x_proj.weight": (ROW, "heads"), "dt_proj.weight": (ROW, "heads"),
        "B_proj.weight": (ROW, "groups"), "C_proj.weight": (ROW, "groups"),
        "conv_x_weight": (ROW, "heads"), "conv_x_bias": (ROW, "heads"),
        "conv_B_weight": (ROW, "groups"), "conv_B_bias": (ROW, "groups"),
        "conv_C_weight": (ROW, "groups"), "conv_C_bias": (ROW, "groups"),
        "A_log": (ROW, "heads"), "D": (ROW, "heads"), "dt_bias": (ROW, "heads"),
        "norm.weight": (ROW, "groups"),  # grouped norm: each rank normalises its own groups
        "out_proj.weight": (COL, "heads"),
    },
    "mamba": {
        "x_in_proj.weight": (ROW, "channels"), "z_proj.weight": (ROW, "channels"),
        "conv_weight": (ROW, "channels"), "conv_bias": (ROW, "channels"),
        "dt_low_proj.weight": (COL, "channels"), "B_proj.weight": (COL, "channels"),
        "C_proj.weight": (COL, "channels"),  # partial sums: the layer's extra all-reduce
        "dt_proj.weight": (ROW, "channels"), "dt_proj.bias": (ROW, "channels"),
        "A_log": (ROW, "channels"), "D": (ROW, "channels"), "out_proj.weight": (COL, "channels"),
    },
    "attention": {
        "q_proj.weight": (ROW, "heads"), "k_proj.weight": (ROW, "kv_groups"),
        "v_proj.weight": (ROW, "kv_groups"), "o_proj.weight": (COL, "heads"),
    },
    "mlp": {
        "up_proj.weight": (ROW, "hidden"), "gate_proj.weight": (ROW, "hidden"), "down_proj.weight": (COL, "hidden"),
    },
}


def check_tp_degree(cfg: ModelConfig, tp: int) -> None:
    """Raise ValueError naming the first count that tp does not divide."""
    kinds = count_layers(cfg.pattern)
    needs: list[tuple[str, int]] = []
    if kinds["mamba2"]:
        needs += [("mamba2 heads", cfg.mamba2_num_heads), ("mamba2.ngroups", cfg.mamba2.ngroups)]
    if kinds["mamba"]:
        needs.append(("mamba d_inner", cfg.mamba_d_inner))
    if kinds["attention"]:
        needs += [("attention.num_heads", cfg.attention.num_heads),
                  ("attention.num_kv_groups", cfg.attention.num_kv_groups)]
    if kinds["mlp"]:
        needs.append(("mlp hidden size", cfg.mlp_hidden_size))
    for name, count in needs:
        if count % tp:
            raise ValueError(f"tp={tp} is invalid: {name}={count} is not divisible by tp")
