"""The driver's tracking calls that could not be made yet, kept in order on disk until they can.

A call is a small dict (`{"op": "set_tag", "run_id": ..., ...}`) appended to a JSON-lines file the
moment it is queued, so a job that dies with the server down leaves them behind; the next job
that uses the same folder (or `python -m forge_platform.tracking.replay`) sends them. Calls
are replayed in the order they were made, and each is safe to make twice: tags and a run's end
state are set, metrics carry the timestamp they were first logged with (MLflow's SQL store
keeps one point per run, key, timestamp, step and value), artifacts overwrite, and a run is
created with its `forge.run_key`, which continues an unfinished run with that key.

A run started while the server was down has a placeholder id (`pending-...`); when its `start`
call is replayed, the placeholder is replaced by the real id in every call after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Call = dict[str, Any]

JOURNAL_FILE = "driver_calls.jsonl"
"""The journal's name inside `tracking.spill_dir`."""
REJECTED_FILE = "driver_calls.rejected.jsonl"
"""Calls the server answered with a client error (4xx): kept for a person, never retried."""


class CallJournal:
    """Calls waiting for the server, in order, mirrored in `folder / JOURNAL_FILE`."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_FILE
        self.calls: list[Call] = []
        self.run_ids: dict[str, str] = {}
        """Placeholder id -> real run id, for the runs created by a replay."""
        if self.path.exists():  # left by an earlier job: send it with this one's
            self.calls = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, call: Call) -> None:
        self.calls.append(call)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(call) + "\n")

    def resolve(self, run_id: str) -> str:
        """The real id of a run (a placeholder's once its run exists)."""
        return self.run_ids.get(run_id, run_id)

    def replay(self, make: Callable[[Call], str | None], is_rejection: Callable[[Exception], bool]) -> int:
        """Make the calls in order with `make` (which returns the run id a `start` created) until
        one fails; return how many were made. A call the server rejects is set aside, not retried."""
        made = 0
        while self.calls:
            call = self.with_real_ids(self.calls[0])
            try:
                created = make(call)
            except Exception as err:  # noqa: BLE001 - the server is down again: keep the rest
                if not is_rejection(err):
                    break
                with open(self.path.parent / REJECTED_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**call, "error": str(err)[:500]}) + "\n")
                print(f"tracking: MLflow rejected a queued {call['op']} ({str(err)[:160]}); kept in "
                      f"{self.path.parent / REJECTED_FILE}", flush=True)
                created = None
            if call["op"] == "start" and created:
                self.run_ids[call["pending_id"]] = created
            self.calls.pop(0)
            made += 1
            self._rewrite()
        return made

    def with_real_ids(self, call: Call) -> Call:
        return {k: self.resolve(v) if k in ("run_id", "parent_run_id") and isinstance(v, str) else v
                for k, v in call.items()}

    def _rewrite(self) -> None:
        if not self.calls:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(self.with_real_ids(c)) + "\n" for c in self.calls))
        tmp.replace(self.path)
