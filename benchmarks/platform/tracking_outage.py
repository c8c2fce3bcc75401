"""What logging costs a training step with the MLflow server up, then killed, then back.

    python benchmarks/platform/tracking_outage.py                    # 200 steps up, 200 down, 50 back
    python benchmarks/platform/tracking_outage.py --steps 100 --compute-ms 20

(with `PYTHONPATH=models:platform:data_pipeline:evaluation:.`). Rank 0's logger is built exactly as
the trainer builds it (`build_logger`); each "step" is `--compute-ms` of matrix products followed by
a `log` of the trainer's six per-step metrics. The server (a local `mlflow server`, SQLite) is
killed with SIGKILL after the first phase and restarted on the same port and store for the last.
Prints, per phase, the time `log` took (median, p99, max) and the whole step's time, then checks
that every point is in MLflow exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch
from forge_platform.config_sections import TrackingConfig
from forge_platform.tracking.loggers import build_logger
from forge_platform.tracking.mlflow_server import free_port, local_mlflow_server
from forge_platform.tracking.runs import MlflowRuns
from mlflow.tracking import MlflowClient

KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "memory_gib", "mfu")


def fake_step(compute_ms: float, a: torch.Tensor) -> None:
    """About `compute_ms` of work on this process's CPU."""
    deadline = time.perf_counter() + compute_ms / 1000
    while time.perf_counter() < deadline:
        a @ a


def run_phase(logger, steps: range, compute_ms: float) -> tuple[list[float], list[float]]:
    """(seconds in `log`, seconds per whole step) for each step."""
    a = torch.randn(128, 128)
    log_s, step_s = [], []
    for step in steps:
        started = time.perf_counter()
        fake_step(compute_ms, a)
        before_log = time.perf_counter()
        logger.log({k: step + i / 10 for i, k in enumerate(KEYS)}, step=step)
        done = time.perf_counter()
        log_s.append(done - before_log)
        step_s.append(done - started)
    return log_s, step_s


def describe(name: str, log_s: list[float], step_s: list[float]) -> str:
    ordered = sorted(log_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"{name:<12} log(): median {statistics.median(log_s) * 1e6:7.1f} us, p99 {p99 * 1e6:8.1f} us, "
            f"max {max(log_s) * 1e3:7.2f} ms, total {sum(log_s) * 1e3:6.1f} ms | step: median "
            f"{statistics.median(step_s) * 1e3:6.2f} ms, mean {statistics.mean(step_s) * 1e3:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps with the server up, and again with it down")
    parser.add_argument("--compute-ms", type=float, default=10.0, help="work per step before its log call")
    parser.add_argument("--max-buffered", type=int, default=10_000, help="tracking.max_buffered_metrics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tracking-outage-"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracking = TrackingConfig(uri=uri, system_metrics_interval_s=0, spill_dir=str(root / "spill"),
                              max_buffered_metrics=args.max_buffered)
    up_steps = range(1, args.steps + 1)
    down_steps = range(args.steps + 1, 2 * args.steps + 1)
    back_steps = range(2 * args.steps + 1, 2 * args.steps + 51)
    with contextlib.ExitStack() as first:
        server = first.enter_context(local_mlflow_server(root / "store", port=port))
        runs = MlflowRuns(uri, "tracking-outage", tracking.spill_dir)
        run_id = runs.start("benchmark", {"steps": args.steps, "compute_ms": args.compute_ms})
        logger = build_logger(tracking, rank=0, run_id=run_id, prefix="")
        logger.loggers = logger.loggers[:1]  # MLflow only: the console logger's prints are not what is measured
        up = run_phase(logger, up_steps, args.compute_ms)
        time.sleep(1.0)  # let the sender catch up, so the outage starts from an empty buffer
        os.killpg(server.pid, signal.SIGKILL)
        time.sleep(0.5)
        down = run_phase(logger, down_steps, args.compute_ms)
    with local_mlflow_server(root / "store", port=port):
        back = run_phase(logger, back_steps, args.compute_ms)
        started = time.perf_counter()
        logger.close()
        close_s = time.perf_counter() - started
        runs.finish(run_id)
        client = MlflowClient(uri)
        counts = {k: [m.step for m in client.get_metric_history(run_id, k)] for k in KEYS}
    print(describe("server up", *up))
    print(describe("server down", *down))
    print(describe("server back", *back))
    print(f"close() with {len(back_steps)} steps just logged: {close_s:.2f} s")
    expected = list(range(1, back_steps[-1] + 1))
    exact = all(sorted(steps) == expected for steps in counts.values())
    print(f"points in MLflow: {sum(len(s) for s in counts.values())} of {len(KEYS) * len(expected)} logged; "
          f"every (key, step) exactly once: {exact}")
    # The median step: on a shared machine other processes' bursts move the mean, not the logger.
    med_up, med_down = statistics.median(up[1]), statistics.median(down[1])
    print(f"median step time, server down vs up: {med_down * 1e3:.2f} ms vs {med_up * 1e3:.2f} ms "
          f"({(med_down / med_up - 1) * 100:+.1f}%); time in log() per step, down vs up: "
          f"{statistics.mean(down[0]) * 1e6:.0f} us vs {statistics.mean(up[0]) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
