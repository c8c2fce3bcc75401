"""Every shipped job spec loads, validates and dry-runs; the job CLIs refuse bad specs clearly."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from forge_models import build_model
from forge_platform.training.deepspeed_config import build_deepspeed_config
from forge_platform.job_config import JOB_CONFIGS, CampaignConfig, PretrainConfig, StudyConfig, load_job_config

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "jobs" / "specs"

# Which job runs each shipped spec: a new spec must be added here, so it is tested.
SPEC_JOBS = {
    "demo.toml": "campaign",
    "hybrid_8b_campaign.toml": "campaign",
    "long_context_campaign.toml": "campaign",
    "pretrain.toml": "pretrain",
    "extend_context_16k.toml": "extend_context",
    "tokenize.toml": "tokenize",
    "reproduce_recall.toml": "reproduce",
    "reproduce_recall_cpu.toml": "reproduce",
    "reproduce_recall_laptop.toml": "reproduce",
    "reproduce_resets_cpu.toml": "reproduce",
}


def test_every_spec_file_is_known() -> None:
    assert sorted(p.name for p in SPECS.glob("*.toml")) == sorted(SPEC_JOBS)


@pytest.mark.parametrize("spec", sorted(SPEC_JOBS))
def test_spec_loads_and_dry_runs(spec: str) -> None:
    cls = JOB_CONFIGS[SPEC_JOBS[spec]]
    cfg = load_job_config(cls, SPECS / spec, [])
    stages = (cfg.stages if isinstance(cfg, CampaignConfig) else [cfg.stage]
              if isinstance(cfg, (PretrainConfig, StudyConfig)) else [])
    models = [arm.model for arm in cfg.arms] if isinstance(cfg, StudyConfig) else [cfg.model] \
        if hasattr(cfg, "model") else []
    for model_cfg in models:
        model = build_model(model_cfg, device="meta")  # the 8B presets too, without allocating them
        assert model.num_parameters() > 0
    for stage in stages:
        ds = build_deepspeed_config(stage.train, stage.optim, cfg.parallel.dims.dp)
        assert ds["train_batch_size"] == stage.train.micro_batch_size * stage.train.grad_accum_steps * cfg.parallel.dims.dp
    assert dataclasses.asdict(cfg)


def test_demo_spec_is_a_two_stage_extension_on_two_cpu_workers() -> None:
    cfg = load_job_config(CampaignConfig, SPECS / "demo.toml", [])
    assert [s.seq_len for s in cfg.stages] == [256, 1024]
    assert cfg.stages[1].init_from_previous and not cfg.parallel.use_gpu
    assert cfg.parallel.num_workers == 2 and cfg.stages[0].train.zero_stage == 2
    assert cfg.model.pattern == "M+M*+M+"
    assert cfg.ray_num_cpus > cfg.parallel.num_workers * cfg.parallel.cpus_per_worker


def run_job(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_a_typo_with_exit_code_2() -> None:
    out = run_job("jobs.campaign", "--config", "jobs/specs/demo.toml", "--stages.0.train.stesp", "3")
    assert out.returncode == 2
    assert "stages.0.train.stesp: unknown key for TrainConfig; did you mean 'steps'?" in out.stderr


def test_a_stage_length_the_data_was_not_packed_for_is_refused_before_anything_starts(packed_data) -> None:
    """The loader would silently train on the manifest's length; the job refuses, exit code 2, one line."""
    out = run_job("jobs.pretrain", "--train_manifest", str(packed_data.manifest), "--stage.seq_len", "128",
                  "--tracking.backend", "null")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: invalid job spec: stage.seq_len = 128: must be the length the training data was packed at (64 in "
        f"{packed_data.manifest}); pass --stage.seq_len 64, or pack the data again with --data.packing.seq_len 128"
    ]


def test_cli_help_lists_documented_fields() -> None:
    out = run_job("jobs.pretrain", "--help")
    assert out.returncode == 0
    assert "--stage.optim.lr (default 0.0003): Peak learning rate" in out.stdout
    assert "python -m jobs.pretrain" in out.stdout  # the module docstring with its commands


def test_jobs_are_thin() -> None:
    for job in REPO.joinpath("jobs").glob("*.py"):
        code = [line for line in job.read_text().splitlines() if line.strip() and not line.startswith((" ", '"""'))]
        assert len(job.read_text().splitlines()) < 40, f"{job.name} holds logic: move it into a package"
        assert not any(line.startswith(("def ", "class ")) for line in code), job.name


@pytest.mark.parametrize("args,message", [
    (("--parallel.num_workers", "3", "--parallel.tensor_parallel", "3"),
     "parallel.tensor_parallel = 3: cannot split the model tp=3 ways; not divisible by 3: vocab_size="),
    (("--model.preset", "mamba-debug", "--parallel.tensor_parallel", "2"),
     "parallel.tensor_parallel = 2: cannot split the model tp=2 ways; not divisible by 2: pattern has Mamba-1 layers"),
    (("--stage.eval.phonebook_entries", "[4, 32262064129]",),
     "eval.phonebook_entries = [4, 32262064129]: must each be in [1, 32262064128] (the distinct names a book can hold)"),
])
def test_a_spec_workers_would_fail_on_is_refused_when_it_loads(args: tuple[str, ...], message: str) -> None:
    """Checks that can run at config load run there: one line, exit 2, no Ray, no worker retries."""
    out = run_job("jobs.pretrain", "--train_manifest", "unused/manifest.json", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors


def test_missing_tokenizer_and_weights_of_another_model_are_refused_before_ray(packed_data, tmp_path) -> None:
    import torch
    from forge_models import build_model, get_preset

    other = tmp_path / "other"
    other.mkdir()
    torch.save(build_model(get_preset("transformer-debug")).state_dict(), other / "model.pt")
    base = ("jobs.pretrain", "--config", "jobs/specs/pretrain.toml", "--train_manifest", str(packed_data.manifest),
            "--stage.seq_len", "64")
    missing = run_job(*base, "--tokenizer", str(tmp_path / "nope.model"))
    assert missing.returncode == 2
    assert f"error: invalid job spec: tokenizer = '{tmp_path / 'nope.model'}': must be an existing" in missing.stderr
    small = run_job(*base, "--model.vocab_size", "256")  # the data's tokenizer has 512 pieces
    assert small.returncode == 2
    assert (f"error: invalid job spec: model.vocab_size = 256: must be at least the training data's vocabulary "
            f"(512, the tokenizer recorded in {packed_data.manifest}); pass --model.vocab_size 512") in small.stderr
    wrong = run_job(*base, "--init_weights", str(other))
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"init_weights = '{other}': weights at {other / 'model.pt'} belong to another model" in errors[0]
    assert "Started a local Ray instance" not in wrong.stdout + wrong.stderr
