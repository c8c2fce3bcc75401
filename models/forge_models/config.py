"""Model configuration: nested dataclasses, one docstring per field, validated where born.

Every field is a plain type (int / float / bool / str), a `Literal` of fixed choices, or a nested
dataclass with a default factory, so the platform's generic dict/TOML loader can build a
`ModelConfig` from plain dicts and `dataclasses.replace` works at every level. Values that depend
on other fields (e.g. the MLP width) use 0 as "derive from d_model" and are resolved by small
properties, never by mutating the config.

Errors name a field by its path in a job spec, whose `[model]` section holds this config
(`model.mamba2.head_dim = 48: must be ...`, the same path as the `--model.mamba2.head_dim` override).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from forge_models.patterns import parse_pattern

KernelChoice = Literal["auto", "reference", "cuda"]
Activation = Literal["gelu", "swiglu"]
AttentionBackend = Literal["auto", "sdpa", "flex"]


def _fail(path: str, value: object, allowed: str) -> None:
    """Raise the one error shape of every config check (the platform's too): `section.field = value: must be ...`."""
    raise ValueError(f"{path} = {value!r}: must be {allowed}")


def _check_positive(path: str, value: int | float) -> None:
    if value <= 0:
        _fail(path, value, "> 0")


def _check_choice(path: str, value: object, choices: object) -> None:
    """`choices` is a Literal type: its values are written once, in the field's annotation."""
    allowed = get_args(choices)
    if value not in allowed:
        _fail(path, value, "one of " + ", ".join(repr(a) for a in allowed))


@dataclass
class Mamba2Config:
    """Mamba-2 mixer (`M` in a pattern). Defaults are the paper's (Section 3.1)."""

    d_state: int = 128
    """SSM state size N per head."""
    d_conv: int = 4
    """Width of the depthwise causal convolution over x, B, C."""
    expand: int = 2
    """d_inner = expand * d_model."""
    head_dim: int = 64
    """Channels per SSM head P; num_heads = d_inner / head_dim."""
    ngroups: int = 8
    """Groups sharing B and C (like GQA) and the groups of the gated RMSNorm; a TP plan divides it."""
    chunk_size: int = 256
    """Chunk length of the SSD scan (reference and kernel)."""
    conv_bias: bool = True
    """Bias in the depthwise conv (mamba_ssm and Megatron keep it; linear layers have none)."""
    dt_min: float = 0.001
    """Lower end of the log-uniform dt initialisation."""
    dt_max: float = 0.1
    """Upper end of the log-uniform dt initialisation."""
    dt_init_floor: float = 1e-4
    """dt values below this are clamped at initialisation."""
    a_init_min: float = 1.0
    """A = -exp(A_log) is initialised uniform in [a_init_min, a_init_max]."""
    a_init_max: float = 16.0
    """Upper end of the A initialisation range."""
    kernel_fused: bool = True
    """On the CUDA path, use mamba_ssm's fused conv+scan+norm+out-proj (faster) instead of separate kernels."""

    def __post_init__(self) -> None:
        for name in ("d_state", "d_conv", "expand", "head_dim", "ngroups", "chunk_size"):
            _check_positive(f"model.mamba2.{name}", getattr(self, name))
        if not 0 < self.dt_min <= self.dt_max:
            _fail("model.mamba2.dt_min", self.dt_min, f"in (0, model.mamba2.dt_max = {self.dt_max}]")
        if not 0 < self.a_init_min <= self.a_init_max:
            _fail("model.mamba2.a_init_min", self.a_init_min, f"in (0, model.mamba2.a_init_max = {self.a_init_max}]")


@dataclass
class MambaConfig:
    """Mamba-1 mixer (`m` in a pattern). The paper's 8B Mamba uses state 128 (Section 3.1)."""

    d_state: int = 128
    """SSM state size N per channel."""
    d_conv: int = 4
    """Width of the depthwise causal convolution over x."""
    expand: int = 2
    """d_inner = expand * d_model."""
    dt_rank: int = 0
    """Rank of the dt projection; 0 means ceil(d_model / 16) as in Gu & Dao 2023."""
    conv_bias: bool = True
    """Bias in the depthwise conv."""
    dt_min: float = 0.001
    """Lower end of the log-uniform dt initialisation."""
    dt_max: float = 0.1
    """Upper end of the log-uniform dt initialisation."""
    dt_init_floor: float = 1e-4
    """dt values below this are clamped at initialisation."""

    def __post_init__(self) -> None:
        for name in ("d_state", "d_conv", "expand"):
            _check_positive(f"model.mamba.{name}", getattr(self, name))
        if self.dt_rank < 0:
            _fail("model.mamba.dt_rank", self.dt_rank, "0 (auto) or a positive int")
        if not 0 < self.dt_min <= self.dt_max:
            _fail("model.mamba.dt_min", self.dt_min, f"in (0, model.mamba.dt_max = {self.dt_max}]")


@dataclass
class AttentionConfig:
    """Causal self-attention (`*` in a pattern) with GQA; the hybrid's is 32 heads, 8 groups, 128."""

    num_heads: int = 32
    """Query heads."""
    num_kv_groups: int = 8
    """Key/value heads (GQA groups); must divide num_heads. Equal to num_heads means MHA."""
    head_dim: int = 128
    """Channels per head ("KV channels" in the paper)."""
    rope: bool = False
    """Rotary embeddings from position_ids (Transformer baseline: on; hybrid: off)."""
    rope_base: float = 10000.0
    """RoPE base frequency."""
    backend: AttentionBackend = "auto"
    """"sdpa" (explicit doc mask), "flex" (flex_attention block mask) or "auto" (flex on CUDA)."""

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_kv_groups", "head_dim"):
            _check_positive(f"model.attention.{name}", getattr(self, name))
        if self.num_heads % self.num_kv_groups:
            _fail("model.attention.num_kv_groups", self.num_kv_groups,
                  f"a divisor of model.attention.num_heads = {self.num_heads}")
        if self.rope and self.head_dim % 2:
            _fail("model.attention.head_dim", self.head_dim, "even when model.attention.rope is true")
        _check_positive("model.attention.rope_base", self.rope_base)
        _check_choice("model.attention.backend", self.backend, AttentionBackend)


@dataclass
class MLPConfig:
    """Feed-forward layer (`+` in a pattern): GELU 4x (hybrid) or SwiGLU (Transformer)."""

    activation: Activation = "gelu"
    """"gelu" (two matrices) or "swiglu" (gate, up, down)."""
    hidden_size: int = 0
    """Inner width; 0 means 4 * d_model."""

    def __post_init__(self) -> None:
        _check_choice("model.mlp.activation", self.activation, Activation)
        if self.hidden_size < 0:
            _fail("model.mlp.hidden_size", self.hidden_size, "0 (= 4 * d_model) or a positive int")


@dataclass
class ModelConfig:
    """A whole language model: embedding, a stack described by `pattern`, final norm, LM head."""

    vocab_size: int = 256000
    """Vocabulary size (the paper's SentencePiece vocabulary is 256K)."""
    d_model: int = 4096
    """Hidden size of the residual stream."""
    pattern: str = "M+"
    """One symbol per layer: M Mamba-2, m Mamba-1, * attention, + MLP (see patterns.py)."""
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    """Settings of every `M` layer."""
    mamba: MambaConfig = field(default_factory=MambaConfig)
    """Settings of every `m` layer."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Settings of every `*` layer."""
    mlp: MLPConfig = field(default_factory=MLPConfig)
    """Settings of every `+` layer."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head (the paper unties them)."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm (pre-norms, final norm, Mamba-2 gated norm)."""
    init_std: float = 0.02
    """Std of the normal init of linear and embedding weights."""
    kernels: KernelChoice = "auto"
    """"auto" (CUDA kernels when on GPU and installed), "reference" (pure PyTorch) or "cuda" (forced)."""
    compile_pointwise: bool = False
    """On CUDA (training and prefill without cache), run every RMSNorm and each whole MLP layer
    (norm + MLP + residual) through torch.compile'd functions (ops/fused.py), and the chunked
    loss's softmax work (losses.py): fused kernels and fewer saved activations. The first step
    pays the compilation (tens of seconds)."""

    def __post_init__(self) -> None:
        # Nested sections may arrive as dicts from a loader that does not recurse.
        for name, cls in (("mamba2", Mamba2Config), ("mamba", MambaConfig),
                          ("attention", AttentionConfig), ("mlp", MLPConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        _check_positive("model.vocab_size", self.vocab_size)
        _check_positive("model.d_model", self.d_model)
        _check_positive("model.norm_eps", self.norm_eps)
        _check_positive("model.init_std", self.init_std)
        _check_choice("model.kernels", self.kernels, KernelChoice)
        try:
            kinds = {spec.kind for spec in parse_pattern(self.pattern)}
        except ValueError as err:  # the one check of a pattern, named by its path in a job spec
            raise ValueError(f"model.{err}") from None
        if "mamba2" in kinds:
            self._check_mamba2()
        if "mamba" in kinds and self.mamba.d_conv < 1:
            _fail("model.mamba.d_conv", self.mamba.d_conv, ">= 1")

    def _check_mamba2(self) -> None:
        m = self.mamba2
        d_inner = m.expand * self.d_model
        if d_inner % m.head_dim:
            _fail("model.mamba2.head_dim", m.head_dim, f"a divisor of model.mamba2.expand * model.d_model = {d_inner}")
        num_heads = d_inner // m.head_dim
        if num_heads % m.ngroups:
            _fail("model.mamba2.ngroups", m.ngroups, f"a divisor of the number of heads ({num_heads})")

    # Derived sizes: read-only views so the config itself stays exactly what the user wrote.
    @property
    def mamba2_d_inner(self) -> int:
        """Inner width of a Mamba-2 layer."""
        return self.mamba2.expand * self.d_model

    @property
    def mamba2_num_heads(self) -> int:
        """Number of SSM heads of a Mamba-2 layer."""
        return self.mamba2_d_inner // self.mamba2.head_dim

    @property
    def mamba_d_inner(self) -> int:
        """Inner width of a Mamba-1 layer."""
        return self.mamba.expand * self.d_model

    @property
    def mamba_dt_rank(self) -> int:
        """Rank of Mamba-1's dt projection."""
        return self.mamba.dt_rank or math.ceil(self.d_model / 16)

    @property
    def mlp_hidden_size(self) -> int:
        """Inner width of an MLP layer."""
        return self.mlp.hidden_size or 4 * self.d_model

    @property
    def num_layers(self) -> int:
        """Number of layers (symbols) in the pattern."""
        return len(self.pattern)
