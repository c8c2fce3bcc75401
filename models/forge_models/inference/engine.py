"""The inference engine: packed prefill, then a static (CUDA-graph) decode step, per-row lengths and EOS.

Legend: n prompts in a call, V vocabulary.

    engine = InferenceEngine(model, max_batch=8, max_seq_len=4096)
    outs = engine.generate([prompt_a, prompt_b], max_new_tokens=64, eos_id=2,
                           sampling=SamplingConfig(temperature=0.7, top_k=50, seed=0))

`outs[i]` holds prompt i's new tokens (up to and including its EOS). Prompts of any lengths run
together: the prefill packs them into one row (prefill.py), each row keeps its own length in the
decode buffers (buffers.py), and the step (decode_step.py) is replayed from a CUDA graph of the
batch's bucket on CUDA (cuda_graph.py), run eagerly elsewhere. On CPU everything takes the
reference ops, which makes the engine testable against `forge_models.generate.generate`, the
plain prefill-then-step loop kept as the oracle.

The engine copies Mamba-2's concatenated weights once; call `refresh_weights()` after changing
the model's weights in place (the graphs keep reading the same tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forge_models.inference.buffers import DecodeBuffers
from forge_models.inference.cuda_graph import GraphedDecodeStep
from forge_models.inference.decode_step import DecodeProgram
from forge_models.inference.prefill import packed_prefill
from forge_models.inference.sampling import SamplingConfig, choose_next
from forge_models.mamba1 import MambaMixer
from forge_models.mamba2 import Mamba2Mixer
from forge_models.model import LanguageModel
from forge_models.ops import kernels

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
CONV_UPDATE_WIDTHS = (2, 3, 4)  # causal_conv1d_update's kernel is built for these conv widths
EOS_CHECK_EVERY = 8  # read "all rows finished?" back to the host every this many steps, not every step


def check_servable(model: LanguageModel, use_kernels: bool) -> None:
    """Refuse a model the decode kernels cannot run, naming the setting."""
    if model.embedding.weight.device.type == "meta":
        raise ValueError("the model is on the meta device: load or initialise its weights before serving it")
    if not use_kernels:
        return
    for block in model.layers:
        mixer = block.mixer
        section = "mamba2" if isinstance(mixer, Mamba2Mixer) else "mamba" if isinstance(mixer, MambaMixer) else None
        if section is not None and mixer.d_conv not in CONV_UPDATE_WIDTHS:
            raise ValueError(f"model.{section}.d_conv = {mixer.d_conv}: the CUDA decode kernel causal_conv1d_update "
                             f"serves conv widths {CONV_UPDATE_WIDTHS}; use kernels='reference' for this model")


class InferenceEngine:
    """Batched generation for one model with static buffers for up to `max_batch` rows of `max_seq_len` tokens."""

    def __init__(self, model: LanguageModel, max_batch: int, max_seq_len: int,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, cuda_graphs: bool | None = None,
                 max_prefill_tokens: int = 65536, compiled_pointwise: bool | None = None) -> None:
        buckets = tuple(sorted(buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"buckets={buckets}: must be batch sizes >= 1")
        if not 1 <= max_batch <= buckets[-1]:
            raise ValueError(f"max_batch={max_batch}: must be in [1, {buckets[-1]}] (the largest graph bucket)")
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len={max_seq_len}: must be >= 2 (a prompt token and a new one)")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens={max_prefill_tokens}: must be >= 1")
        weight = model.embedding.weight
        # The model's train/eval mode is left alone: no layer here behaves differently in training.
        self.model, self.device, self.dtype = model, weight.device, weight.dtype
        self.use_kernels = weight.device.type != "meta" and kernels.use_kernels(model.config.kernels, weight)
        check_servable(model, self.use_kernels)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA model, this one is on {self.device}")
        if compiled_pointwise and self.device.type != "cuda":
            raise ValueError(f"compiled_pointwise=True is for CUDA models, this one is on {self.device}")
        self.buckets = tuple(b for b in buckets if b < max_batch) + (self.bucket_for(max_batch, buckets),)
        self.max_batch, self.max_seq_len, self.max_prefill_tokens = max_batch, max_seq_len, max_prefill_tokens
        self.buffers = DecodeBuffers(model, self.buckets[-1], max_seq_len, self.device, self.dtype)
        compiled = self.device.type == "cuda" if compiled_pointwise is None else compiled_pointwise
        self.program = DecodeProgram(model, self.buffers, self.use_kernels, compiled_pointwise=compiled)
        use_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.graphs = (GraphedDecodeStep(self.program, self.buffers.lengths, self.buckets[-1], self.device)
                       if use_graphs else None)

    @staticmethod
    def bucket_for(batch: int, buckets: Sequence[int]) -> int:
        """The smallest bucket that holds `batch` rows."""
        for bucket in buckets:
            if bucket >= batch:
                return bucket
        raise ValueError(f"batch of {batch} prompts is larger than the largest graph bucket {max(buckets)}")

    def refresh_weights(self) -> None:
        """Re-read the model's weights into the step's concatenated copies (after an in-place load)."""
        self.program.refresh_weights()

    def decode_step(self, tokens_b: torch.Tensor) -> torch.Tensor:
        """One step for the first len(tokens_b) rows (a bucket): logits (b, V). Graph replay when captured."""
        if self.graphs is not None:
            rows = tokens_b.shape[0]
            if not self.graphs.captured(rows):
                raise RuntimeError(f"no CUDA graph for {rows} rows: call prepare({rows}) before the prefill")
            return self.graphs.step(tokens_b)
        return self.program(tokens_b)

    def prepare(self, rows: int) -> None:
        """Capture the graph of bucket `rows` if needed (this clobbers the buffers: call before a prefill)."""
        if self.graphs is not None and not self.graphs.captured(rows):
            self.graphs.capture(rows)

    def prefill(self, prompts: Sequence[torch.Tensor], rows: int) -> torch.Tensor:
        """Reset the first `rows` rows and run the prompts packed into them: last-position logits (n, V).

        Prompts are packed greedily into calls of at most max_prefill_tokens tokens (one longer
        prompt is a call of its own), which bounds the activations and the kernels' offsets."""
        self.buffers.reset_rows(slice(0, rows))
        logits, pack, pack_tokens, first = [], [], 0, 0
        for prompt in prompts:
            if pack and pack_tokens + prompt.numel() > self.max_prefill_tokens:
                logits.append(packed_prefill(self.model, pack, self.buffers, first, self.use_kernels))
                first, pack, pack_tokens = first + len(pack), [], 0
            pack.append(prompt)
            pack_tokens += prompt.numel()
        logits.append(packed_prefill(self.model, pack, self.buffers, first, self.use_kernels))
        return torch.cat(logits)

    def _check_request(self, prompts: Sequence[torch.Tensor], max_new_tokens: int) -> None:
        if not prompts:
            raise ValueError("prompts is empty: pass at least one prompt")
        if len(prompts) > self.max_batch:
            raise ValueError(f"batch of {len(prompts)} prompts is larger than the engine's max_batch {self.max_batch} "
                             f"(graph buckets {self.buckets})")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0")
        for i, prompt in enumerate(prompts):
            if prompt.dim() != 1 or prompt.numel() == 0:
                raise ValueError(f"prompt {i} has shape {tuple(prompt.shape)}: each prompt must be 1-D and non-empty")
            if prompt.numel() + max_new_tokens > self.max_seq_len:
                raise ValueError(f"prompt {i} has {prompt.numel()} tokens + max_new_tokens {max_new_tokens} = "
                                 f"{prompt.numel() + max_new_tokens} > the engine's max_seq_len {self.max_seq_len}")

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int] | torch.Tensor], max_new_tokens: int,
                 eos_id: int | None = None, sampling: SamplingConfig | None = None) -> list[torch.Tensor]:
        """New tokens per prompt (on the CPU), each cut after its first eos_id; at most max_new_tokens."""
        sampling = sampling or SamplingConfig()
        prompts = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
        self._check_request(prompts, max_new_tokens)
        num, rows = len(prompts), self.bucket_for(len(prompts), self.buckets)
        if max_new_tokens == 0:
            return [torch.zeros(0, dtype=torch.long) for _ in prompts]
        self.prepare(rows)
        logits = self.prefill(prompts, rows)
        generator = sampling.generator(self.device)
        tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        finished = torch.zeros(num, dtype=torch.bool, device=self.device)
        chosen = []
        for step in range(max_new_tokens):
            next_ids = choose_next(logits, sampling, generator)
            if eos_id is not None:
                next_ids = torch.where(finished, torch.full_like(next_ids, eos_id), next_ids)
                finished = finished | (next_ids == eos_id)
            chosen.append(next_ids)
            if step + 1 == max_new_tokens:
                break
            if eos_id is not None and (step + 1) % EOS_CHECK_EVERY == 0 and bool(finished.all()):
                break
            tokens[:num] = next_ids
            logits = self.decode_step(tokens)[:num]
        out = torch.stack(chosen, dim=1).cpu()
        return [_cut_after_eos(row, eos_id) for row in out]


def _cut_after_eos(row: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    if eos_id is None:
        return row
    hits = (row == eos_id).nonzero()
    return row if hits.numel() == 0 else row[: int(hits[0, 0]) + 1]
