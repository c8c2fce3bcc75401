"""The MLflow Deployment's own command starts a server that demands a login and checks Host headers.

The command, arguments and plain env values are taken from the rendered manifest; only what a
Secret would hold is replaced by local stand-ins (SQLite for PostgreSQL, a folder for the bucket),
and the port by a free one (in the arguments and the allowed hosts alike).
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from forge_platform.tracking.mlflow_server import stop_process
from infra_layout import MLFLOW
from kustomize_lite import render

ADMIN = ("admin", "a-long-admin-passw0rd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(port: int, path: str, host: str, auth: tuple[str, str] | None = None, method: str = "GET",
            data: bytes | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Host": host})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_deployment_command_serves_with_basic_auth_and_allowed_hosts(tmp_path: Path) -> None:
    deployment = next(m for m in render(MLFLOW) if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = _free_port()
    args = [a.replace("5000", str(port)) if a.startswith(("--port", "--allowed-hosts")) else a
            for a in container["args"]]
    args = [a if not a.startswith("--workers") else "--workers=1" for a in args]  # 2 cores here
    assert container["command"] == ["mlflow", "server"]
    command = [str(Path(sys.executable).parent / "mlflow"), "server", *args]

    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    stand_ins = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "bucket"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 64,
    }
    env = {"PATH": str(Path(sys.executable).parent), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"] and not item["valueFrom"]["secretKeyRef"].get("optional"):
            env[item["name"]] = stand_ins[item["name"]]  # a required Secret this test does not stand in for fails here
    # The auth config is mounted from the mlflow-auth Secret at the path the manifest names.
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow-auth/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
    env["HOME"] = str(tmp_path)

    probe = container["readinessProbe"]["httpGet"]
    probe_host = probe["httpHeaders"][0]["value"].replace("5000", str(port))
    log = tmp_path / "server.log"  # a file, not a pipe: a full pipe would block the server
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _status(port, probe["path"], probe_host) == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not become ready in 90 s"
            time.sleep(0.5)

        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        service = f"mlflow.forge.svc.cluster.local:{port}"
        assert _status(port, api, service) == 401  # no login
        assert _status(port, api, service, (ADMIN[0], "wrong")) == 401
        assert _status(port, api, service, ADMIN) == 200
        assert _status(port, api, f"localhost:{port}", ADMIN) == 200  # a port-forward
        assert _status(port, api, "attacker.example", ADMIN) == 403  # DNS rebinding: Host not allowed
        # Artifacts go through the server to the destination (--serve-artifacts).
        put = "/api/2.0/mlflow-artifacts/artifacts/probe/hello.txt"
        assert _status(port, put, service, ADMIN, method="PUT", data=b"hello") == 200
        assert (tmp_path / "bucket" / "probe" / "hello.txt").read_bytes() == b"hello"
    finally:
        stop_process(server, timeout_s=20)
