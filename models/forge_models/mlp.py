"""Feed-forward layers: GELU 4x (the hybrid's) and SwiGLU (the Transformer baseline's). No biases.

Legend: B batch, L length, D d_model, F hidden width. Separate gate/up weights keep a
column split by F a slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forge_models.config import ModelConfig


class MLP(nn.Module):
    """fc2(act(fc1 x)) for GELU, down(silu(gate x) * up x) for SwiGLU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.activation = cfg.mlp.activation
        hidden = cfg.mlp_hidden_size
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=False)
        self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=False) if self.activation == "swiglu" else None
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def reset_parameters(self, init_std: float, out_std: float) -> None:
        """Normal init; the output projection gets the depth-scaled std."""
        nn.init.normal_(self.up_proj.weight, std=init_std)
        if self.gate_proj is not None:
            nn.init.normal_(self.gate_proj.weight, std=init_std)
        nn.init.normal_(self.down_proj.weight, std=out_std)

    def forward(self, x_BLD: torch.Tensor, *_: object, **__: object) -> torch.Tensor:
        """Position-wise: ignores seq_idx, positions and cache (MLPs need no state)."""
        if self.gate_proj is None:
            return self.down_proj(F.gelu(self.up_proj(x_BLD)))
        return self.down_proj(F.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD))
