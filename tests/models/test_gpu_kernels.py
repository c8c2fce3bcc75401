"""GPU parity: kernel path == reference path, forward and backward, on packed documents.

Run on the device: `source .carry/bootstrap.sh && python3 -m pytest -m gpu tests/models`.
Tolerances: fp32 kernel vs fp32 reference within 1e-4 relative; bf16 (autocast) kernel vs the
fp32 reference within 1e-2. Each Triton autotuner is pinned to one config first, which cuts a
cold run from ~2 minutes of autotuning to seconds (shared/device/README.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest
import torch

from forge_models import IGNORE_INDEX, ModelConfig, build_model, language_model_loss
from forge_models.config import AttentionConfig, Mamba2Config
from forge_models.ops.kernels import kernel_import_error
from tests.models.helpers import packed_seq_idx, rel_err

# Triton's tl.dot runs fp32 operands as tf32 by default (~3e-4 relative error on the grads that sum
# over every token): the fp32 parity checks ask for IEEE fp32 so they test the algorithm, not tf32.
# Read when a kernel is compiled, so setting it at import is early enough (bf16 dots are unaffected).
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(kernel_import_error() is not None, reason=f"no CUDA kernels: {kernel_import_error()}"),
]

# Sizes the Triton kernels like (head dim 64, conv channels a multiple of 8), still small.
GPU_CFG = ModelConfig(
    vocab_size=512, d_model=256, pattern="M+M*+M",
    mamba2=Mamba2Config(d_state=64, head_dim=64, ngroups=2, chunk_size=64),
    attention=AttentionConfig(num_heads=4, num_kv_groups=2, head_dim=64),
)
DOCS = [[100, 37, 1, 150, 224], [512]]  # two rows of 512 tokens; docs cross chunk boundaries


@pytest.fixture(scope="module", autouse=True)
def _pin_autotuners() -> None:
    """Keep one config per Triton autotuner: correctness tests need no tuning."""
    from triton.runtime.autotuner import Autotuner

    try:
        from mamba_ssm.utils.determinism import _estimate_config_cost as cost
    except ImportError:  # older mamba_ssm: any config is correct
        cost = None
    names = ["ssd_bmm", "ssd_chunk_state", "ssd_state_passing", "ssd_chunk_scan", "ssd_combined",
             "layernorm_gated", "k_activations", "layer_norm"]
    for name in names:
        try:
            module = importlib.import_module("mamba_ssm.ops.triton." + name)
        except ImportError:
            continue
        for obj in vars(module).values():
            for _ in range(4):
                if isinstance(obj, Autotuner) and len(obj.configs) > 1:
                    obj.configs = [min(obj.configs, key=cost) if cost else obj.configs[0]]
                obj = getattr(obj, "fn", None)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    seq_idx = torch.cat([packed_seq_idx(d) for d in DOCS]).cuda()
    ids = torch.randint(0, GPU_CFG.vocab_size, seq_idx.shape, device="cuda")
    return ids, seq_idx


def _run(model: torch.nn.Module, ids: torch.Tensor, seq_idx: torch.Tensor, probe: torch.Tensor,
         dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(ids, seq_idx=seq_idx)
    (logits.float() * probe).sum().backward()
    return logits.float().detach(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def _pair(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    ref = build_model(dataclasses.replace(cfg, kernels="reference"), device="cuda")
    fast = build_model(dataclasses.replace(cfg, kernels="cuda"), device="cuda")
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _report(label: str, logits: float, grads: dict[str, float]) -> tuple[float, str]:
    """Print the measured errors (run pytest with -s to see them); return the worst grad error."""
    worst = max(grads, key=grads.get)
    print(f"\nPARITY {label}: logits rel err {logits:.2e}; max grad rel err {grads[worst]:.2e} ({worst})")
    return grads[worst], worst


def _d_term_magnitudes(model: torch.nn.Module, ids: torch.Tensor, seq_idx: torch.Tensor,
                       probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per Mamba-2 layer, sum over tokens and channels of |dy * x| for each head (fp32 reference run).

    D's gradient is the sum over every token of dy * x (y = scan(x) + D x). With random weights the
    terms nearly cancel, so the plain relative error of the sum divides a rounding error that
    scales with sum |dy * x| by a much smaller |sum dy * x|. This is the scale to judge it by.
    """
    import forge_models.mamba2 as mamba2_module

    captured: dict[str, torch.Tensor] = {}
    current = {"name": ""}
    original = mamba2_module.ssd_scan_ref

    def spy(x, *args, **kwargs):
        y, state = original(x, *args, **kwargs)
        name = current["name"]
        y.register_hook(lambda g: captured.__setitem__(name, (g.float() * x.detach().float()).abs().sum((0, 1, 3))))
        return y, state

    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: current.__setitem__("name", name))
               for name, m in model.named_modules() if isinstance(m, mamba2_module.Mamba2Mixer)]
    mamba2_module.ssd_scan_ref = spy
    try:
        _run(model, ids, seq_idx, probe, torch.float32)
    finally:
        mamba2_module.ssd_scan_ref = original
        for h in handles:
            h.remove()
    return {f"{name}.D": magnitude for name, magnitude in captured.items()}


@pytest.mark.parametrize(("fused", "compiled"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_model_kernel_path_matches_reference(fused: bool, compiled: bool, dtype: torch.dtype, tol: float) -> None:
    """Kernel path (at `dtype`) vs the fp32 reference path: logits and every parameter gradient.

    In bf16 a few gradients that are sums over every token of products of bf16 activations
    (D, dt_bias, conv biases) miss 1e-2 whatever computes them: the pure-PyTorch reference under
    the same bf16 autocast misses it by as much. Those may exceed `tol` by at most 1.5x the
    reference-bf16 error of the same tensor. D's gradient is judged against the size of its terms
    (`_d_term_magnitudes`): |error| <= 1e-3 * sum |dy * x| per head, a quarter of one bf16 rounding
    per term; dropping an eighth of the tokens (a missed chunk) would move it by about 4e-3 here.
    Everything else within `tol`.
    """
    torch.manual_seed(0)
    cfg = dataclasses.replace(GPU_CFG, mamba2=dataclasses.replace(GPU_CFG.mamba2, kernel_fused=fused),
                              attention=dataclasses.replace(GPU_CFG.attention, backend="flex"))
    ref = build_model(dataclasses.replace(cfg, kernels="reference"), device="cuda")
    fast = build_model(dataclasses.replace(cfg, kernels="cuda", compile_pointwise=compiled), device="cuda")
    fast.load_state_dict(ref.state_dict())
    ids, seq_idx = _batch()
    probe = torch.randn(*ids.shape, cfg.vocab_size, device="cuda")
    logits_ref, grads_ref = _run(ref, ids, seq_idx, probe, torch.float32)
    logits_fast, grads_fast = _run(fast, ids, seq_idx, probe, dtype)
    errs = {name: rel_err(grads_fast[name], grad) for name, grad in grads_ref.items()}
    logit_err = rel_err(logits_fast, logits_ref)
    worst, name = _report(f"fused={fused} compiled={compiled} {dtype}", logit_err, errs)
    assert logit_err <= tol
    if dtype == torch.float32:
        assert worst <= tol, name
        return
    logits_rb, grads_rb = _run(ref, ids, seq_idx, probe, dtype)  # the reference path under bf16 autocast
    ref_errs = {n: rel_err(grads_rb[n], g) for n, g in grads_ref.items()}
    print(f"PARITY   reference path itself in bf16: logits {rel_err(logits_rb, logits_ref):.2e}, "
          f"max grad {max(ref_errs.values()):.2e} ({max(ref_errs, key=ref_errs.get)})")
    magnitudes = _d_term_magnitudes(ref, ids, seq_idx, probe)
    assert set(magnitudes) == {n for n in grads_ref if n.endswith("mixer.D")}, sorted(magnitudes)
    for n, magnitude in magnitudes.items():
        scaled = float(((grads_fast[n] - grads_ref[n]).abs() / magnitude).max())
        cancellation = float((magnitude / grads_ref[n].abs().clamp_min(1e-30)).median())
        print(f"PARITY   {n}: rel err {errs[n]:.2e}, |error| / sum|dy x| max {scaled:.2e} "
              f"(terms cancel {cancellation:.0f}x, median head)")
        assert scaled <= 1e-3, (n, scaled)
    over = {n: e for n, e in errs.items() if e > tol and n not in magnitudes}
    for n, e in sorted(over.items(), key=lambda kv: -kv[1]):
        print(f"PARITY   over {tol:g}: {n} kernel {e:.2e} vs reference-bf16 {ref_errs[n]:.2e}")
    bad = sorted(n for n, e in over.items() if e > 1.5 * ref_errs[n])
    assert not bad, bad


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_chunked_loss_on_gpu_matches_full_logits(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(GPU_CFG, kernels="cuda", compile_pointwise=True)
    model = build_model(cfg, device="cuda")
    ids, seq_idx = _batch()
    labels = ids.roll(-1, dims=1)
    labels[0, :50] = IGNORE_INDEX  # ignored labels take the compiled kernels' other branch
    model.zero_grad()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):  # full logits, same precision
        ref_loss = language_model_loss(model(ids, seq_idx=seq_idx), labels)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_loss = ref_loss.detach()
    model.zero_grad()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss = model.loss(ids, labels, seq_idx=seq_idx, chunk=300)
    loss.backward()
    errs = {n: rel_err(p.grad, ref[n]) for n, p in model.named_parameters()}
    worst, name = _report(f"chunked loss {dtype}", rel_err(loss, ref_loss), errs)
    assert rel_err(loss, ref_loss) <= tol
    assert worst <= tol, name


def test_kernel_path_keeps_documents_apart() -> None:
    """On the kernel path, too, a packed row equals its documents run alone."""
    torch.manual_seed(0)
    _, fast = _pair(GPU_CFG)
    ids, seq_idx = _batch()
    with torch.no_grad():
        packed = fast(ids[:1], seq_idx=seq_idx[:1])
        start, pieces = 0, []
        for n in DOCS[0]:
            pieces.append(fast(ids[:1, start : start + n]))
            start += n
    assert rel_err(packed, torch.cat(pieces, dim=1)) <= 1e-4


def test_flex_attention_matches_masked_sdpa() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(GPU_CFG, pattern="*", kernels="reference")
    sdpa = build_model(dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, backend="sdpa")), "cuda")
    flex = build_model(dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, backend="flex")), "cuda")
    flex.load_state_dict(sdpa.state_dict())
    ids, seq_idx = _batch()
    probe = torch.randn(*ids.shape, cfg.vocab_size, device="cuda")
    logits_a, grads_a = _run(sdpa, ids, seq_idx, probe, torch.float32)
    logits_b, grads_b = _run(flex, ids, seq_idx, probe, torch.float32)
    assert rel_err(logits_b, logits_a) <= 1e-4
    for name, grad in grads_a.items():
        assert rel_err(grads_b[name], grad) <= 1e-4, name


def test_decode_on_gpu_equals_forward() -> None:
    torch.manual_seed(0)
    model = build_model(GPU_CFG, device="cuda").eval()
    ids = torch.randint(0, GPU_CFG.vocab_size, (2, 70), device="cuda")
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 70)
        pieces = [model(ids[:, :65], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(65, 70)]
    assert rel_err(torch.cat(pieces, dim=1), full) <= 1e-4


def test_compiled_layers_honour_hooks_on_their_mixers() -> None:
    """Compiled layers must not skip hooks on their modules: tensor parallelism's communication is
    hooked on every mixer and on the final norm (a TP=2 run on two H200s trained wrongly before)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(GPU_CFG, pattern="M+*+", kernels="cuda")
    plain = build_model(cfg, device="cuda")
    compiled = build_model(dataclasses.replace(cfg, compile_pointwise=True), device="cuda")
    compiled.load_state_dict(plain.state_dict())
    ids, seq_idx = _batch()
    for model in (plain, compiled):
        for layer in model.layers:
            layer.mixer.register_forward_hook(lambda module, args, out: 2.0 * out)
        model.final_norm.register_forward_hook(lambda module, args, out: out + 1.0)  # TP hooks it too
    with torch.no_grad():
        assert rel_err(compiled(ids, seq_idx=seq_idx), plain(ids, seq_idx=seq_idx)) <= 1e-4


# --- Calls too large for the kernels' 32-bit offsets (ops/kernel_limits.py) --------------------------
def _mixer_pair(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The first Mamba-2 mixer of `cfg` twice, same weights: kernel path and fp32 reference path."""
    from forge_models.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    fast = Mamba2Mixer(cfg).cuda()
    fast.reset_parameters(cfg.init_std, cfg.init_std)
    ref = Mamba2Mixer(dataclasses.replace(cfg, kernels="reference")).cuda()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("split", ["rows", "segments"])
def test_split_calls_match_the_reference_on_packed_documents(split: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small shapes with a small offset limit: the same code that runs at 128K, every edge exercised.
    Documents cross the segment edges (segments of 128 tokens, chunks of 64), one starts on an edge."""
    import forge_models.ops.mamba2_kernel as mk
    from forge_models.ops.kernel_limits import plan_mamba2_calls

    cfg = dataclasses.replace(GPU_CFG, mamba2=dataclasses.replace(GPU_CFG.mamba2, kernel_fused=True))
    fast, ref = _mixer_pair(cfg)
    widths = mk.mixer_widths(fast)
    length = 512
    limit = 2 * length * widths.per_token() + 1 if split == "rows" else 129 * widths.per_token()
    monkeypatch.setattr(mk, "plan_mamba2_calls", lambda b, n, w: plan_mamba2_calls(b, n, w, limit=limit))
    plan = mk.plan_mamba2_calls(3, length, widths)
    assert (plan.rows_per_call, plan.segment_length) == ((2, None) if split == "rows" else (1, 128))
    seq_idx = torch.cat([packed_seq_idx([100, 100, 56, 200, 56]), packed_seq_idx([512]),
                         packed_seq_idx([128, 300, 84])]).cuda()
    u = torch.randn(3, length, cfg.d_model, device="cuda", requires_grad=True)
    probe = torch.randn(3, length, cfg.d_model, device="cuda")
    outs = {}
    for name, mixer in (("fast", fast), ("ref", ref)):
        u.grad = None
        mixer.zero_grad()
        y = mixer(u, seq_idx)
        (y * probe).sum().backward()
        outs[name] = (y.detach(), u.grad.clone(), {n: p.grad.clone() for n, p in mixer.named_parameters()})
    errs = {"y": rel_err(outs["fast"][0], outs["ref"][0]), "du": rel_err(outs["fast"][1], outs["ref"][1])}
    errs.update({n: rel_err(g, outs["ref"][2][n]) for n, g in outs["fast"][2].items()})
    print(f"SPLIT {split}: worst {max(errs.values()):.2e} ({max(errs, key=errs.get)})")
    assert max(errs.values()) <= 1e-4, errs


def _recomputed_reference(monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    """Make the fp32 reference path's backward fit at 128K tokens without changing its math.

    Its conv and scan are recomputed in backward (torch.utils.checkpoint) instead of saved, the scan
    in `piece`-token pieces (ssd_scan_ref with an initial state; a piece that starts a new document
    starts from zero), so one piece's intermediates are alive at a time. The pieces' edges are not
    the kernel path's segment edges."""
    import forge_models.mamba2 as mamba2_module
    from torch.utils.checkpoint import checkpoint

    conv, scan = mamba2_module.causal_conv1d_ref, mamba2_module.ssd_scan_ref

    def piecewise_scan(x, dt, A, B, C, chunk_size, seq_idx=None, initial_state_BHPN=None):  # noqa: ANN001, ANN202
        ys, state = [], initial_state_BHPN
        for start in range(0, x.shape[1], piece):
            end = start + piece
            if start > 0 and seq_idx is not None:  # zero the state of rows whose document starts here
                state = state * (seq_idx[:, start] == seq_idx[:, start - 1]).float()[:, None, None, None]
            idx = None if seq_idx is None else seq_idx[:, start:end]
            y, state = checkpoint(scan, x[:, start:end], dt[:, start:end], A, B[:, start:end], C[:, start:end],
                                  chunk_size, idx, state, use_reentrant=False)
            ys.append(y)
        return torch.cat(ys, dim=1), state

    monkeypatch.setattr(mamba2_module, "ssd_scan_ref", piecewise_scan)
    monkeypatch.setattr(mamba2_module, "causal_conv1d_ref", lambda *args: checkpoint(conv, *args, use_reentrant=False))


def _worst_near(a: torch.Tensor, b: torch.Tensor, positions: list[list[int]], half: int = 256) -> float:
    """The worst relative error over windows of 2*half tokens around `positions[row]` of each row:
    a state wrongly carried or dropped at an edge touches few tokens, so the global norm would dilute it."""
    return max(rel_err(a[row, max(0, p - half):p + half], b[row, max(0, p - half):p + half])
               for row, row_positions in enumerate(positions) for p in row_positions)


@pytest.mark.parametrize(("preset", "batch", "length"), [("hybrid-8b", 1, 128 * 1024), ("hybrid-2b-anchor", 2, 128 * 1024)])
def test_paper_shapes_past_the_offset_limit_match_the_reference_forward_and_backward(
    preset: str, batch: int, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shapes that crashed with an illegal memory access (8B width at 128K: two sequence segments,
    a document across their edge; 2B width at 128K x 2: one row per call), one mixer of the preset's
    width against the fp32 reference path (`_recomputed_reference`), forward and backward.

    fp32 kernels (IEEE dots): output and input gradient within 1e-4, globally and in windows around
    every segment edge, call start and document start; each parameter gradient within 1e-3 (sums of
    random-sign terms over 131K tokens: rounding is amplified by their cancellation; a lost chunk would
    move them by percents). bf16 autocast, as in training: output and input gradient within 1e-2.
    Every figure is printed before anything is asserted."""
    from forge_models import get_preset
    from forge_models.ops.kernel_limits import plan_mamba2_calls
    from forge_models.ops.mamba2_kernel import mixer_widths

    cfg = get_preset(preset)
    fast, ref = _mixer_pair(cfg)
    plan = plan_mamba2_calls(batch, length, mixer_widths(fast))
    assert not plan.single_call or plan.rows_per_call < batch  # this is a split call
    seq_idx = torch.cat([packed_seq_idx([30_000, length - 30_007, 7])] * batch).cuda()
    edges = list(range(0, length, plan.segment_length or length))
    if plan.segment_length:  # the middle document crosses the segment edge
        assert len(edges) > 1 and seq_idx[0, edges[1]] == seq_idx[0, edges[1] - 1] == 1
    positions = [sorted(set(edges) | set((torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()))
                 for row in seq_idx.cpu()]
    u = (torch.randn(batch, length, cfg.d_model, device="cuda") * 0.5).requires_grad_()
    probe = torch.randn(batch, length, cfg.d_model, device="cuda")

    def run(mixer: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        u.grad = None
        mixer.zero_grad()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = mixer(u, seq_idx)
        (y.float() * probe).sum().backward()
        return y.detach().float(), u.grad.clone(), {n: p.grad.float().clone() for n, p in mixer.named_parameters()}

    with monkeypatch.context() as patch:
        _recomputed_reference(patch, piece=16 * 1024)
        y_ref, du_ref, grads_ref = run(ref, torch.float32)
    peaks = {"reference": torch.cuda.max_memory_allocated() / 2**30}
    failures = []
    for dtype, tol, grad_tol in ((torch.float32, 1e-4, 1e-3), (torch.bfloat16, 1e-2, None)):
        y, du, grads = run(fast, dtype)
        peaks[str(dtype)] = torch.cuda.max_memory_allocated() / 2**30
        errs = {"y": rel_err(y, y_ref), "du": rel_err(du, du_ref),
                "y near edges": _worst_near(y, y_ref, positions), "du near edges": _worst_near(du, du_ref, positions)}
        grad_errs = {n: rel_err(g, grads_ref[n]) for n, g in grads.items()}
        worst = max(grad_errs, key=grad_errs.get)
        print(f"\nPAST LIMIT {preset} {batch} x {length} {dtype} (plan {plan}, edges at {positions}): "
              + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) + f"; worst grad {grad_errs[worst]:.2e} ({worst})")
        print("PAST LIMIT   grads: " + ", ".join(f"{n} {e:.1e}" for n, e in grad_errs.items()))
        failures += [(str(dtype), k, v) for k, v in errs.items() if not v <= tol]
        if grad_tol is not None:
            failures += [(str(dtype), n, e) for n, e in grad_errs.items() if not e <= grad_tol]
    print("PAST LIMIT   peak GiB: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    assert not failures, failures
