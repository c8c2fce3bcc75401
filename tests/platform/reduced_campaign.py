"""The demo campaign reduced to CI size: its command line, and the curves it leaves in MLflow.

Shared by the end-to-end test (which runs it once per session) and the refactor guard, which
compares its curves with `data/reduced_campaign_curves.json`, recorded from the code before the
platform reshape. To record again after a change that is *meant* to alter the math (say why in
the commit), from the repository root:

    PYTHONPATH=platform:models:data_pipeline:evaluation:. .venv/bin/python -m tests.platform.reduced_campaign \
        tests/platform/data/reduced_campaign_curves.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CURVES_FILE = Path(__file__).resolve().parent / "data" / "reduced_campaign_curves.json"

REDUCED = [
    "--corpus.stdlib_files", "12",
    "--data.tokenizer.vocab_size", "400",
    "--stages.0.train.steps", "6",
    "--stages.0.train.micro_batch_size", "2",
    "--stages.0.train.log_every", "1",
    "--stages.0.optim.lr", "1e-2",
    "--stages.0.optim.warmup_tokens", "0",
    "--stages.0.checkpoint.every_steps", "3",
    "--stages.0.eval.val_batches", "2",
    "--stages.0.eval.phonebook_entries", "[2]",
    "--stages.0.eval.phonebook_queries", "1",
    "--stages.1.train.steps", "2",
    "--stages.1.train.micro_batch_size", "1",
    "--stages.1.train.log_every", "1",
    "--stages.1.eval.val_batches", "1",
    "--stages.1.eval.phonebook_entries", "[2]",
    "--stages.1.eval.phonebook_queries", "1",
    # The recorded curves are the default policy's (every document once); the demo selects long ones.
    "--stages.1.long_documents.min_doc_tokens", "0",
    # Held-out loss and one Phonebook book per stage, as recorded; the demo's RULER and loss by position
    # at several lengths are tested on their own (tests/evaluation).
    "--stages.0.eval.suites", '["validation", "phonebook"]',
    "--stages.0.eval.length_multiples", "[]",
    "--stages.1.eval.suites", '["validation", "phonebook"]',
    "--stages.1.eval.length_multiples", "[]",
]  # fmt: skip

# Per-step metrics that depend only on the math (tokens_per_s, mfu and memory depend on the machine's load).
STEP_METRICS = ("loss", "grad_norm", "lr")
# What evaluation logs once per stage and must not change either.
EVAL_METRICS = ("val_loss", "val_tokens", "phonebook_2_accuracy")


def run_reduced_campaign(out: Path, name: str = "demo-ci") -> subprocess.CompletedProcess[str]:
    """`python -m jobs.campaign` on the demo spec at CI size, writing under `out`."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jobs.campaign", "--config", "jobs/specs/demo.toml",
           "--output_dir", str(out), "--name", name, *REDUCED]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


def read_curves(out: Path, experiment: str = "hybrid-forge-demo") -> dict[str, Any]:
    """Every stage's per-step metrics and evaluation, from the campaign's MLflow database."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    children = client.search_runs([found.experiment_id], filter_string="tags.`forge.kind` = 'stage'",
                                  order_by=["attributes.start_time ASC"])
    stages: dict[str, Any] = {}
    for run in children:
        per_step = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                   key=lambda m: m.step)] for key in STEP_METRICS}
        evals = {key: run.data.metrics[key] for key in EVAL_METRICS if key in run.data.metrics}
        stages[run.info.run_name] = {**per_step, **evals}
    return stages


def main(path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = run_reduced_campaign(Path(tmp))
        if proc.returncode:
            sys.exit(f"the campaign failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        stages = read_curves(Path(tmp))
    import torch

    recorded = {
        "what": "the reduced demo campaign (tests/platform/reduced_campaign.py), per stage",
        "recorded_with": {"python": platform.python_version(), "torch": torch.__version__,
                          "machine": platform.machine(), "cpu_threads": os.cpu_count()},
        "stages": stages,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} ({len(v['loss'])} steps)" for k, v in stages.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(CURVES_FILE))
