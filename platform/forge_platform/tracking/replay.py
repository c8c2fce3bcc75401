"""Send what a job could not send to MLflow: its queued driver calls and rank 0's spilled metrics.

    python -m forge_platform.tracking.replay runs/campaign/tracking --uri http://mlflow.forge.svc.cluster.local:5000

A job does this itself when the server answers again, and the next job using the same folder
sends what an earlier one left; this command is for a job that ended during an outage. Every call
and metric point is safe to send twice (see `forge_platform.tracking.journal`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from forge_platform.tracking.runs import MlflowRuns
from forge_platform.tracking.transport import PENDING_RUN_PREFIX, unreachable_reason

METRICS_SUFFIX = ".metrics.jsonl"


def replay(spill_dir: Path, uri: str, experiment: str = "hybrid-forge") -> int:
    """Send everything kept in `spill_dir`; return how many files or calls are still left."""
    reason = unreachable_reason(uri)
    if reason:
        print(f"error: MLflow at {uri} is unreachable ({reason}); nothing sent", file=sys.stderr)
        return -1
    runs = MlflowRuns(uri, experiment, spill_dir)  # sends the queued driver calls first
    for path in sorted(spill_dir.glob(f"*{METRICS_SUFFIX}")):  # rank 0's spill files no queued call names
        run_id = path.name[: -len(METRICS_SUFFIX)]
        if not runs.journal.resolve(run_id).startswith(PENDING_RUN_PREFIX):  # a run that exists
            runs.send_spilled(run_id)
    left = len(runs.journal) + sum(1 for _ in spill_dir.glob(f"*{METRICS_SUFFIX}"))
    print(f"{left} files or calls left in {spill_dir}")
    return left


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spill_dir", type=Path, help="the job's tracking.spill_dir (default <output_dir>/tracking)")
    parser.add_argument("--uri", required=True, help="the MLflow tracking URI")
    parser.add_argument("--experiment", default="hybrid-forge", help="experiment of runs created by the replay")
    args = parser.parse_args(argv)
    return 0 if replay(args.spill_dir, args.uri, args.experiment) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
