"""A tiny metric-logger interface with one class per backend (MLflow, console, null).

Which rank logs is decided in one place, `build_logger`: rank 0 gets the real backend, every other
rank a `NullLogger`, so training code calls `logger.log(...)` unconditionally. The MLflow logger
sends from a background thread and never makes a step wait (`metric_queue`).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from forge_platform.tracking.metric_queue import MetricQueue
from forge_platform.tracking.transport import PENDING_RUN_PREFIX, MetricSender, Record, iter_batches

if TYPE_CHECKING:
    from forge_platform.config_sections import TrackingConfig


class MetricLogger(Protocol):
    """What the training loop needs from a tracking backend."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def logged_steps(self, key: str = "loss") -> set[int]:
        """Steps this run already holds a point of `key` for (a restarted worker group does not log
        them again); empty where nothing is kept."""
        ...

    def set_tag(self, key: str, value: str) -> None:
        """Record a fact about the run (e.g. the kernel path the worker took)."""
        ...

    def close(self) -> None: ...


class NullLogger:
    """Drops everything: the logger of every rank but 0."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def logged_steps(self, key: str = "loss") -> set[int]:
        return set()

    def set_tag(self, key: str, value: str) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleLogger:
    """One line per logged step on stdout, so a `ray job logs` tail shows progress."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        parts = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        print(f"{self.prefix}step {step}: {parts}", flush=True)

    def logged_steps(self, key: str = "loss") -> set[int]:
        return set()  # a console has no memory: a restart prints its steps again

    def set_tag(self, key: str, value: str) -> None:
        print(f"{self.prefix}{key} = {value}", flush=True)

    def close(self) -> None:
        pass


class MlflowLogger:
    """Logs step metrics to an MLflow run from a background thread: `log` never waits on the server.

    Training must never wait for tracking: points go to a bounded buffer that a sender thread empties
    (`metric_queue.MetricQueue`); while the server is down the buffer fills, then spills to
    `spill_path`, which is replayed when the server answers or, if it is still down at `close()`,
    by the driver at the end of the stage.
    """

    def __init__(self, tracking_uri: str, run_id: str, spill_path: str | Path | None = None,
                 max_buffered: int = 10_000, system_metrics_interval_s: float = 0.0,
                 request_timeout_s: float = 5.0, max_backoff_s: float = 5.0, drain_timeout_s: float = 30.0) -> None:
        self.run_id = run_id
        spill = Path(spill_path) if spill_path else Path(tempfile.gettempdir()) / "forge-tracking" / spill_name(run_id)
        self.queue = MetricQueue(MetricSender(tracking_uri, request_timeout_s), run_id, spill, max_buffered,
                                 max_backoff_s=max_backoff_s, drain_timeout_s=drain_timeout_s,
                                 offline=run_id.startswith(PENDING_RUN_PREFIX))
        self._system_monitor = None
        if system_metrics_interval_s > 0 and not self.queue.offline:
            # MLflow's own sampler (a thread in this process: CPU, memory, disk, network, and GPUs
            # through nvidia-ml-py), logging `system/*` metrics into the same run. It stops by
            # itself, with a warning, if the server goes away; training does not notice.
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system_monitor = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_interval_s,
                                                        tracking_uri=tracking_uri)
            self._system_monitor.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.queue.put(metrics, step)

    @property
    def pending(self) -> int:
        """Points held in memory, not yet sent."""
        return self.queue.pending

    def set_tag(self, key: str, value: str) -> None:
        """One attempt (bounded by the request timeout), once per worker start: a tag that cannot be
        set is said on stderr, never waited for."""
        if self.queue.offline:
            print(f"tracking: run not created yet, tag {key} = {value} not recorded", file=sys.stderr, flush=True)
            return
        try:
            self.queue.sender.set_tag(self.run_id, key, value)
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            print(f"tracking: could not set tag {key} ({err})", file=sys.stderr, flush=True)

    def logged_steps(self, key: str = "loss") -> set[int]:
        """Steps of `key` the server holds for this run, plus those in its spill file (which will be
        sent). Asked once, when a restarted worker group resumes: points an earlier attempt logged stay
        as they were, and the steps it trains again are not logged twice. With the server down, only
        the spill file is known (then a step may appear twice)."""
        steps = {int(r["step"]) for r in iter_spilled(self.queue.spill_path) if r["key"] == key}
        if self.queue.offline:
            return steps
        try:
            return steps | self.queue.sender.logged_steps(self.run_id, key)
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            print(f"tracking: could not read which steps the run already has ({err}); a restarted step "
                  "may be logged twice", file=sys.stderr, flush=True)
            return steps

    def close(self) -> None:
        if self._system_monitor is not None:
            # Its last flush goes through MLflow's client, retries and all: give it a few seconds
            # on a thread of its own rather than hold up the end of the stage.
            stopper = threading.Thread(target=self._system_monitor.finish, daemon=True)
            stopper.start()
            stopper.join(timeout=5.0)
            self._system_monitor = None
        left = self.queue.close()
        if left is not None:
            print(f"tracking: metrics not yet in MLflow are kept in {left}; the driver sends them at the end "
                  "of the stage", file=sys.stderr, flush=True)


def iter_spilled(path: Path) -> Iterator[Record]:
    """Every whole record of a spill file; nothing if there is none."""
    if path.exists():
        for batch in iter_batches(path):
            yield from batch


def spill_name(run_id: str) -> str:
    """The spill file of a run's step metrics, inside `tracking.spill_dir`."""
    return f"{run_id}.metrics.jsonl"


def build_logger(tracking: TrackingConfig, rank: int, run_id: str = "", prefix: str = "") -> MetricLogger:
    """The one place that decides who logs: rank 0 gets `tracking.backend`, every other rank nothing."""
    if rank != 0 or tracking.backend == "null":
        return NullLogger()
    if tracking.backend == "console":
        return ConsoleLogger(prefix)
    if tracking.backend == "mlflow":
        if not (tracking.uri and run_id):
            raise ValueError("the mlflow logger needs a tracking URI and a run id")
        spill = Path(tracking.spill_dir) / spill_name(run_id) if tracking.spill_dir else None
        return _Tee(MlflowLogger(tracking.uri, run_id, spill, max_buffered=tracking.max_buffered_metrics,
                                 system_metrics_interval_s=tracking.system_metrics_interval_s),
                    ConsoleLogger(prefix))
    raise ValueError(f"tracking.backend = {tracking.backend!r}: must be one of 'mlflow', 'console', 'null'")


class _Tee:
    """Logs to several loggers (MLflow for the UI, console for `ray job logs`)."""

    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def logged_steps(self, key: str = "loss") -> set[int]:
        return set().union(*(logger.logged_steps(key) for logger in self.loggers))

    def set_tag(self, key: str, value: str) -> None:
        for logger in self.loggers:
            logger.set_tag(key, value)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
