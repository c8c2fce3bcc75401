"""The runs a job records in MLflow: a campaign's parent run with a child run per stage, or a
single-stage job's one run. `NullRuns` takes the same calls when tracking is not MLflow.

A tracking outage costs the job nothing: calls that cannot be made are queued (`journal`) and made
when the server answers."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forge_platform.tracking.journal import CallJournal
from forge_platform.tracking.loggers import spill_name
from forge_platform.tracking.transport import (PENDING_RUN_PREFIX, MetricSender, ServerRejected, check_credentials,
                                               iter_batches, unreachable_reason)

# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out so this module imports without
# MLflow: GPU images that track to the console have none.
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag MLflow 3's UI reads to choose its view (its JS bundle's ExperimentKind enum;
the UI's kind selector sets the same tag). Without it the UI guesses, and opened ours on the GenAI
(traces) view."""
MODEL_TRAINING_KIND = "custom_model_development"
"""The kind whose view lists training runs, their metrics and models (the enum's CUSTOM_MODEL_DEVELOPMENT)."""

# A run's identity across job restarts: derived from the job's name and config, never random.
RUN_KEY_TAG = "forge.run_key"
ATTEMPT_TAG = "forge.attempt"
"""How many jobs have written into a run: a rerun continues an unfinished run with the same key."""
CONTINUED_AFTER_TAG = "forge.continued_after"
"""The status (RUNNING: the job died; FAILED; KILLED) an earlier attempt left a continued run in."""

MAX_PARAM_CHARS = 6000
"""MLflow's limit on a param value's length (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH, 3.x);
a longer value is stored as the artifact `params/<key>.txt` and the param points to it."""


class MlflowRuns:
    """Creates and closes a job's runs through `MlflowClient` (no global MLflow state).

    A tracking outage never stops the job: each call first asks the server's `/health` (a few
    seconds at most, no retry back-off); when it does not answer, or the call fails, the call is
    queued in a journal in `spill_dir` (`journal.CallJournal`) and made, in order, at the next call
    that finds the server back, or at `close()`. A run started during an outage gets a placeholder
    id that the journal maps to the real one once the run is created.

    Thread-safe: a study trains several runs at once from driver threads, and the journal and the
    client are shared; every call that touches them holds one lock (calls are short next to training).
    """

    def __init__(self, tracking_uri: str, experiment: str, spill_dir: str | Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri)
        self.spill_dir = Path(spill_dir) if spill_dir else Path(tempfile.mkdtemp(prefix="forge-tracking-"))
        self.journal = CallJournal(self.spill_dir)
        self._lock = threading.RLock()
        self._experiment_id = ""
        # Down at start: the session has said so in one line already; queue from the first call.
        self._down = bool(unreachable_reason(tracking_uri))
        if not self._down:
            check_credentials(tracking_uri)  # refused credentials: one line now, before any tokenizing
            self._sync()  # calls an earlier job left queued in this folder

    @property
    def experiment_id(self) -> str:
        """The experiment's id ('' while the server has not answered yet)."""
        if not self._experiment_id and not unreachable_reason(self.tracking_uri):
            self._experiment_id = ensure_training_experiment(self.client, self.experiment)
        return self._experiment_id

    def start(self, name: str, params: Mapping[str, Any], parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None, key: str = "") -> str:
        """Create a run (a child of `parent_run_id` if given), log its params, return its id.

        A run with the same `key` that never finished (the job died, or was restarted) is
        continued instead, so a restarted job does not leave a duplicate run behind. While the
        server is down the id is a placeholder (`pending-...`) that every other call accepts."""
        call = {"op": "start", "pending_id": PENDING_RUN_PREFIX + uuid.uuid4().hex, "experiment": self.experiment,
                "name": name,
                "params": {k: str(v) for k, v in params.items()}, "parent_run_id": parent_run_id,
                "tags": dict(tags or {}), "key": key}
        return self._call(call) or call["pending_id"]

    def finish(self, run_id: str, ok: bool = True) -> None:
        self._call({"op": "finish", "run_id": run_id, "status": "FINISHED" if ok else "FAILED"})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now_ms = int(time.time() * 1000)  # fixed now, so a replay stores each point once
        records = [{"key": k, "value": float(v), "timestamp": now_ms, "step": step} for k, v in metrics.items()]
        if records:
            self._call({"op": "log_metrics", "run_id": run_id, "records": records})

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self._call({"op": "log_artifact", "run_id": run_id, "path": str(path), "artifact_path": artifact_path})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call({"op": "set_tag", "run_id": run_id, "key": key, "value": str(value)})

    def register_model(self, run_id: str, artifact_path: str, name: str, tags: Mapping[str, str],
                       description: str, source: str = "") -> None:
        """Make the artifact folder `artifact_path` of `run_id` (or `source`, a URI elsewhere, when
        given) a new version of registered model `name` (created if new), with `tags` and
        `description` on the version. Run ids handed out during an outage may appear in the tags
        and description: they become the real ones."""
        self._call({"op": "register_model", "run_id": run_id, "artifact_path": artifact_path, "name": name,
                    "tags": dict(tags), "description": description, "source": source})

    def send_spilled(self, run_id: str) -> None:
        """Send the step metrics rank 0 could not (its spill file in `spill_dir`), if any are left."""
        path = self.spill_dir / spill_name(run_id)
        if path.exists():
            self._call({"op": "send_spilled", "run_id": run_id, "path": str(path)})

    def loss_history(self, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in step order (empty while the server is down)."""
        with self._lock:
            run_id = self.journal.resolve(run_id)
            if run_id.startswith(PENDING_RUN_PREFIX) or not self._sync():
                return []
        history = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def ui_url(self, run_id: str) -> str:
        run_id = self.journal.resolve(run_id)
        if run_id.startswith(PENDING_RUN_PREFIX) or not self.experiment_id:
            return f"{self.tracking_uri} (the run is created when the server answers)"
        # MLflow 3's UI opens in its GenAI view unless told otherwise (a per-browser setting, default
        # GenAI): the parameter switches it to the training runs, which is what these are.
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"

    def close(self) -> None:
        """Send what is queued; if the server is still down, say where it is kept and how to send it."""
        with self._lock:
            if self._sync() or not self.journal:
                return
        print(f"tracking: {len(self.journal)} tracking calls could not be sent to {self.tracking_uri}; they are kept "
              f"in {self.journal.path} and sent by the next job using that folder, or now with: python -m "
              f"forge_platform.tracking.replay {self.spill_dir} --uri {self.tracking_uri}", flush=True)

    # --- making calls, now or later ---------------------------------------------------------------
    def _sync(self) -> bool:
        """Make the queued calls if the server answers; True when none is left."""
        reason = unreachable_reason(self.tracking_uri)
        if reason:
            self._note_down(reason)
            return False
        if self.journal:
            made = self.journal.replay(self._make, _is_rejection)
            if self.journal:
                self._note_down("a queued call failed")
                return False
            if made or self._down:
                print(f"tracking: MLflow at {self.tracking_uri} answers; {made} queued calls sent", flush=True)
        self._down = False
        return True

    def _call(self, call: dict[str, Any]) -> str | None:
        """Make `call` now if nothing is queued before it and the server answers, else queue it."""
        with self._lock:
            return self._call_locked(call)

    def _call_locked(self, call: dict[str, Any]) -> str | None:
        if self._sync():
            try:
                return self._make(self.journal.with_real_ids(call))
            except Exception as err:  # noqa: BLE001 - an outage must not stop the job: keep the call
                if _is_rejection(err):
                    raise
                self._note_down(str(err).splitlines()[0][:160] if str(err) else type(err).__name__)
        if call["op"] == "log_artifact":  # the file may change or go before the server is back: keep a copy
            call = {**call, "path": self._keep_copy(Path(call["path"])), "copy": True}
        self.journal.add(call)
        return None

    def _keep_copy(self, path: Path) -> str:
        folder = self.spill_dir / "artifacts" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        copy = folder / path.name
        shutil.copytree(path, copy) if path.is_dir() else shutil.copy2(path, copy)
        return str(copy)

    def _note_down(self, reason: str) -> None:
        if not self._down:
            print(f"tracking: MLflow at {self.tracking_uri} unreachable ({reason}); tracking calls are queued in "
                  f"{self.journal.path} and sent when it answers; the job goes on", flush=True)
        self._down = True

    def _make(self, call: dict[str, Any]) -> str | None:
        """One call against the server; returns the new run's id for `start`."""
        op, run_id = call["op"], call.get("run_id", "")
        if op == "start":
            return self._create_run(call)
        if op == "finish":
            self.client.set_terminated(run_id, status=call["status"])
        elif op == "set_tag":
            self.client.set_tag(run_id, call["key"], call["value"])
        elif op == "log_artifact":
            self.client.log_artifact(run_id, call["path"], call["artifact_path"])
            if call.get("copy"):
                shutil.rmtree(Path(call["path"]).parent)
        elif op == "log_metrics":
            MetricSender(self.tracking_uri).send(run_id, call["records"])
        elif op == "register_model":
            self._register_model(run_id, call)
        elif op == "send_spilled":
            path = Path(call["path"])
            if path.exists():
                sender = MetricSender(self.tracking_uri)
                for batch in iter_batches(path):
                    sender.send(run_id, batch)
                path.unlink()
        else:
            raise ValueError(f"unknown queued tracking call {op!r}")
        return None

    def _create_run(self, call: dict[str, Any]) -> str:
        from mlflow.entities import Param

        if call["experiment"] != self.experiment:  # queued by a job with another experiment (replay)
            self.experiment, self._experiment_id = call["experiment"], ""
        experiment_id, key, name = self.experiment_id, call["key"], call["name"]
        if key:
            unfinished = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status != 'FINISHED'",
                max_results=1,
            )
            if unfinished:
                earlier = unfinished[0]
                run_id, status = earlier.info.run_id, earlier.info.status
                attempt = int(earlier.data.tags.get(ATTEMPT_TAG, "1")) + 1
                self.client.update_run(run_id, status="RUNNING")
                self.client.set_tag(run_id, ATTEMPT_TAG, str(attempt))
                self.client.set_tag(run_id, CONTINUED_AFTER_TAG, status)
                print(f"tracking: continuing MLflow run {name!r} ({run_id}), which an earlier attempt left "
                      f"{status}: its metrics so far stay, this is attempt {attempt} "
                      f"(tags {ATTEMPT_TAG}, {CONTINUED_AFTER_TAG})", flush=True)
                return run_id
        all_tags = {MLFLOW_RUN_NAME: name, **call["tags"], **({RUN_KEY_TAG: key} if key else {})}
        if call["parent_run_id"]:
            all_tags[MLFLOW_PARENT_RUN_ID] = call["parent_run_id"]
        run_id = self.client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
        params, long_values = split_long_params(call["params"])
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's log_batch limit on params
            self.client.log_batch(run_id, params=items[i : i + 100])
        if long_values:
            with tempfile.TemporaryDirectory() as tmp:
                for k, v in long_values.items():
                    (Path(tmp) / f"{k}.txt").write_text(v, encoding="utf-8")
                self.client.log_artifacts(run_id, tmp, PARAMS_ARTIFACT_DIR)
        return run_id


    def _register_model(self, run_id: str, call: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        def real_ids(text: str) -> str:
            for pending, real in self.journal.run_ids.items():
                text = text.replace(pending, real)
            return text

        name = call["name"]
        try:
            self.client.create_registered_model(
                name, description="Weights of Hybrid Forge campaigns; each version's tags name what made it.")
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = call.get("source") or \
            f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{call['artifact_path']}"
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags={k: real_ids(v) for k, v in call["tags"].items()},
            description=real_ids(call["description"]))
        self.client.set_tag(run_id, REGISTERED_MODEL_TAG, f"{name}/{version.version}")


def ensure_training_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created as a model-training experiment if it does not exist.

    An existing experiment without a kind (created by an earlier version, or by hand) is marked as
    one too; a kind someone chose in the UI is left as it is."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as err:  # created meanwhile (another job, another thread): use that one
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


REGISTERED_MODEL_TAG = "forge.registered_model"
"""On a campaign's parent run: the registered model version (`name/version`) made from its weights."""

PARAMS_ARTIFACT_DIR = "params"
"""Where params too long for MLflow are stored, one `<key>.txt` each."""


def split_long_params(params: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The params MLflow can hold, with a pointer in place of each value longer than
    `MAX_PARAM_CHARS`; and those long values, whole, by key (stored as artifacts)."""
    short, long_values = {}, {}
    for k, v in params.items():
        if len(v) > MAX_PARAM_CHARS:
            long_values[k] = v
            short[k] = f"<{len(v)} characters: artifact {PARAMS_ARTIFACT_DIR}/{k}.txt>"
        else:
            short[k] = v
    return short, long_values


def _is_rejection(err: Exception) -> bool:
    """A client error (4xx) from the server: the call itself is wrong, sending it again will not help."""
    if isinstance(err, ServerRejected):
        return True
    status = getattr(err, "get_http_status_code", lambda: 0)()
    return 400 <= status < 500 or isinstance(err, (ValueError, TypeError, FileNotFoundError))


class NullRuns:
    """The same calls with nothing behind them, for `tracking.backend` console or null."""

    tracking_uri = ""

    def start(self, name: str, params: Mapping[str, Any], parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None, key: str = "") -> str:
        return ""

    def finish(self, run_id: str, ok: bool = True) -> None:
        pass

    def loss_history(self, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
        return []

    def ui_url(self, run_id: str) -> str:
        return ""

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        pass

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        pass

    def register_model(self, run_id: str, artifact_path: str, name: str, tags: Mapping[str, str],
                       description: str, source: str = "") -> None:
        pass

    def send_spilled(self, run_id: str) -> None:
        pass

    def close(self) -> None:
        pass
