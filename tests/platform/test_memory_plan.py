"""The memory plan and the recompute modes it chooses between.

The plan's figures against measured peaks come from the GPU (benchmarks/platform/RESULTS.md);
here: the terms' arithmetic, how layouts shard them, what `auto` picks, the refusals (one line,
before anything starts), and that every recompute mode computes the same gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
from forge_models import build_model, get_preset
from forge_models import memory as act
from forge_platform.config_loader import ConfigError
from forge_platform.config_sections import ParallelConfig, StageConfig, TrainConfig
from forge_platform.memory_plan import (
    choose_recompute,
    count_parameters,
    plan_for_job,
    plan_stage,
)
from forge_platform.parallel.recompute import apply_recompute

from tests.platform.test_job_specs import REPO, run_job

GPU = ParallelConfig(num_workers=1, use_gpu=True)


def stage(seq_len: int, micro_batch: int = 1, recompute: str = "full", zero: int = 2) -> StageConfig:
    return StageConfig(name=f"s{seq_len}", seq_len=seq_len,
                       train=TrainConfig(micro_batch_size=micro_batch, precision="bf16", zero_stage=zero,
                                         recompute=recompute))


def test_full_recompute_keeps_only_every_layers_fp32_input() -> None:
    """A fully recomputed model peaks in its last layer's backward, holding every layer's fp32
    input; what that layer remakes and its working set are the transient."""
    model = get_preset("hybrid-2b-anchor")
    tokens = 65536
    plan = plan_stage(model, stage(tokens), GPU, capacity=None)
    assert plan.moment == f"in layer {model.num_layers - 1}'s backward (mlp)"
    assert plan.terms["saved activations (held)"] == model.num_layers * 4 * model.d_model * tokens
    mlp = act.layer_activations(model, "mlp", 2, 1, fused_mlp=model.compile_pointwise)
    copies = 2 * 3 * model.d_model * model.mlp_hidden_size
    assert plan.terms["transient peak"] == (mlp.saved + mlp.working) * tokens + copies + 2 * 4 * model.d_model * tokens


def test_layouts_shard_the_terms_they_shard() -> None:
    """ZeRO-1 shards optimizer state, ZeRO-2 gradients too, ZeRO-3 weights too; TP slices what its table splits."""
    model = get_preset("hybrid-debug")
    params = count_parameters(model)
    assert params.local(1) == build_model(model, device="meta").num_parameters()
    four = ParallelConfig(num_workers=4)
    by_stage = {z: plan_stage(model, stage(64, zero=z), four, capacity=None).terms for z in (0, 1, 2, 3)}
    full = 4 * params.local(1)
    assert by_stage[0]["optimizer state (AdamW)"] == 2 * full
    assert by_stage[1]["optimizer state (AdamW)"] == 2 * full // 4
    assert by_stage[1]["weights (fp32)"] == by_stage[2]["weights (fp32)"] == full
    assert by_stage[3]["weights (fp32)"] == full // 4
    # Eight tokens: gradients outweigh activations, so the peak falls in the first layer's backward,
    # when every gradient but the (untied) embedding's is held.
    late = {z: plan_stage(model, stage(8, zero=z), four, capacity=None, recompute="full") for z in (1, 2)}
    assert [p.moment for p in late.values()] == ["in layer 0's backward (mamba2)"] * 2
    held = 4 * (params.local(1) - params.embedding.local(1))
    assert late[1].terms["gradients (held)"] == held
    assert late[2].terms["gradients (held)"] == pytest.approx(held / 4, rel=1e-3)
    tp2 = plan_stage(model, stage(64), ParallelConfig(num_workers=2, tensor_parallel=2), capacity=None)
    sliced = sum(p.sliced for p in (*params.layers, params.head, params.embedding, params.other))
    replicated = params.local(1) - sliced
    assert 0 < sliced and 0 < replicated
    assert tp2.terms["weights (fp32)"] == 4 * (replicated + (params.local(1) - replicated) // 2)


def test_recompute_trades_memory_in_order() -> None:
    """At 128K: none needs the most, selective (attention kept) less, full the least."""
    model = get_preset("hybrid-2b-anchor")
    totals = {m: plan_stage(model, stage(131072), GPU, capacity=None, recompute=m).total
              for m in ("none", "selective", "full")}
    assert totals["none"] > totals["selective"] > totals["full"]


def test_auto_takes_the_fastest_mode_that_fits() -> None:
    model = get_preset("hybrid-2b-anchor")
    params = count_parameters(model)
    plans = {m: plan_stage(model, stage(131072), GPU, capacity=None, recompute=m, params=params)
             for m in ("none", "selective", "full")}
    auto = stage(131072, recompute="auto")

    def chosen(capacity: int | None, parallel: ParallelConfig = GPU) -> str:
        return choose_recompute(model, auto, parallel, capacity=capacity, params=params).recompute

    assert chosen(plans["none"].total) == "none"
    assert chosen(plans["none"].total - 1) == "selective"
    assert chosen(plans["selective"].total - 1) == "full"
    assert chosen(None) == "full"  # a GPU of unknown size: the mode that fits the most
    assert chosen(None, ParallelConfig(num_workers=1)) == "none"  # CPU workers: nothing to plan against


def test_a_stage_that_cannot_fit_is_refused_naming_terms_and_a_fix() -> None:
    model = get_preset("hybrid-2b-anchor")
    small = dataclasses.replace(GPU, gpu_memory_gib=80.0)
    with pytest.raises(ConfigError) as err:
        plan_for_job(model, [stage(65536, micro_batch=1, recompute="none")], small, echo=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("stages.s65536: needs ") and "more than the GPU's 80.0 GiB" in message
    assert "saved activations (held)" in message and message.endswith(
        "it would fit with recompute = full (python -m jobs.plan prints every term)")
    with pytest.raises(ConfigError, match="it would fit with recompute = full, micro_batch_size = 1 and grad_accum_steps x4"):
        plan_for_job(model, [stage(65536, micro_batch=4, recompute="full")], small, echo=False)
    resolved = plan_for_job(model, [stage(65536, micro_batch=1, recompute="auto")], small, echo=False)
    assert resolved[0].train.recompute in ("selective", "full")


def test_the_8b_campaign_fits_every_stage_with_context_parallelism() -> None:
    out = subprocess.run([sys.executable, "-m", "jobs.plan", "--config", "jobs/specs/hybrid_8b_campaign.toml"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "128 GPUs as tp 1 x cp 8 x dp 16" in out.stdout
    verdicts = [line for line in out.stdout.splitlines() if "peak (predicted)" in line]
    assert len(verdicts) == 4 and all(v.endswith("fits") for v in verdicts)
    # The layout it had before (TP 4, no CP) cannot hold the 128K stage: every block input is whole on each rank.
    old = subprocess.run([sys.executable, "-m", "jobs.plan", "--config", "jobs/specs/hybrid_8b_campaign.toml",
                          "--parallel.tensor_parallel", "4", "--parallel.context_parallel", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert old.returncode == 1 and "stages.extend-128k: needs" in old.stdout
    bad = subprocess.run([sys.executable, "-m", "jobs.plan", "--config", "jobs/specs/hybrid_8b_campaign.toml",
                          "--stages.0.train.recompute", "some"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "recompute" in bad.stderr


def test_pretrain_refuses_a_stage_that_cannot_fit_before_ray_starts(packed_data) -> None:
    out = run_job("jobs.pretrain", "--train_manifest", str(packed_data.manifest), "--stage.seq_len", "64",
                  "--model.preset", "hybrid-2b-anchor", "--parallel.use_gpu", "true", "--parallel.num_workers", "1",
                  "--parallel.gpu_memory_gib", "16", "--stage.train.precision", "bf16")
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stages.pretrain: needs" in errors[0] and "more than the GPU's 16.0 GiB" in errors[0]
    assert "Started a local Ray instance" not in out.stdout + out.stderr


@pytest.mark.parametrize("mode,wrapped", [("none", 0), ("selective", 6), ("full", 7)])
def test_every_recompute_mode_gives_the_same_gradients(mode: str, wrapped: int) -> None:
    """Recompute changes memory, never the numbers: same loss and gradients as no recompute, and
    the recomputed layers really run their forward twice (attention only under full)."""
    torch.manual_seed(0)
    cfg = get_preset("hybrid-debug")  # M+M*+M+: 7 layers, one attention
    base = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    seq_idx = torch.tensor([[0] * 20 + [1] * 12, [0] * 32])

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
        calls: dict[str, int] = {}
        for block in model.layers:
            block.mixer.register_forward_pre_hook(
                lambda m, *_: calls.__setitem__(type(m).__name__, calls.get(type(m).__name__, 0) + 1))
        loss = model.loss(ids, ids, seq_idx=seq_idx)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, calls

    reference = run(copy.deepcopy(base))
    model = copy.deepcopy(base)
    assert apply_recompute(model, mode) == wrapped
    loss, grads, calls = run(model)
    assert torch.equal(loss, reference[0])
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=0, atol=0, msg=name)
    forwards = {"none": (3, 3, 1), "selective": (6, 6, 1), "full": (6, 6, 2)}[mode]
    assert (calls["Mamba2Mixer"], calls["MLP"], calls["Attention"]) == forwards


def test_auto_is_resolved_before_a_model_is_parallelized() -> None:
    model = build_model(get_preset("hybrid-debug"))
    with pytest.raises(ValueError, match="'auto' is resolved by the memory plan"):
        apply_recompute(model, "auto")


def test_context_parallelism_divides_the_per_token_terms() -> None:
    """cp ranks each hold 1/cp of the tokens: block inputs (fully recomputed) shrink cp-fold; the
    mixers' whole-row extras and the all-gather buffers are added; ZeRO shards over dp x cp."""
    model = get_preset("hybrid-2b-anchor")
    tokens = 65536
    one = plan_stage(model, stage(tokens), ParallelConfig(num_workers=4, use_gpu=True), capacity=None)
    cp4 = plan_stage(model, stage(tokens), ParallelConfig(num_workers=4, context_parallel=4, use_gpu=True),
                     capacity=None)
    block_input = 4 * model.d_model * tokens  # fp32, the whole sequence
    assert one.terms["saved activations (held)"] == model.num_layers * block_input
    held_inputs, rest = divmod(cp4.terms["saved activations (held)"], block_input // 4)  # the shards' inputs only
    assert rest == 0 and 0 < held_inputs <= model.num_layers
    zero_bucket = 4 * 500_000_000
    assert cp4.terms["communication buffers"] == zero_bucket + 2 * 2 * model.d_model * tokens
    # dp 4 (cp 1) and dp 1 x cp 4 shard the ZeRO-2 state over the same four replicas.
    assert cp4.terms["optimizer state (AdamW)"] == one.terms["optimizer state (AdamW)"]
    assert cp4.terms["transient peak"] < one.terms["transient peak"] / 2


def test_an_unfit_stage_is_offered_a_larger_context_parallel_degree() -> None:
    """hybrid-2b-anchor at 256K on 8 GPUs of 80 GiB as cp 2: the fix offered is cp 4 (ZeRO-3, which
    context parallelism refuses, is not offered)."""
    model = get_preset("hybrid-2b-anchor")
    eight = ParallelConfig(num_workers=8, context_parallel=2, use_gpu=True, gpu_memory_gib=80.0)
    with pytest.raises(ConfigError, match=r"it would fit with recompute = full, micro-batch 1, context_parallel = 4 "):
        plan_for_job(model, [stage(262144)], eight, echo=False)


def test_a_sequence_length_or_zero_stage_context_parallelism_cannot_run_is_refused() -> None:
    two = ParallelConfig(num_workers=2, context_parallel=2)
    with pytest.raises(ConfigError, match=r"stages.s4097: seq_len = 4097 is not divisible by parallel.context_parallel = 2"):
        plan_for_job(get_preset("hybrid-debug"), [stage(4097)], two, echo=False)
    with pytest.raises(ConfigError, match=r"stages.s64: train.zero_stage = 3 with parallel.context_parallel = 2"):
        plan_for_job(get_preset("hybrid-debug"), [stage(64, zero=3)], two, echo=False)


def test_sequence_parallelism_divides_the_block_inputs_by_tp() -> None:
    model = get_preset("hybrid-2b-anchor")
    tokens = 65536
    tp2 = ParallelConfig(num_workers=2, tensor_parallel=2, use_gpu=True)
    plain = plan_stage(model, stage(tokens), tp2, capacity=None)
    sp = plan_stage(model, stage(tokens), dataclasses.replace(tp2, sequence_parallel=True), capacity=None)
    # Fully recomputed, both peak at the loss holding every layer's input and the final norm's:
    # whole rows at TP 2, half rows with SP, so SP holds 57 half rows fewer.
    assert plain.moment == sp.moment == "at the loss"
    block_input = 4 * model.d_model * tokens
    held = plain.terms["saved activations (held)"] - sp.terms["saved activations (held)"]
    assert held == (model.num_layers + 1) * block_input // 2
    with pytest.raises(ConfigError, match=r"seq_len = 4097 is not divisible by parallel.tensor_parallel x "):
        plan_for_job(model, [stage(4097)], dataclasses.replace(tp2, sequence_parallel=True), echo=False)
