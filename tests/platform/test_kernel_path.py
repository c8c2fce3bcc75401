"""The kernel path a worker takes is said and recorded in the run; a GPU worker whose CUDA kernels fail
to import (a broken mamba-ssm install) trains on the reference path with a loud warning."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from forge_models import get_preset, kernel_path
from forge_models.ops import kernels
from forge_platform.training.trainer import KERNEL_PATH_TAG, Trainer


class RecordingLogger:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value


def test_kernel_path_names_the_path_and_warns_only_on_a_silent_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda", 0)  # a device object needs no GPU
    assert kernel_path("auto", torch.device("cpu")) == ("reference (cpu device)", False)
    assert kernel_path("reference", gpu) == ("reference (kernels='reference')", False)
    monkeypatch.setattr(kernels, "kernel_import_error", lambda: "import causal_conv1d failed: ImportError('undefined symbol')")
    assert kernel_path("auto", gpu) == (
        "reference: the CUDA kernels are unavailable (import causal_conv1d failed: ImportError('undefined symbol'))", True)
    monkeypatch.setattr(kernels, "kernel_import_error", lambda: None)
    path, warn = kernel_path("auto", gpu)
    assert path.startswith("cuda kernels (mamba_ssm ") and not warn


def test_rank_zero_records_the_path_and_warns_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kernels, "kernel_import_error", lambda: "import mamba_ssm failed: ModuleNotFoundError()")
    trainer = Trainer.__new__(Trainer)  # only what record_kernel_path reads
    model = dataclasses.replace(get_preset("hybrid-debug"), kernels="auto")
    trainer.run = SimpleNamespace(model=model, stage=SimpleNamespace(name="pretrain"))
    trainer.rank, trainer.device, trainer.logger = 0, torch.device("cuda", 0), RecordingLogger()
    trainer.record_kernel_path()
    assert trainer.logger.tags[KERNEL_PATH_TAG].startswith("reference: the CUDA kernels are unavailable (import mamba_ssm")
    err = capsys.readouterr().err
    assert err.startswith("WARNING [pretrain] model.kernels = 'auto' on a GPU, but the Mamba layers run on the slow reference")
    trainer.rank, trainer.logger = 1, RecordingLogger()  # other ranks say nothing
    trainer.record_kernel_path()
    assert trainer.logger.tags == {} and capsys.readouterr().err == ""


def test_fixed_kernel_configs_reach_every_worker_and_are_refused_too_late(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from forge_models import use_fixed_kernel_configs
    from forge_platform.cluster import worker_env

    for name in kernels.FIXED_CONFIG_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not set(kernels.FIXED_CONFIG_ENV) & set(worker_env("."))  # autotuning, mamba_ssm's default
    use_fixed_kernel_configs()
    # A submitted job's workers get only what runtime_env names: the choice must be in it.
    assert {k: worker_env(".")[k] for k in kernels.FIXED_CONFIG_ENV} == {
        "MAMBA_DETERMINISTIC": "1", "TRITON_CACHE_AUTOTUNING": "0"}
    monkeypatch.setenv("MAMBA_DETERMINISTIC", "0")
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.ssd_combined", SimpleNamespace())
    with pytest.raises(RuntimeError, match="after mamba_ssm.ops.triton.ssd_combined was imported"):
        use_fixed_kernel_configs()  # its configs were chosen at import: the setting would not apply


def test_the_gpu_study_spec_fixes_kernel_configs() -> None:
    from forge_platform.job_config import StudyConfig, load_job_config

    assert load_job_config(StudyConfig, "jobs/specs/reproduce_recall.toml", []).autotune_kernels is False
    assert load_job_config(StudyConfig, None, []).autotune_kernels is True
