"""A `ray start` cluster that is gone must not slow our local Ray: its leftover address file is removed
(Ray's State API, which Ray Train polls at every stage, waited ~40 s per query on a dead address)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from forge_platform.cluster import forget_dead_cluster_address


def test_a_dead_address_is_forgotten_and_a_live_one_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's temp dir, where `ray start` records its address
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    assert forget_dead_cluster_address() == ""  # no record: nothing to do

    with socket.socket() as listener:  # something answers here
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        record.write_text(live)
        assert forget_dead_cluster_address() == "" and record.read_text() == live
    # The listener is closed: nothing answers at that port any more.
    assert forget_dead_cluster_address() == live and not record.exists()
