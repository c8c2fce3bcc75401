"""Reproduce the paper's findings at small scale: Mamba-2, a Transformer and a Mamba-2-Hybrid of
matched size trained on the same data and seeds, compared on in-context recall (phonebook, needle
in a haystack) up to 4x their trained length; and the same models trained with and without document
resets. One MLflow parent run, a child per model and seed, and a results page with plots.

One H200 (about 20 minutes of GPU time):
    python -m jobs.reproduce --config jobs/specs/reproduce_recall.toml
A laptop, in a few minutes (tiny models: checks that everything runs, not the findings):
    python -m jobs.reproduce --config jobs/specs/reproduce_recall_cpu.toml

Any field can be overridden: `--seeds 0,1 --stage.train.steps 300`; `--help` lists them all.
"""

import sys

from forge_platform.cli import job_main
from forge_platform.job_config import StudyConfig
from forge_platform.study import run_study

if __name__ == "__main__":
    sys.exit(job_main(StudyConfig, run_study, __doc__))
