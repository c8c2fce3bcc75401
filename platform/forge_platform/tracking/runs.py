"""The runs a job records in MLflow: a campaign's parent run with a child run per stage, or a
single-stage job's one run. `NullRuns` takes the same calls when tracking is not MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out so this module imports without
# MLflow: GPU images that track to the console have none.
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"

# A run's identity across job restarts: derived from the job's name and config, never random.
RUN_KEY_TAG = "forge.run_key"

# MLflow's limit on a param value's length.
_MAX_PARAM_CHARS = 6000


class MlflowRuns:
    """Creates and closes a job's runs through `MlflowClient` (no global MLflow state)."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)

    def start(self, name: str, params: Mapping[str, Any], parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None, key: str = "") -> str:
        """Create a run (a child of `parent_run_id` if given), log its params, return its id.

        A run with the same `key` that never finished (the job died, or was restarted) is
        continued instead, so a restarted job does not leave a duplicate run behind.
        """
        if key:
            unfinished = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status != 'FINISHED'",
                max_results=1,
            )
            if unfinished:
                run_id = unfinished[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
                return run_id
        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {}), **({RUN_KEY_TAG: key} if key else {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's log_batch limit on params
            self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def loss_history(self, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in step order."""
        history = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def ui_url(self, run_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value), step=step)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)


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
