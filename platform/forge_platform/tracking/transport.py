"""Talking to the tracking server without ever waiting out MLflow's retry back-off.

MLflow's client retries a failed request up to `MLFLOW_HTTP_REQUEST_MAX_RETRIES` times (7 by
default, with exponential back-off: minutes per call when the server is down). The platform asks
once, with a short timeout, and decides itself when to ask again: a reachability probe for the
driver (`unreachable_reason`), and a one-shot batch request for the worker-side logger
(`MetricSender`). Metrics that could not be sent are kept as JSON lines (`append_records`,
`read_records`): one record per metric, `{"run_id", "key", "value", "timestamp", "step"}`.

Sending a record twice is harmless: MLflow's SQL store keys a metric point by (run, key,
timestamp, step, value) and skips a point it already has, so a batch whose answer was lost can be
sent again. Every record keeps the timestamp it was logged with for that reason.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]
"""One metric point: run_id, key, value, timestamp (ms), step."""

PENDING_RUN_PREFIX = "pending-"
"""Run ids handed out while the server was unreachable at the run's start: the run is created
(and the id mapped to the real one) when the server answers; loggers only spill for them."""

MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit on metrics in one log-batch request (mlflow.utils.validation)."""


def is_http(uri: str) -> bool:
    """Whether `uri` is a tracking server (outages apply) rather than a local store."""
    return uri.startswith(("http://", "https://"))


def unreachable_reason(uri: str, timeout_s: float = 3.0) -> str:
    """Why the tracking server at `uri` cannot be used now; empty when it answers `/health`.

    Local stores (sqlite, file) are always reachable: there is no server to lose."""
    if not is_http(uri):
        return ""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            return "" if resp.status == 200 else f"/health answered {resp.status}"
    except urllib.error.HTTPError as err:
        return f"/health answered {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_credentials(uri: str, timeout_s: float = 10.0) -> None:
    """Refuse, in one line naming the server and the variables, credentials the server at `uri`
    does not accept (401: unknown user or wrong password; 403: no permission).

    A server with authentication answers `/health` to anyone, so the reachability probe cannot
    tell; this asks for one experiment with the job's credentials (`MLFLOW_TRACKING_USERNAME`,
    `MLFLOW_TRACKING_PASSWORD`, as MLflow's client reads them). Any other failure is left to the
    outage handling: this only says no to what no retry can cure."""
    if not is_http(uri):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                                params={"max_results": 1}, max_retries=0, timeout=timeout_s)
    except Exception:  # noqa: BLE001 - unreachable now: the outage handling says so and queues
        return
    if response.status_code in (401, 403):
        from forge_platform.config_loader import ConfigError

        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        who = f"user {user!r}" if user else "no user (MLFLOW_TRACKING_USERNAME is not set)"
        what = "refused the credentials of" if response.status_code == 401 else "denies access to"
        raise ConfigError(f"tracking.uri = {uri!r}: the MLflow server {what} {who} ({response.status_code}); set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it knows")


class MetricSender:
    """Sends one batch of metric records to a run, one attempt, bounded by `timeout_s`."""

    def __init__(self, tracking_uri: str, timeout_s: float = 5.0) -> None:
        self.tracking_uri = tracking_uri
        self.timeout_s = timeout_s
        self._client = None

    def send(self, run_id: str, records: list[Record]) -> None:
        """Log `records` into `run_id`; raises on any failure (nothing is retried here)."""
        if not is_http(self.tracking_uri):  # a local store: MLflow's client, no network in between
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            self._client = self._client or MlflowClient(self.tracking_uri)
            metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in records]
            self._client.log_batch(run_id, metrics=metrics, synchronous=True)
            return
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        body = {"run_id": run_id, "metrics": [_wire(r) for r in records]}
        response = http_request(get_default_host_creds(self.tracking_uri), "/api/2.0/mlflow/runs/log-batch",
                                "POST", json=body, max_retries=0, timeout=self.timeout_s)
        if 400 <= response.status_code < 500:
            raise ServerRejected(f"log-batch answered {response.status_code}: {response.text[:200]}")
        if response.status_code != 200:
            raise RuntimeError(f"log-batch answered {response.status_code}: {response.text[:200]}")


    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set one tag on `run_id`; raises on any failure (one attempt)."""
        if not is_http(self.tracking_uri):
            from mlflow.tracking import MlflowClient

            self._client = self._client or MlflowClient(self.tracking_uri)
            self._client.set_tag(run_id, key, value)
            return
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        response = http_request(get_default_host_creds(self.tracking_uri), "/api/2.0/mlflow/runs/set-tag", "POST",
                                json={"run_id": run_id, "key": key, "value": value}, max_retries=0,
                                timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"set-tag answered {response.status_code}: {response.text[:200]}")

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which `run_id` already has a point of metric `key` (one attempt per page)."""
        if not is_http(self.tracking_uri):
            from mlflow.tracking import MlflowClient

            self._client = self._client or MlflowClient(self.tracking_uri)
            return {m.step for m in self._client.get_metric_history(run_id, key)}
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        steps: set[int] = set()
        page_token = ""
        while True:
            params = {"run_id": run_id, "metric_key": key, "max_results": 25000,
                      **({"page_token": page_token} if page_token else {})}
            response = http_request(get_default_host_creds(self.tracking_uri), "/api/2.0/mlflow/metrics/get-history",
                                    "GET", params=params, max_retries=0, timeout=self.timeout_s)
            if response.status_code != 200:
                raise RuntimeError(f"get-history answered {response.status_code}: {response.text[:200]}")
            body = response.json()
            steps.update(int(m.get("step", 0)) for m in body.get("metrics", []))
            page_token = body.get("next_page_token", "")
            if not page_token:
                return steps


class ServerRejected(RuntimeError):
    """The server answered a client error (4xx): the request itself is wrong, sending it again will not help."""


def _wire(record: Record) -> dict[str, Any]:
    value = record["value"]
    # The REST API spells non-finite values as strings, as MLflow's own client does.
    if math.isnan(value):
        value = "NaN"
    elif math.isinf(value):
        value = "Infinity" if value > 0 else "-Infinity"
    return {"key": record["key"], "value": value, "timestamp": record["timestamp"], "step": record["step"]}


def append_records(path: Path, records: Iterable[Record]) -> None:
    """Append records to a JSON-lines file, flushed to the OS before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()


def read_records(path: Path, offset: int = 0, limit: int = MAX_METRICS_PER_BATCH) -> tuple[list[Record], int]:
    """Up to `limit` whole records from byte `offset` on, and the offset after them.

    A last line without its newline (a write cut short by a crash) is left unread."""
    records: list[Record] = []
    with open(path, "rb") as f:
        f.seek(offset)
        while len(records) < limit:
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            if line.strip():
                records.append(json.loads(line))
    return records, offset


def iter_batches(path: Path) -> Iterator[list[Record]]:
    """Every whole record of a JSON-lines file, in batches MLflow accepts."""
    offset = 0
    while True:
        records, offset = read_records(path, offset)
        if not records:
            return
        yield records
