"""Our config and consolidated weights -> a transformers config dict and state dict (pure functions).

Our checkpoints keep one weight per projection ("do not fuse before you shard"); transformers'
Mamba classes keep mamba_ssm's fused ones. The fused tensors are concatenations in the order our
mixers concatenate at run time (mamba2.py `in_proj_weight`, `conv_weight`): in_proj rows
[z, x, B, C, dt], conv channels [x, B, C]; Mamba-1's in_proj is [x, z] and its x_proj [dt, B, C].
Conv weights gain the (C, 1, W) shape of a depthwise nn.Conv1d. Attention, MLP and norm weights
are renamed only.

Nothing here imports transformers: the outputs are plain dicts and tensors (folder.py writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from forge_models.config import AttentionConfig, Mamba2Config, MambaConfig, MLPConfig, ModelConfig
from forge_models.export.targets import LLAMA, MAMBA, MAMBA2, NEMOTRON_H, hf_target
from forge_models.patterns import LAYER_SYMBOLS

StateDict = dict[str, torch.Tensor]

DEFAULT_MAX_POSITIONS = 131072
"""`max_position_embeddings` written for classes that want one: our longest trained context (128K).
Our models have no learned positions; only the default RoPE reads this field, and not its value."""

# NemotronH's names for our layer kinds (its config's `layers_block_type`).
_NEMOTRON_H_BLOCKS = {"mamba2": "linear_attention", "attention": "full_attention", "mlp": "mlp"}


def hf_config_dict(cfg: ModelConfig, max_positions: int = DEFAULT_MAX_POSITIONS) -> dict:
    """The transformers config (as the keyword arguments of its config class, with `model_type`
    and `architectures`) of the class that reproduces `cfg`; ExportUnsupportedError otherwise."""
    target = hf_target(cfg)
    out = {"model_type": target.model_type, "architectures": [target.architecture], "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
           # Token ids come from the tokenizer (folder.py), not from a class's defaults.
           "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    out.update(_FAMILY_CONFIGS[target.model_type](cfg, max_positions))
    return out


def _mamba_config(cfg: ModelConfig, _: int) -> dict:
    m = cfg.mamba
    return {"state_size": m.d_state, "num_hidden_layers": cfg.num_layers, "layer_norm_epsilon": cfg.norm_eps,
            "expand": m.expand, "conv_kernel": m.d_conv, "use_bias": False, "use_conv_bias": m.conv_bias,
            "hidden_act": "silu", "time_step_rank": cfg.mamba_dt_rank, "residual_in_fp32": False,
            "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor}


def _mamba2_fields(cfg: ModelConfig) -> dict:
    m = cfg.mamba2
    return {"n_groups": m.ngroups, "conv_kernel": m.d_conv, "expand": m.expand, "use_conv_bias": m.conv_bias,
            "use_bias": False, "chunk_size": m.chunk_size, "layer_norm_epsilon": cfg.norm_eps,
            "time_step_limit": (0.0, float("inf")), "residual_in_fp32": False}


def _mamba2_config(cfg: ModelConfig, _: int) -> dict:
    m = cfg.mamba2
    return {**_mamba2_fields(cfg), "num_heads": cfg.mamba2_num_heads, "head_dim": m.head_dim,
            "state_size": m.d_state, "num_hidden_layers": cfg.num_layers, "hidden_act": "silu",
            "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor}


def _attention_fields(cfg: ModelConfig) -> dict:
    a = cfg.attention
    return {"num_attention_heads": a.num_heads, "num_key_value_heads": a.num_kv_groups, "head_dim": a.head_dim,
            "attention_bias": False, "mlp_bias": False}


def _llama_config(cfg: ModelConfig, max_positions: int) -> dict:
    return {**_attention_fields(cfg), "num_hidden_layers": cfg.num_layers // 2,
            "intermediate_size": cfg.mlp_hidden_size, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.attention.rope_base},
            "max_position_embeddings": max_positions}


def _nemotron_h_config(cfg: ModelConfig, max_positions: int) -> dict:
    m = cfg.mamba2
    return {**_mamba2_fields(cfg), **_attention_fields(cfg),
            "layers_block_type": [_NEMOTRON_H_BLOCKS[LAYER_SYMBOLS[s]] for s in cfg.pattern],
            "intermediate_size": cfg.mlp_hidden_size, "mlp_hidden_act": cfg.mlp.activation,
            "mamba_num_heads": cfg.mamba2_num_heads, "mamba_head_dim": m.head_dim, "ssm_state_size": m.d_state,
            "mamba_hidden_act": "silu", "mamba_proj_bias": False,
            # NemotronH clamps dt from below at time_step_min (its only use outside initialisation);
            # ours never clamps, so 0 (softplus is positive) keeps the scan exact.
            "time_step_min": 0.0, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
            # NemotronH ties nothing: a tied head is written as its own copy (convert_state_dict).
            "tie_word_embeddings": False, "max_position_embeddings": max_positions}


_FAMILY_CONFIGS: dict[str, Callable[[ModelConfig, int], dict]] = {
    MAMBA.model_type: _mamba_config, MAMBA2.model_type: _mamba2_config, LLAMA.model_type: _llama_config,
    NEMOTRON_H.model_type: _nemotron_h_config,
}


class _Weights:
    """Our state dict, read once per key: `take` fails naming a missing key, `left` lists the unread."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = dict(state)
        self.read: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ValueError(f"the weights lack {key!r}: they belong to another model config")
        self.read.add(key)
        return self.state[key]

    def take_optional(self, key: str) -> torch.Tensor | None:
        return self.take(key) if key in self.state else None

    def left(self) -> list[str]:
        return sorted(set(self.state) - self.read)


def _mamba2_mixer(w: _Weights, ours: str, theirs: str) -> StateDict:
    out = {f"{theirs}.in_proj.weight": torch.cat([w.take(f"{ours}.{name}_proj.weight") for name in "z x B C dt".split()]),
           f"{theirs}.conv1d.weight": torch.cat([w.take(f"{ours}.conv_{n}_weight") for n in "xBC"]).unsqueeze(1)}
    biases = [w.take_optional(f"{ours}.conv_{n}_bias") for n in "xBC"]
    if biases[0] is not None:
        out[f"{theirs}.conv1d.bias"] = torch.cat(biases)
    for name in ("A_log", "D", "dt_bias", "norm.weight", "out_proj.weight"):
        out[f"{theirs}.{name}"] = w.take(f"{ours}.{name}")
    return out


def _mamba_mixer(w: _Weights, ours: str, theirs: str) -> StateDict:
    out = {f"{theirs}.in_proj.weight": torch.cat([w.take(f"{ours}.x_in_proj.weight"), w.take(f"{ours}.z_proj.weight")]),
           f"{theirs}.conv1d.weight": w.take(f"{ours}.conv_weight").unsqueeze(1),
           f"{theirs}.x_proj.weight": torch.cat([w.take(f"{ours}.{n}.weight") for n in ("dt_low_proj", "B_proj", "C_proj")])}
    bias = w.take_optional(f"{ours}.conv_bias")
    if bias is not None:
        out[f"{theirs}.conv1d.bias"] = bias
    for name in ("dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"):
        out[f"{theirs}.{name}"] = w.take(f"{ours}.{name}")
    return out


def _renamed(w: _Weights, ours: str, theirs: str, names: tuple[str, ...]) -> StateDict:
    return {f"{theirs}.{n}.weight": w.take(f"{ours}.{n}.weight") for n in names}


_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _mlp(w: _Weights, ours: str, theirs: str, gated: bool) -> StateDict:
    return _renamed(w, ours, theirs, ("gate_proj", "up_proj", "down_proj") if gated else ("up_proj", "down_proj"))


def convert_state_dict(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> StateDict:
    """Our consolidated weights (`LanguageModel.state_dict()` names) -> the transformers class's names
    and shapes. Fused tensors are new; renamed ones are the input tensors themselves. ValueError when
    the weights do not belong to `cfg` (a missing or an extra tensor)."""
    target = hf_target(cfg)
    w = _Weights(state)
    gated = cfg.mlp.activation == "swiglu"
    out: StateDict = {}
    if target in (MAMBA, MAMBA2):
        mixer = _mamba_mixer if target is MAMBA else _mamba2_mixer
        prefix, embed, final_norm = "backbone", "backbone.embeddings", "backbone.norm_f"
        for i in range(cfg.num_layers):
            out[f"{prefix}.layers.{i}.norm.weight"] = w.take(f"layers.{i}.norm.weight")
            out.update(mixer(w, f"layers.{i}.mixer", f"{prefix}.layers.{i}.mixer"))
    elif target.model_type == NEMOTRON_H.model_type:
        embed, final_norm = "model.embeddings", "model.norm_f"
        for i, symbol in enumerate(cfg.pattern):
            ours, theirs = f"layers.{i}.mixer", f"model.layers.{i}.mixer"
            out[f"model.layers.{i}.norm.weight"] = w.take(f"layers.{i}.norm.weight")
            kind = LAYER_SYMBOLS[symbol]
            out.update(_mamba2_mixer(w, ours, theirs) if kind == "mamba2" else
                       _renamed(w, ours, theirs, _ATTENTION) if kind == "attention" else _mlp(w, ours, theirs, gated))
    else:  # Llama: one decoder layer per `*+` pair, with two norms.
        embed, final_norm = "model.embed_tokens", "model.norm"
        for j in range(cfg.num_layers // 2):
            attn, ffn, layer = 2 * j, 2 * j + 1, f"model.layers.{j}"
            out[f"{layer}.input_layernorm.weight"] = w.take(f"layers.{attn}.norm.weight")
            out[f"{layer}.post_attention_layernorm.weight"] = w.take(f"layers.{ffn}.norm.weight")
            out.update(_renamed(w, f"layers.{attn}.mixer", f"{layer}.self_attn", _ATTENTION))
            out.update(_mlp(w, f"layers.{ffn}.mixer", f"{layer}.mlp", gated))
    out[f"{embed}.weight"] = w.take("embedding.weight")
    out[f"{final_norm}.weight"] = w.take("final_norm.weight")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = w.take("lm_head.weight")
    elif target.model_type == NEMOTRON_H.model_type:
        out["lm_head.weight"] = out[f"{embed}.weight"].clone()  # NemotronH ties nothing (targets.py)
    if w.left():
        extra = w.left()
        raise ValueError(f"the weights hold tensors the model config has no place for: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    # Renamed tensors are the input's own (no copy: an 8B checkpoint is memory-mapped, not read
    # twice); no two outputs share memory, which safetensors would refuse.
    return {k: v.detach().contiguous() for k, v in out.items()}


def to_hf(cfg: ModelConfig, state: Mapping[str, torch.Tensor],
          max_positions: int = DEFAULT_MAX_POSITIONS) -> tuple[dict, StateDict]:
    """(transformers config dict, transformers state dict) for our config and consolidated weights."""
    return hf_config_dict(cfg, max_positions), convert_state_dict(cfg, state)


def model_config_from_hf(hf: Mapping) -> ModelConfig:
    """The inverse of `hf_config_dict` for the fields that define the function computed: a config
    exported and read back (`PretrainedConfig.to_dict()`) gives the same architecture. Init ranges
    the export does not keep come back as our defaults."""
    model_type = hf["model_type"]
    common = {"vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "init_std": hf["initializer_range"],
              "tie_embeddings": hf["tie_word_embeddings"]}
    if model_type == MAMBA.model_type:
        return ModelConfig(**common, pattern="m" * hf["num_hidden_layers"], norm_eps=hf["layer_norm_epsilon"],
                           mamba=MambaConfig(d_state=hf["state_size"], d_conv=hf["conv_kernel"], expand=hf["expand"],
                                             dt_rank=hf["time_step_rank"], conv_bias=hf["use_conv_bias"]))
    if model_type == LLAMA.model_type:
        return ModelConfig(**common, pattern="*+" * hf["num_hidden_layers"], norm_eps=hf["rms_norm_eps"],
                           attention=_attention_from_hf(hf, rope=True),
                           mlp=MLPConfig(activation="swiglu", hidden_size=hf["intermediate_size"]))
    if model_type == MAMBA2.model_type:
        mamba2 = Mamba2Config(d_state=hf["state_size"], d_conv=hf["conv_kernel"], expand=hf["expand"],
                              head_dim=hf["head_dim"], ngroups=hf["n_groups"], chunk_size=hf["chunk_size"],
                              conv_bias=hf["use_conv_bias"])
        return ModelConfig(**common, pattern="M" * hf["num_hidden_layers"], norm_eps=hf["layer_norm_epsilon"],
                           mamba2=mamba2)
    if model_type == NEMOTRON_H.model_type:
        symbols = {theirs: ours for ours, theirs in _NEMOTRON_H_BLOCKS.items()}
        by_kind = {kind: symbol for symbol, kind in LAYER_SYMBOLS.items()}
        mamba2 = Mamba2Config(d_state=hf["ssm_state_size"], d_conv=hf["conv_kernel"], expand=hf["expand"],
                              head_dim=hf["mamba_head_dim"], ngroups=hf["n_groups"], chunk_size=hf["chunk_size"],
                              conv_bias=hf["use_conv_bias"])
        return ModelConfig(**common, pattern="".join(by_kind[symbols[t]] for t in hf["layers_block_type"]),
                           norm_eps=hf["layer_norm_epsilon"], mamba2=mamba2,
                           attention=_attention_from_hf(hf, rope=False),
                           mlp=MLPConfig(activation=hf["mlp_hidden_act"], hidden_size=hf["intermediate_size"]))
    raise ValueError(f"model_type = {model_type!r}: must be one of the exported families "
                     f"{', '.join(sorted(_FAMILY_CONFIGS))}")


def _attention_from_hf(hf: Mapping, rope: bool) -> AttentionConfig:
    rope_base = hf["rope_parameters"]["rope_theta"] if rope else AttentionConfig.rope_base
    return AttentionConfig(num_heads=hf["num_attention_heads"], num_kv_groups=hf["num_key_value_heads"],
                           head_dim=hf["head_dim"], rope=rope, rope_base=rope_base)
