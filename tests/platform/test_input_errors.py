"""Which worker errors stop Ray's retries: the user's input does (recorded once, every retry refuses at
once); a store that did not answer does not (the retry may reach it)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from forge_data.storage import StorageNotFound, StorageUnreachable
from forge_platform.training import trainer
from forge_platform.training.trainer import INPUT_ERROR_FILE, InputError, train_stage_worker


@pytest.mark.parametrize(("error", "recorded"), [
    (StorageNotFound("s3://forge/data/manifest.json: does not exist (on s3://)"), True),
    (StorageUnreachable("s3://forge/data: cannot reach s3:// (connection refused)"), False),
])
def test_only_errors_a_retry_cannot_cure_stop_the_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          error: Exception, recorded: bool) -> None:
    class FailingTrainer:
        def __init__(self, run) -> None:
            raise error

    monkeypatch.setattr(trainer, "Trainer", FailingTrainer)
    run = SimpleNamespace(checkpoint_root=str(tmp_path))
    with pytest.raises(type(error)):
        train_stage_worker({"run": run})  # the first attempt
    marker = tmp_path / INPUT_ERROR_FILE
    assert marker.exists() == recorded
    if recorded:
        assert json.loads(marker.read_text())["message"] == str(error)
        with pytest.raises(InputError, match="does not exist"):  # Ray's retry: refused before loading
            train_stage_worker({"run": run})
        assert json.loads(marker.read_text())["retries_refused"] == 1
