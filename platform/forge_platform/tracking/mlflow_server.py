"""A local MLflow tracking server (SQLite backend, local artifact store) started and stopped by a job.

Used when a job spec leaves `tracking.uri` empty: the demo and the tests then get a real server on
127.0.0.1, the same REST API a cluster's tracking server speaks, with nothing to install by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalMlflowServer:
    """Where a running local server listens and keeps its state."""

    uri: str
    """The tracking URI, `http://127.0.0.1:PORT`."""
    root: Path
    """The folder that holds the SQLite database and the artifact store."""
    pid: int = 0
    """The server's process id, also its process group's (outage drills kill the group)."""

    @property
    def ui_command(self) -> str:
        """A command that serves the same runs again after the job has stopped its server."""
        return f"{sys.executable} -m mlflow ui --backend-store-uri sqlite:///{self.root / 'mlflow.db'} --port 5000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_mlflow_server(root: str | Path, port: int = 0, timeout_s: float = 90.0) -> Iterator[LocalMlflowServer]:
    """Start `mlflow server` on 127.0.0.1, wait for `/health`, yield its URI, stop it on exit."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = dict(os.environ)
    # Job execution needs a Huey consumer per worker, and telemetry phones home: neither is wanted here.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, timeout_s, root / "server.log")
        yield LocalMlflowServer(uri=uri, root=root, pid=proc.pid)
    finally:
        stop_process(proc, timeout_s=15)
        log.close()


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout_s` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_healthy(uri: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the MLflow server exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the MLflow server at {uri} was not healthy after {timeout_s:.0f} s (log: {log_path})")
