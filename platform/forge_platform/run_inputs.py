"""What an MLflow stage run points at: its checkpoint and held-out data, for `jobs.evaluate --run_id`.

A stage run is tagged, when it ends, with its last checkpoint (`forge.checkpoint`) and, when it
starts, with the held-out manifest it was evaluated on (`forge.val_manifest`) and, when its `ppl`
suite measured past its seq_len, the same data packed that long (`forge.ppl_manifest`). Evaluating
"the run" means evaluating that checkpoint on that data and adding the metrics to that run, at the
checkpoint's step, beside the ones the stage logged itself. A run without a checkpoint tag (a
campaign's parent run, a stage that never finished) is refused in one line naming the run and the tag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from forge_platform.config_loader import ConfigError
from forge_platform.tracking.transport import MAX_METRICS_PER_BATCH, MetricSender

CHECKPOINT_TAG = "forge.checkpoint"
"""Tag of a stage run: its last checkpoint (a folder or an object-store URI)."""
VAL_MANIFEST_TAG = "forge.val_manifest"
"""Tag of a stage run: the held-out manifest its evaluation read."""
PPL_MANIFEST_TAG = "forge.ppl_manifest"
"""Tag of a stage run whose `ppl` suite read longer rows: the held-out data packed at its longest position."""


@dataclass(frozen=True)
class RunInputs:
    """What `jobs.evaluate` needs from a stage run."""

    checkpoint: str
    val_manifest: str
    """Empty when the stage had no held-out data."""
    ppl_manifest: str = ""
    """Empty when the stage's `ppl` suite read `val_manifest` (it measured no further than its seq_len)."""


def run_inputs(tracking_uri: str, run_id: str) -> RunInputs:
    """The checkpoint and held-out manifests a stage run recorded; ConfigError when it recorded none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"run_id = {run_id!r}: not found at tracking.uri {tracking_uri!r} "
                          f"({str(err).splitlines()[0]})") from None
    tags = run.data.tags
    if not tags.get(CHECKPOINT_TAG):
        raise ConfigError(f"run_id = {run_id!r} ({run.info.run_name}) has no {CHECKPOINT_TAG} tag: evaluate a stage's "
                          "run that finished training (a campaign's parent run has none: pick one of its children)")
    return RunInputs(checkpoint=tags[CHECKPOINT_TAG], val_manifest=tags.get(VAL_MANIFEST_TAG, ""),
                     ppl_manifest=tags.get(PPL_MANIFEST_TAG, ""))


def log_to_run(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Add `metrics` to the run at `step` (a finished run accepts metrics; its status is unchanged)."""
    now = int(time.time() * 1000)
    records = [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in metrics.items()]
    sender = MetricSender(tracking_uri, timeout_s=60.0)
    for start in range(0, len(records), MAX_METRICS_PER_BATCH):
        sender.send(run_id, records[start:start + MAX_METRICS_PER_BATCH])
