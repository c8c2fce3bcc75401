"""What every job starts before its work and stops after it: Ray, the tracking server, the runs.

    with job_session(cfg.ray_num_cpus, cfg.tracking, output_dir) as session:
        run_id = session.runs.start(...)          # MlflowRuns, or NullRuns off MLflow
        ... StageRun(tracking=session.tracking, run_id=run_id, ...)

`session.tracking` is the job's TrackingConfig with its URI resolved (a local MLflow server is
started for the job when the spec leaves `tracking.uri` empty), handed as one value to everyone
who logs. Campaigns and single-stage jobs share this; neither imports the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forge_platform.cluster import ensure_ray
from forge_platform.job_config import TrackingConfig
from forge_platform.tracking.mlflow_server import LocalMlflowServer, local_mlflow_server
from forge_platform.tracking.runs import MlflowRuns, NullRuns


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
    """Join (or start) Ray, then connect to (or start) the tracking server; yield the session."""
    ensure_ray(ray_num_cpus, workspace=Path.cwd())
    with _tracking_uri(tracking, Path(output_dir) / "mlflow") as (uri, server):
        resolved = dataclasses.replace(tracking, uri=uri)
        runs = MlflowRuns(uri, tracking.experiment) if tracking.backend == "mlflow" else NullRuns()
        yield JobSession(resolved, runs, server)


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
