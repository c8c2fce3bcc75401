"""Rank 0's metrics on their way to MLflow: a bounded buffer, a sender thread and a spill file.

    log(metrics, step) ──▶ buffer (at most `max_buffered` points) ──▶ sender thread ──▶ MLflow
            └─ buffer full ──▶ spill file (JSON lines) ──▶ replayed by the sender when MLflow answers

`put` never touches the network: it stamps each point with its step and the time it was logged and
appends it to the buffer, or, when the buffer is full, appends the buffer and the new points to the
spill file (JSON lines in the run's folder: a local write of a few hundred bytes). The sender
thread sends batches with one short attempt each; while the server is down it waits between
attempts (0.5 s doubling to `max_backoff_s`) on its own time, never the training loop's. When a
send succeeds again it replays the spill file before newer points, then removes the file.

Nothing is dropped: `close` gives the sender `drain_timeout_s` to empty the buffer while the server
answers, then writes what is left to the spill file and names it, for the driver to send
(`MlflowRuns.send_spilled`). Points are sent with their original timestamp, so a batch sent twice
(its answer lost, or a replay cut short) is stored once: see `transport`.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from forge_platform.tracking.transport import (MAX_METRICS_PER_BATCH, MetricSender, Record, ServerRejected,
                                               append_records, read_records)


class MetricQueue:
    """Sends one run's metric points from a background thread; see the module docstring."""

    def __init__(self, sender: MetricSender, run_id: str, spill_path: Path, max_buffered: int = 10_000,
                 max_backoff_s: float = 5.0, drain_timeout_s: float = 30.0, offline: bool = False) -> None:
        self.sender = sender
        self.run_id = run_id
        self.spill_path = spill_path
        """JSON lines of points not yet sent (exists only while some are waiting)."""
        self.max_buffered = max_buffered
        self.max_backoff_s = max_backoff_s
        self.drain_timeout_s = drain_timeout_s
        self.offline = offline
        """Never try the server (the run itself is not created yet): everything goes to the spill file."""
        self.num_sent = 0
        """Points the server has acknowledged."""
        self.num_spilled = 0
        """Points written to the spill file (some may have been sent since)."""
        self.log_seconds = 0.0
        """Time the training thread spent in `put`: the whole cost of tracking to the step loop."""
        self._buffer: collections.deque[Record] = collections.deque()
        self._spill_offset = 0  # bytes of the spill file already sent
        self._lock = threading.Condition()
        self._closing = False  # close() was called: send what is left, then stop
        self._closed = False  # close() has returned: what the thread still holds goes to the spill file
        self._down_since = 0.0  # monotonic time of the first failed send of the current outage
        self._thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True)
        if not offline:
            self._thread.start()

    # --- the training thread -------------------------------------------------------------------
    def put(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue one step's metrics; returns at once whatever the server's state."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        records = [{"run_id": self.run_id, "key": k, "value": float(v), "timestamp": now_ms, "step": step}
                   for k, v in metrics.items()]
        with self._lock:
            if self.offline or len(self._buffer) + len(records) > self.max_buffered:
                self._spill([*self._buffer, *records])
                self._buffer.clear()
            else:
                self._buffer.extend(records)
                self._lock.notify()
        self.log_seconds += time.perf_counter() - started

    @property
    def pending(self) -> int:
        """Points held in memory, not yet acknowledged (the spill file not counted)."""
        with self._lock:
            return len(self._buffer)

    @property
    def server_down(self) -> bool:
        """Whether the last attempt to send failed."""
        return self._down_since > 0

    def close(self) -> Path | None:
        """Send what the server will take within `drain_timeout_s`, spill the rest; return the
        spill file if points are left in it (None when everything was sent)."""
        deadline = time.monotonic() + self.drain_timeout_s
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._buffer:
                self._spill(list(self._buffer))
                self._buffer.clear()
            self._closed = True
            left = self._spill_left()
        return self.spill_path if left else None

    # --- the sender thread ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while not (self._buffer or self._spill_left() or self._closing):
                    self._lock.wait()
                if self._closed or (self._closing and not self._buffer and not self._spill_left()):
                    return
                from_file, batch, next_offset = self._next_batch()
            if not batch:
                continue
            try:
                self.sender.send(self.run_id, batch)
            except ServerRejected as err:  # never accepted however often sent: set aside, not retried
                rejected = self.spill_path.with_suffix(".rejected.jsonl")
                append_records(rejected, batch)
                _say(f"MLflow rejected {len(batch)} metric points ({_short(err)}); kept in {rejected}")
                with self._lock:
                    if from_file:
                        self._spill_offset = next_offset
                continue
            except Exception as err:  # noqa: BLE001 - any transport error: keep the points, try later
                with self._lock:
                    if not from_file:
                        self._spill(batch) if self._closed else self._requeue(batch)
                    if not self._down_since:
                        self._down_since = time.monotonic()
                        _say(f"MLflow at {self.sender.tracking_uri} unreachable ({_short(err)}); metrics are "
                             f"buffered (up to {self.max_buffered} points, then {self.spill_path}) and sent "
                             "when it answers; training does not wait")
                    if self._closing:  # the server is down at the end: close() spills the rest
                        return
                    self._lock.wait(timeout=backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.5
            with self._lock:
                self.num_sent += len(batch)
                if from_file:
                    self._spill_offset = next_offset
                    if not self._spill_left():
                        self.spill_path.unlink(missing_ok=True)
                        self._spill_offset = 0
                if self._down_since:
                    _say(f"MLflow answers again after {time.monotonic() - self._down_since:.0f} s; "
                         "sending the buffered metrics")
                    self._down_since = 0.0

    def _next_batch(self) -> tuple[bool, list[Record], int]:
        """The next batch (under the lock): spilled points first, they are the oldest."""
        if self._spill_left():
            records, offset = read_records(self.spill_path, self._spill_offset, MAX_METRICS_PER_BATCH)
            if records:
                return True, records, offset
        batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), MAX_METRICS_PER_BATCH))]
        return False, batch, 0

    def _requeue(self, batch: list[Record]) -> None:
        """Put a failed batch back in front of the buffer, or in the spill file if it no longer fits."""
        if len(self._buffer) + len(batch) > self.max_buffered:
            self._spill([*batch, *self._buffer])
            self._buffer.clear()
        else:
            self._buffer.extendleft(reversed(batch))

    def _spill(self, records: list[Record]) -> None:
        if records:
            append_records(self.spill_path, records)
            self.num_spilled += len(records)

    def _spill_left(self) -> bool:
        try:
            return os.path.getsize(self.spill_path) > self._spill_offset
        except OSError:
            return False


def _say(message: str) -> None:
    print(f"tracking: {message}", file=sys.stderr, flush=True)


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:160]
