"""The decode traffic model and the decode benchmark script (CPU smoke run, tiny presets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forge_models import build_model, get_preset
from forge_models.inference.traffic import decode_step_traffic, predicted_speedup

REPO = Path(__file__).resolve().parents[2]


def test_traffic_counts_weights_once_and_kv_per_row_and_token() -> None:
    cfg = get_preset("transformer-debug")
    model = build_model(cfg, device="meta")
    table = cfg.vocab_size * cfg.d_model  # untied: of the input table only the looked-up rows are read
    one, four = decode_step_traffic(cfg, 1, 100), decode_step_traffic(cfg, 4, 100)
    assert one.weight_bytes == 2 * (model.num_parameters() - table) + 2 * cfg.d_model
    assert four.weight_bytes - one.weight_bytes == 3 * 2 * cfg.d_model
    kv_per_token_row = 2 * 2 * cfg.attention.num_kv_groups * cfg.attention.head_dim * 2  # K+V, 2 layers, bf16
    assert one.kv_bytes == kv_per_token_row * 101 and four.kv_bytes == 4 * one.kv_bytes
    assert one.state_bytes == 0 and four.logits_bytes == 4 * 2 * 2 * cfg.vocab_size


def test_hybrid_state_is_constant_and_its_predicted_speedup_grows_with_context() -> None:
    hybrid, transformer = get_preset("hybrid-2b-bench"), get_preset("transformer-2b-bench")
    short, long = decode_step_traffic(hybrid, 1, 4096), decode_step_traffic(hybrid, 1, 131072)
    assert short.state_bytes == long.state_bytes > 0
    ratios = [predicted_speedup(decode_step_traffic(hybrid, b, c), decode_step_traffic(transformer, b, c))
              for b in (1, 64) for c in (4096, 131072)]
    assert ratios[1] > ratios[0] and ratios[3] > ratios[2] and ratios[3] > ratios[1]
    assert 1.8 < ratios[1] < 2.3  # issue #15: "~2x at batch 1 and 128K for the 2B presets"
    with pytest.raises(ValueError, match="batch=0"):
        decode_step_traffic(hybrid, 0, 16)


def test_decode_benchmark_runs_on_cpu_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    cmd = [sys.executable, "benchmarks/models/bench_decode.py", "--presets", "hybrid-debug", "transformer-debug",
           "--pair", "hybrid-debug", "transformer-debug", "--device", "cpu", "--contexts", "16", "48",
           "--batches", "1", "2", "--steps", "1", "--prefill-contexts", "24", "--json", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    points = result["points"]
    assert len(points) == 8 and all(p["ms_per_token"] > 0 and p["achieved_gb_s"] > 0 for p in points)
    assert {(s["batch"], s["context"]) for s in result["speedups"]} == {(1, 16), (1, 48), (2, 16), (2, 48)}
    assert [p["context"] for p in result["prefill"]] == [24, 24]
    png = tmp_path / "speedup.png"
    subprocess.run([sys.executable, "benchmarks/models/plot_decode.py", str(out), str(png)], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=120)
    assert png.stat().st_size > 1000
