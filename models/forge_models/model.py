"""The language model: embedding, one pre-norm residual layer per pattern symbol, final norm, LM head.

Legend: B batch, L length, D d_model, V vocabulary.

Single-device PyTorch: tensor parallelism, checkpointing and ZeRO are applied from outside by
the platform. Documents packed into a row are separated by `seq_idx` (non-decreasing ints);
every mixer resets at a change of seq_idx, so a packed row computes exactly what the documents
would compute alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forge_models.attention import Attention
from forge_models.cache import InferenceCache
from forge_models.config import ModelConfig
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.mlp import MLP
from forge_models.norms import RMSNorm
from forge_models.losses import IGNORE_INDEX, chunked_lm_loss
from forge_models.ops import fused
from forge_models.ops.kernels import check_kernels_choice
from forge_models.ops.ssd import doc_starts
from forge_models.patterns import LayerSpec, parse_pattern

MIXERS: dict[str, type[nn.Module]] = {"mamba2": Mamba2Mixer, "mamba": MambaMixer, "attention": Attention, "mlp": MLP}


def positions_from_seq_idx(seq_idx_BL: torch.Tensor) -> torch.Tensor:
    """Position inside the current document, restarting at 0 where seq_idx changes."""
    length = seq_idx_BL.shape[1]
    arange = torch.arange(length, device=seq_idx_BL.device).expand_as(seq_idx_BL)
    starts = doc_starts(seq_idx_BL)
    starts[:, 0] = True
    start_of_doc = torch.where(starts, arange, torch.zeros_like(arange)).cummax(dim=1).values
    return arange - start_of_doc


class Block(nn.Module):
    """x + mixer(norm(x)): one residual layer of any kind."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.compile_pointwise = cfg.compile_pointwise
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, compiled=cfg.compile_pointwise)
        self.mixer = MIXERS[spec.kind](cfg)

    def forward(self, x_BLD: torch.Tensor, seq_idx_BL: torch.Tensor | None,
                position_ids_BL: torch.Tensor | None, state: object | None = None) -> torch.Tensor:
        """Pre-norm residual layer."""
        if (self.compile_pointwise and state is None and x_BLD.is_cuda and isinstance(self.mixer, MLP)
                and not self.is_hooked()):
            m = self.mixer
            return fused.compiled_mlp_block(
                x_BLD, self.norm.weight, self.norm.eps, m.up_proj.weight,
                None if m.gate_proj is None else m.gate_proj.weight, m.down_proj.weight)
        return x_BLD + self.mixer(self.norm(x_BLD), seq_idx_BL, position_ids_BL, state)

    def is_hooked(self) -> bool:
        """Whether something hooks the norm's or the mixer's call (tensor parallelism's
        communication, a probe). The fused MLP layer reads their weights without calling them,
        so it would skip those hooks: a hooked layer calls its modules (the norm still compiled)."""
        return any(module._forward_pre_hooks or module._forward_hooks for module in (self.norm, self.mixer))


class LanguageModel(nn.Module):
    """A decoder-only LM whose stack is described by `config.pattern`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.specs = parse_pattern(cfg.pattern)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, spec) for spec in self.specs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, compiled=cfg.compile_pointwise)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def reset_parameters(self) -> None:
        """Normal(init_std) everywhere; projections into the residual stream get
        init_std / sqrt(2 * num_layers) so the stream's variance does not grow with depth."""
        cfg = self.config
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        nn.init.normal_(self.embedding.weight, std=cfg.init_std)
        for block in self.layers:
            block.norm.reset_parameters()
            block.mixer.reset_parameters(cfg.init_std, out_std)
        self.final_norm.reset_parameters()
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (works on the meta device). exclude_embeddings drops embedding and LM head."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embedding.weight.numel()
            if self.lm_head is not None:
                total -= self.lm_head.weight.numel()
        return total

    def allocate_cache(self, batch: int, capacity: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> InferenceCache:
        """Decode state for every layer: constant-size for Mamba layers, `capacity` tokens of KV."""
        device = device or self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        states = []
        for block in self.layers:
            mixer = block.mixer
            if isinstance(mixer, Attention):
                states.append(mixer.allocate_state(batch, capacity, device, dtype))
            elif isinstance(mixer, (Mamba2Mixer, MambaMixer)):
                states.append(mixer.allocate_state(batch, device, dtype))
            else:
                states.append(None)
        return InferenceCache(layers=states)

    def forward(
        self,
        input_ids: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: InferenceCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V). seq_idx None means one document per row; position_ids default to
        positions inside each document. With `cache`, continues from the tokens already consumed."""
        return F.linear(self.hidden_states(input_ids, seq_idx, position_ids, cache), self.lm_head_weight())

    def lm_head_weight(self) -> torch.Tensor:
        """The (V, D) output projection: the embedding when tied."""
        return self.embedding.weight if self.lm_head is None else self.lm_head.weight

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, seq_idx: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX, chunk: int = 4096) -> torch.Tensor:
        """language_model_loss(self(input_ids, ...), labels) without materialising the logits
        (chunked LM head + cross-entropy, losses.py): less memory and traffic for training."""
        hidden = self.hidden_states(input_ids, seq_idx, position_ids)
        return chunked_lm_loss(hidden, self.lm_head_weight(), labels, ignore_index=ignore_index, chunk=chunk,
                               fused=self.config.compile_pointwise and hidden.is_cuda)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: InferenceCache | None = None,
    ) -> torch.Tensor:
        """The final-normed hidden states (B, L, D) that the LM head reads (see forward)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        for name, t in (("seq_idx", seq_idx), ("position_ids", position_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if cache is not None and seq_idx is not None:
            raise ValueError("decoding with a cache takes one document per row: pass seq_idx=None")
        if position_ids is None:
            if cache is not None:
                position_ids = cache.offset + torch.arange(input_ids.shape[1], device=input_ids.device)
                position_ids = position_ids.expand_as(input_ids)
            elif seq_idx is not None:
                position_ids = positions_from_seq_idx(seq_idx)
            else:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.embedding(input_ids)
        for i, block in enumerate(self.layers):
            x = block(x, seq_idx, position_ids, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.offset += input_ids.shape[1]
        return self.final_norm(x)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> LanguageModel:
    """Build and initialise a model; on the meta device nothing is allocated or initialised."""
    check_kernels_choice(cfg.kernels)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with device:
        model = LanguageModel(cfg)
    if device.type != "meta":
        model.reset_parameters()
    return model


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored labels, computed in fp32.

    `labels` are already shifted (the packed-batch contract). A batch with no counted label gives
    0 (not nan), so one empty micro-batch cannot poison a data-parallel average.
    """
    losses = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=ignore_index,
                             reduction="sum")
    count = (labels != ignore_index).sum().clamp(min=1)
    return losses / count
