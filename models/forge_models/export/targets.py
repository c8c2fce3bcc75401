"""Which Hugging Face transformers class computes exactly what one of our model configs computes.

A config maps only where a transformers class has the same layers, norms, MLP, positions and
layer order, so the exported model's logits are ours up to float rounding. Otherwise the export
is refused with the reason, naming the config value that no class reproduces.

What each class assumes (transformers 5.23, read from its modeling code):
- MambaForCausalLM: Mamba-1 layers only, each pre-norm + mixer + residual, RMSNorm.
- Mamba2ForCausalLM: Mamba-2 layers only; gated RMSNorm per group of d_inner / n_groups channels.
- LlamaForCausalLM: `*+` pairs only (input_layernorm, attention, post_attention_layernorm, MLP);
  RoPE always, half-split layout; the MLP is always gated (SwiGLU with hidden_act silu).
- NemotronHForCausalLM: any sequence of Mamba-2 (`M`), attention (`*`) and MLP (`-`) layers,
  each pre-norm + mixer + residual; attention takes no positions (no RoPE); the MLP is ungated
  (up, activation, down) with any activation; the Mamba-2 norm is grouped like ours; no weight
  tying (a tied LM head is exported as a copy of the embedding).
- BambaForCausalLM: every decoder layer is (Mamba-2 or attention) then a SwiGLU MLP, each with its
  pre-norm; its attention always rotates half of each head with RoPE (`partial_rotary_factor`
  0.5), which none of ours does. `M+` pairs without attention would match, but transformers 5.23
  fails on a Bamba model without attention layers (its causal mask asks a cache holding no
  attention layer for a length), so nothing is exported to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from forge_models.config import ModelConfig
from forge_models.patterns import count_layers
from forge_models.presets import PRESETS, get_preset


class ExportUnsupportedError(ValueError):
    """No transformers class computes what this model config computes."""


@dataclass(frozen=True)
class HFTarget:
    """A transformers architecture that reproduces a model config exactly."""

    model_type: str
    """The config's `model_type` ("mamba", "mamba2", "llama", "nemotron_h")."""
    architecture: str
    """The class `AutoModelForCausalLM` builds, e.g. "NemotronHForCausalLM"."""
    note: str = ""
    """What differs other than the function computed (e.g. an untied copy of a tied head)."""


MAMBA = HFTarget("mamba", "MambaForCausalLM")
MAMBA2 = HFTarget("mamba2", "Mamba2ForCausalLM")
LLAMA = HFTarget("llama", "LlamaForCausalLM")
NEMOTRON_H = HFTarget(
    "nemotron_h", "NemotronHForCausalLM",
    note="time_step_min is 0 (NemotronH clamps dt from below at it; ours never clamps): the config loads these "
         "weights, but a fresh NemotronH built from it fails to initialise dt (log 0); set it > 0 to train anew")
NEMOTRON_H_UNTIED = dataclasses.replace(
    NEMOTRON_H, note=NEMOTRON_H.note + "; tied embeddings exported as an lm_head equal to the embedding: "
                                       "NemotronH has no weight tying")

# Fields that change how a model is trained or run, never the function it computes; two configs
# equal but for these (and the vocabulary, which the tokenizer sets) are the same architecture.
_NOT_ARCHITECTURE = {
    "": ("vocab_size", "init_std", "kernels", "compile_pointwise"),
    "attention": ("backend",),
    "mamba2": ("kernel_fused", "dt_min", "dt_max", "dt_init_floor", "a_init_min", "a_init_max"),
    "mamba": ("dt_min", "dt_max", "dt_init_floor"),
}


def architecture_fields(cfg: ModelConfig) -> dict:
    """`cfg` as a nested dict of what defines the function it computes: derived sizes resolved
    (an MLP width of 0 is 4 * d_model), sections of layer kinds the pattern lacks left out."""
    arch = dataclasses.asdict(cfg)
    for section, names in _NOT_ARCHITECTURE.items():
        fields = arch[section] if section else arch
        for name in names:
            fields.pop(name)
    arch["mlp"]["hidden_size"] = cfg.mlp_hidden_size
    arch["mamba"]["dt_rank"] = cfg.mamba_dt_rank
    counts = count_layers(cfg.pattern)
    for section, kind in (("mamba2", "mamba2"), ("mamba", "mamba"), ("attention", "attention"), ("mlp", "mlp")):
        if not counts[kind]:
            del arch[section]
    return arch


def matching_preset(cfg: ModelConfig) -> str | None:
    """The preset whose architecture `cfg` is (vocabulary, init and run-time switches aside), or None."""
    arch = architecture_fields(cfg)
    return next((name for name in PRESETS if architecture_fields(get_preset(name)) == arch), None)


def describe_model(cfg: ModelConfig) -> str:
    """How errors name a model: its preset, or its pattern when it is no preset."""
    preset = matching_preset(cfg)
    return f"preset {preset}" if preset else f"a custom model (model.pattern = {cfg.pattern!r})"


def unsupported_reason(cfg: ModelConfig) -> str | None:
    """Why no transformers class reproduces `cfg` (naming the config value), or None when one does."""
    try:
        hf_target(cfg)
    except ExportUnsupportedError as err:
        return str(err)
    return None


def hf_target(cfg: ModelConfig) -> HFTarget:
    """The transformers class that computes exactly what `cfg` computes; ExportUnsupportedError naming
    the value that no class reproduces otherwise."""
    counts = count_layers(cfg.pattern)
    pattern, num_layers = cfg.pattern, cfg.num_layers
    if counts["mamba"]:
        if counts["mamba"] == num_layers:
            return MAMBA
        raise ExportUnsupportedError(
            f"model.pattern = {pattern!r} mixes Mamba-1 layers ('m') with other layers: transformers' only "
            "Mamba-1 class, MambaForCausalLM, stacks Mamba-1 layers alone")
    if counts["mamba2"] == num_layers:
        return MAMBA2
    has_attention, has_mlp = counts["attention"] > 0, counts["mlp"] > 0
    rope = has_attention and cfg.attention.rope
    swiglu = has_mlp and cfg.mlp.activation == "swiglu"
    transformer = pattern == "*+" * (num_layers // 2)
    if transformer and rope and swiglu:
        return LLAMA
    if not rope and not swiglu:
        return NEMOTRON_H_UNTIED if cfg.tie_embeddings else NEMOTRON_H
    # Every remaining case has RoPE attention, a SwiGLU MLP or both, outside Llama's exact shape.
    if transformer:
        value = ("model.attention.rope = False" if swiglu else f"model.mlp.activation = {cfg.mlp.activation!r}")
        raise ExportUnsupportedError(
            f"{value} in a Transformer ('*+' pairs): LlamaForCausalLM always applies RoPE and gates its MLP "
            "(SwiGLU), and NemotronHForCausalLM's attention takes no positions and its MLP is ungated")
    mixer_mlp_pairs = num_layers % 2 == 0 and all(
        pattern[i] in "M*" and pattern[i + 1] == "+" for i in range(0, num_layers, 2))
    if rope:
        raise ExportUnsupportedError(
            f"model.attention.rope = True in the hybrid pattern {pattern!r}: NemotronHForCausalLM's attention takes "
            "no positions, BambaForCausalLM rotates only half of each head (ours: all of it), and LlamaForCausalLM "
            "holds only '*+' pairs")
    bamba = ("BambaForCausalLM, whose MLP is SwiGLU, rotates half of each attention head with RoPE "
             "(ours: model.attention.rope = False)" if mixer_mlp_pairs and has_attention else
             "BambaForCausalLM, whose MLP is SwiGLU, fails without attention layers (transformers 5.23)"
             if mixer_mlp_pairs else
             "BambaForCausalLM, whose MLP is SwiGLU, needs every Mamba-2 or attention layer followed by one MLP")
    raise ExportUnsupportedError(
        f"model.mlp.activation = 'swiglu' in the hybrid pattern {pattern!r}: NemotronHForCausalLM's MLP is "
        f"ungated (up_proj, activation, down_proj), {bamba}, and LlamaForCausalLM holds only '*+' pairs")
