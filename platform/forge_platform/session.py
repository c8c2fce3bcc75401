"""What every job starts before its work and stops after it: Ray, the tracking server, the runs.

    with job_session(cfg.ray_num_cpus, cfg.tracking, output_dir) as session:
        run_id = session.runs.start(...)          # MlflowRuns, or NullRuns off MLflow
        ... StageRun(tracking=session.tracking, run_id=run_id, ...)

`session.tracking` is the job's TrackingConfig with its URI resolved (a local MLflow server is
started for the job when the spec leaves `tracking.uri` empty), handed as one value to everyone
who logs. Campaigns and single-stage jobs share this; neither imports the other.

The tracking server is asked once at start (`check_tracking_server`); from then on an outage is
absorbed: rank 0's metrics and the driver's calls are queued in `tracking.spill_dir` and sent when
the server answers, at the latest when the session closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forge_platform.cluster import ensure_ray
from forge_platform.config_loader import ConfigError
from forge_platform.job_config import TrackingConfig
from forge_platform.tracking.mlflow_server import LocalMlflowServer, local_mlflow_server
from forge_platform.tracking.runs import MlflowRuns, NullRuns
from forge_platform.tracking.transport import unreachable_reason


@dataclass
class JobSession:
    """A running job's connections."""

    tracking: TrackingConfig
    """The job's tracking settings, `uri` resolved."""
    runs: MlflowRuns | NullRuns
    """Creates, tags and closes the job's runs."""
    server: LocalMlflowServer | None
    """The job's own local MLflow server, when it started one (it stops with the session)."""


def banner(text: str) -> None:
    """A section heading in the job's log."""
    print(f"\n=== {text} ===", flush=True)


@contextlib.contextmanager
def job_session(ray_num_cpus: int, tracking: TrackingConfig, output_dir: Path) -> Iterator[JobSession]:
    """Join (or start) Ray, then connect to (or start) the tracking server; yield the session.

    An unreachable tracking server is one line in the log, then the job goes on with tracking
    queued (`tracking.on_unreachable = "continue"`), or a `ConfigError` naming the setting ("refuse")."""
    # Absolute: Ray workers write rank 0's spilled metrics here from another working directory.
    spill_dir = str(Path(tracking.spill_dir or Path(output_dir) / "tracking").resolve())
    if tracking.backend == "mlflow" and tracking.uri:
        check_tracking_server(tracking.uri, tracking.on_unreachable, spill_dir)
    ensure_ray(ray_num_cpus, workspace=Path.cwd())
    with _tracking_uri(tracking, Path(output_dir) / "mlflow") as (uri, server):
        resolved = dataclasses.replace(tracking, uri=uri, spill_dir=spill_dir)
        runs = MlflowRuns(uri, tracking.experiment, spill_dir) if tracking.backend == "mlflow" else NullRuns()
        try:
            yield JobSession(resolved, runs, server)
        finally:
            runs.close()  # what the server could not take yet: sent now, or kept and named


def check_tracking_server(uri: str, on_unreachable: str, spill_dir: str) -> None:
    """Say in one line whether the tracking server answers; refuse to start if told to."""
    reason = unreachable_reason(uri)
    if not reason:
        return
    if on_unreachable == "refuse":
        raise ConfigError(f"tracking.uri = {uri!r}: the MLflow server is unreachable ({reason}); start it, or pass "
                          "--tracking.on_unreachable continue to train and send the tracking data later")
    print(f"warning: the MLflow server at {uri} is unreachable ({reason}); training anyway, tracking data is kept "
          f"in {spill_dir} and sent when it answers (--tracking.on_unreachable refuse stops instead)", flush=True)


@contextlib.contextmanager
def _tracking_uri(cfg: TrackingConfig, root: Path) -> Iterator[tuple[str, LocalMlflowServer | None]]:
    """The tracking URI to use: the configured one, or a local server started for the job."""
    if cfg.backend != "mlflow" or cfg.uri:
        yield cfg.uri, None
        return
    banner("starting a local MLflow tracking server")
    with local_mlflow_server(root) as server:
        print(f"MLflow server at {server.uri} (SQLite and artifacts under {server.root})", flush=True)
        yield server.uri, server
