"""A tiny metric-logger interface with one class per backend (MLflow, console, null).

Which rank logs is decided in one place, `build_logger`: rank 0 gets the real backend, every other
rank a `NullLogger`, so training code calls `logger.log(...)` unconditionally.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from forge_platform.job_config import TrackingConfig


class MetricLogger(Protocol):
    """What the training loop needs from a tracking backend."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Drops everything: the logger of every rank but 0."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
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

    def close(self) -> None:
        pass


class MlflowLogger:
    """Logs step metrics to an existing MLflow run, buffering them while the server is unreachable.

    Training must never stop because tracking is down: a failed write keeps the metrics in the
    buffer, warns once, and is retried at the next call and at `close()`.
    """

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 1,
                 system_metrics_interval_s: float = 0.0) -> None:
        # Imported here: GPU images without MLflow still train with the console logger.
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[Any] = []  # mlflow.entities.Metric
        self._calls = 0
        self._warned = False
        self._system_monitor = None
        if system_metrics_interval_s > 0:
            # MLflow's own sampler (a thread in this process: CPU, memory, disk, network, and GPUs
            # through nvidia-ml-py), logging `system/*` metrics into the same run. It stops by
            # itself, with a warning, if the server goes away; training does not notice.
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system_monitor = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_interval_s,
                                                        tracking_uri=tracking_uri)
            self._system_monitor.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def flush(self) -> bool:
        """Send the buffer; returns False (and keeps it) if the server did not take it."""
        while self._buffer:
            batch = self._buffer[:1000]  # MLflow's log_batch limit
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
            except Exception as err:  # noqa: BLE001 - any transport error must not stop training
                if not self._warned:
                    warnings.warn(f"MLflow unreachable ({err}); buffering metrics and retrying", stacklevel=2)
                    self._warned = True
                return False
            del self._buffer[: len(batch)]
        return True

    @property
    def pending(self) -> int:
        """Metrics waiting to be sent."""
        return len(self._buffer)

    def close(self) -> None:
        if self._system_monitor is not None:
            self._system_monitor.finish()
            self._system_monitor = None
        for _ in range(3):
            if self.flush():
                return
            time.sleep(1.0)
        print(f"warning: {self.pending} metrics could not be sent to MLflow", file=sys.stderr)


def build_logger(tracking: TrackingConfig, rank: int, run_id: str = "", prefix: str = "") -> MetricLogger:
    """The one place that decides who logs: rank 0 gets `tracking.backend`, every other rank nothing."""
    if rank != 0 or tracking.backend == "null":
        return NullLogger()
    if tracking.backend == "console":
        return ConsoleLogger(prefix)
    if tracking.backend == "mlflow":
        if not (tracking.uri and run_id):
            raise ValueError("the mlflow logger needs a tracking URI and a run id")
        return _Tee(MlflowLogger(tracking.uri, run_id, system_metrics_interval_s=tracking.system_metrics_interval_s),
                    ConsoleLogger(prefix))
    raise ValueError(f"tracking.backend = {tracking.backend!r}: must be one of 'mlflow', 'console', 'null'")


class _Tee:
    """Logs to several loggers (MLflow for the UI, console for `ray job logs`)."""

    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
