"""A production-shaped MLflow on one machine: PostgreSQL, an S3-compatible server and `mlflow server`
with basic authentication, all started from a scratch folder and removed with it.

- PostgreSQL from the Debian package (`/usr/lib/postgresql/*/bin`): a throwaway cluster in the
  scratch folder, TCP on 127.0.0.1 and a free port, its unix socket in the scratch folder, password
  (scram) authentication; databases `mlflow` (runs) and `mlflow_auth` (users). Run as the
  `postgres` user when we are root (initdb refuses root).
- moto's S3 server (PyPI) with authentication on, a bucket and one IAM user allowed s3:*, as in
  tests/data/test_object_storage.py.
- `mlflow server` started with the command, arguments and environment of the cluster's Deployment
  (infra/mlflow/deployment.yaml, rendered): only what its Secrets would hold is filled in here
  (PostgreSQL's URI, the bucket, the S3 keys and endpoint, the admin login, the Flask secret key,
  the auth config file), the port (a free one) and `--workers=1` (2 cores).

For a person, from the repository root (prints the environment to use, stops on Ctrl-C):

    PYTHONPATH=platform:models:data_pipeline:evaluation:. .venv/bin/python -m tests.platform.production_stack
"""

from __future__ import annotations

import base64
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from forge_platform.tracking.mlflow_server import free_port, stop_process

from tests.moto_s3 import s3_server

BUCKET = "forge"
ARTIFACTS = f"s3://{BUCKET}/mlflow"
ADMIN_USER = "admin"
PG_USER = "forge"


@dataclass(frozen=True)
class Stack:
    """Where the running stack answers, and the environment a job and a client need."""

    scratch: Path
    """The one local folder everything of the stack (and the jobs run against it) writes into."""
    mlflow_uri: str
    admin: tuple[str, str]
    """The MLflow admin's user name and password."""
    s3_env: dict[str, str]
    """AWS_ENDPOINT_URL, the IAM user's keys and the region."""
    postgres_uri: str
    """postgresql://USER:PASSWORD@127.0.0.1:PORT (append /DATABASE)."""
    mlflow_log: Path

    def client_env(self, password: str | None = None) -> dict[str, str]:
        """The object store's variables and the MLflow login (the admin's password unless given)."""
        return {**self.s3_env, "MLFLOW_TRACKING_USERNAME": self.admin[0],
                "MLFLOW_TRACKING_PASSWORD": self.admin[1] if password is None else password}


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                                "(Debian/Ubuntu: apt-get install postgresql)")
    return Path(found[-1]).parent


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster in `folder`; yields postgresql://USER:PASSWORD@127.0.0.1:PORT."""
    bin_dir, port, password = _postgres_bin(), free_port(), secrets.token_hex(12)
    folder.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the package's user
        as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    (folder / "pwfile").write_text(password + "\n")
    if as_user:
        shutil.chown(folder / "pwfile", "postgres", "postgres")
    data = folder / "data"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C"}
    _run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={folder / 'pwfile'}",
          "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"], env)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    _run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
          "-w", "-t", "60", "start"], env)
    try:
        for database in ("mlflow", "mlflow_auth"):
            _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, database],
                 {**env, "PGPASSWORD": password})
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       env=env, capture_output=True, timeout=60)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def deployment_container() -> dict:
    """The MLflow container of the Deployment the cluster runs (infra/mlflow, rendered)."""
    from tests.infra.infra_layout import MLFLOW
    from tests.infra.kustomize_lite import render

    deployment = next(m for m in render(MLFLOW) if m["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


@contextmanager
def mlflow_server(folder: Path, postgres_uri: str, s3_env: dict[str, str],
                  admin: tuple[str, str]) -> Iterator[tuple[str, Path]]:
    """The Deployment's MLflow command with its Secrets filled in; yields (URI, log file)."""
    container = deployment_container()
    port = free_port()
    args = []
    for arg in container["args"]:
        if arg.startswith("--workers"):
            arg = "--workers=1"
        elif arg.startswith("--host"):
            arg = "--host=127.0.0.1"  # nothing outside this machine
        elif arg.startswith(("--port", "--allowed-hosts")):
            arg = arg.replace(":5000", f":{port}").replace("=5000", f"={port}")
        args.append(arg)
    folder.mkdir(parents=True)
    auth_ini = folder / "basic_auth.ini"  # what the mlflow-auth Secret's basic_auth.ini holds
    auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {postgres_uri}/mlflow_auth\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    secret_values = {
        "MLFLOW_BACKEND_STORE_URI": f"{postgres_uri}/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": ARTIFACTS,
        "AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"],
        "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "TMPDIR": str(folder)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # every Secret the Deployment reads has a stand-in here, optional ones included
            env[item["name"]] = secret_values[item["name"]]
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)  # mounted from the Secret on the cluster
    env["HOME"] = str(folder)  # the Deployment's /tmp scratch volume
    command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:], *args]
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, log, timeout_s=120)
        yield uri, log
    finally:
        stop_process(proc, timeout_s=20)


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def basic_auth_status(uri: str, path: str, user: str, password: str) -> int:
    """The HTTP status the server answers a GET of `path` with this login."""
    request = urllib.request.Request(uri + path, headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@contextmanager
def production_stack(scratch: Path | None = None) -> Iterator[Stack]:
    """PostgreSQL, S3 and MLflow with basic auth, all under `scratch` (a new folder if None,
    removed at the end with everything in it)."""
    with ExitStack() as stack:
        if scratch is None:
            scratch = Path(tempfile.mkdtemp(prefix="forge-stack-"))
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        scratch.mkdir(parents=True, exist_ok=True)
        os.chmod(scratch, 0o711)  # the postgres user must reach its folder inside
        admin = (ADMIN_USER, secrets.token_hex(12))
        pg_uri = stack.enter_context(postgres(scratch / "postgres"))
        s3_env = stack.enter_context(s3_server())
        uri, log = stack.enter_context(mlflow_server(scratch / "mlflow", pg_uri, s3_env, admin))
        yield Stack(scratch, uri, admin, s3_env, pg_uri, log)


def main() -> None:
    with production_stack() as stack:
        exports = {**stack.client_env(), "MLFLOW_TRACKING_URI": stack.mlflow_uri}
        print("The stack is up (Ctrl-C stops it and removes", stack.scratch, "):")
        print("\n".join(f"export {k}={v}" for k, v in exports.items()))
        print(f"PostgreSQL: {stack.postgres_uri}/mlflow; artifacts: {ARTIFACTS}; server log: {stack.mlflow_log}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
