"""forge_models: Mamba-2-Hybrid language models (and the Mamba, Mamba-2, Transformer baselines).

Plain single-device PyTorch. Importing this package never imports mamba_ssm or causal_conv1d:
the CUDA kernels are loaded lazily on the first GPU forward (see ops/kernels.py).
"""

from forge_models import flops
from forge_models.config import AttentionConfig, Mamba2Config, MambaConfig, MLPConfig, ModelConfig
from forge_models.generate import generate
from forge_models.losses import IGNORE_INDEX
from forge_models.model import LanguageModel, build_model, language_model_loss
from forge_models.ops.kernels import FIXED_CONFIG_ENV, kernel_path, use_fixed_kernel_configs
from forge_models.params import keep_fp32_names, no_weight_decay_names, weight_decay_groups
from forge_models.patterns import LayerSpec, allocate_layers, count_layers, parse_pattern
from forge_models.presets import PRESETS, get_preset

__all__ = [
    "FIXED_CONFIG_ENV",
    "IGNORE_INDEX",
    "PRESETS",
    "AttentionConfig",
    "LanguageModel",
    "LayerSpec",
    "MLPConfig",
    "Mamba2Config",
    "MambaConfig",
    "ModelConfig",
    "allocate_layers",
    "build_model",
    "flops",
    "count_layers",
    "generate",
    "get_preset",
    "keep_fp32_names",
    "kernel_path",
    "language_model_loss",
    "no_weight_decay_names",
    "parse_pattern",
    "use_fixed_kernel_configs",
    "weight_decay_groups",
]
