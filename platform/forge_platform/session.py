"""What every job starts before its work and stops after it: Ray, the tracking server, the runs.

    with job_places(cfg.output_dir, cfg.scratch_dir, cfg.tracking) as places, \
            job_session(cfg.ray_num_cpus, cfg.tracking, places) as session:
        run_id = session.runs.start(...)          # MlflowRuns, or NullRuns off MLflow
        ... StageRun(tracking=session.tracking, run_id=run_id, ...)

`session.tracking` is the job's TrackingConfig with its URI resolved (a local MLflow server is
started for the job when the spec leaves `tracking.uri` empty), handed as one value to everyone
who logs. Campaigns and single-stage jobs share this; neither imports the other.

Before any of it, `job_places` checks where the job writes: an `output_dir` on an object store
(s3://, gs://) must take a write with the environment's credentials (one line naming it if not), and
gets a local scratch folder for what passes through local disk on its way there (removed at the end).

The tracking server is asked once at start (`check_tracking_server`); from then on an outage is
absorbed: rank 0's metrics and the driver's calls are queued in `tracking.spill_dir` and sent when
the server answers, at the latest when the session closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from forge_data import storage

from forge_platform.cluster import ensure_ray
from forge_platform.config_loader import ConfigError
from forge_platform.config_sections import TrackingConfig
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
    scratch_dir: Path | None = None
    """Local scratch for an object-store output_dir (`job_places`); None for a local one."""


@dataclass(frozen=True)
class JobPlaces:
    """Where a job writes: `output_dir` (an absolute local path, or a URI) and, when that is on an
    object store, the local `scratch` folder for what passes through local disk on its way there."""

    output_dir: str
    scratch: Path | None

    def join(self, *names: str) -> str:
        """A place under output_dir (posix separators on an object store)."""
        return storage.join(self.output_dir, *names)

    def local(self, *names: str) -> Path:
        """A local path for a file that belongs under output_dir: there when it is local, in scratch
        (then uploaded or logged by the caller) when it is on an object store."""
        return Path(self.scratch or self.output_dir, *names)

    def upload(self, local: Path) -> str:
        """Where a file or folder written at `self.local(...)` belongs: itself with a local output_dir;
        with an object store, copied to the same place below output_dir first."""
        if self.scratch is None:
            return str(local)
        target = self.join(Path(local).relative_to(self.scratch).as_posix())
        try:
            if Path(local).is_dir():
                fs, path = storage.resolve_filesystem(target)
                # One thread: pyarrow's threaded uploads to S3 are unsafe (apache/arrow#32372, as Ray notes).
                pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=False)
            else:
                storage.publish(target, Path(local).read_bytes())
        except (OSError, pa.ArrowException) as exc:
            raise storage.explain(exc, target) from None
        return target


@contextlib.contextmanager
def job_places(output_dir: str, scratch_dir: str, tracking: TrackingConfig) -> Iterator[JobPlaces]:
    """Check where the job writes, before anything else runs, and yield it (see `JobPlaces`).

    A local output_dir is created, as always. An object-store one must take a write (an
    unreachable store, refused credentials and a missing bucket are each one `StorageError` line
    naming it), and MLflow must then be a server (`tracking.uri`): a local server's SQLite file
    cannot live on an object store. Its scratch folder is a new folder under `scratch_dir` (or the
    system's temporary folder), removed when the job ends."""
    if not storage.is_uri(output_dir):
        out = Path(output_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        yield JobPlaces(str(out), None)
        return
    if tracking.backend == "mlflow" and not tracking.uri:
        raise ConfigError(f"tracking.uri = '': must name an MLflow server (http://...) when output_dir is on an "
                          f"object store ({output_dir}): a local server keeps its SQLite file under output_dir; "
                          "or pass --tracking.backend console")
    storage.check_location(output_dir, write=True)
    if scratch_dir:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="forge-scratch-", dir=scratch_dir or None)).resolve()
    try:
        yield JobPlaces(output_dir.rstrip("/"), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def banner(text: str) -> None:
    """A section heading in the job's log."""
    print(f"\n=== {text} ===", flush=True)


def local_copy(path: str | Path, scratch: Path | None) -> str:
    """`path` itself when local; a file on an object store copied into `scratch` (for what only takes
    local files, such as logging an MLflow artifact)."""
    if not storage.is_uri(str(path)):
        return str(path)
    if scratch is None:
        raise ValueError(f"{path}: on an object store, but the job has no scratch folder")
    local = Path(tempfile.mkdtemp(prefix="copy-", dir=scratch)) / str(path).rstrip("/").rsplit("/", 1)[-1]
    local.write_bytes(storage.read_bytes(str(path)))
    return str(local)


@contextlib.contextmanager
def job_session(ray_num_cpus: int, tracking: TrackingConfig, places: JobPlaces) -> Iterator[JobSession]:
    """Join (or start) Ray, then connect to (or start) the tracking server; yield the session.

    `places` is the job's `JobPlaces` (`job_places`). An unreachable
    tracking server is one line in the log, then the job goes on with tracking queued
    (`tracking.on_unreachable = "continue"`), or a `ConfigError` naming the setting ("refuse")."""
    # Absolute: Ray workers write rank 0's spilled metrics here from another working directory.
    spill_dir = str(Path(tracking.spill_dir or places.local("tracking")).resolve())
    if tracking.backend == "mlflow" and tracking.uri:
        check_tracking_server(tracking.uri, tracking.on_unreachable, spill_dir)
    ensure_ray(ray_num_cpus, workspace=Path.cwd())
    with _tracking_uri(tracking, places.local("mlflow")) as (uri, server):
        resolved = dataclasses.replace(tracking, uri=uri, spill_dir=spill_dir)
        runs = MlflowRuns(uri, tracking.experiment, spill_dir) if tracking.backend == "mlflow" else NullRuns()
        try:
            yield JobSession(resolved, runs, server, places.scratch)
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
