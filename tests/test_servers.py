"""The test servers of a killed test run are stopped by the next one (tests/servers.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import _record, reap_orphans


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in server process (ours, so the test can see how it ended)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait(30)


def test_a_dead_owners_server_is_stopped_and_its_folder_removed(
        tmp_path: Path, server: subprocess.Popen[bytes]) -> None:
    folder = tmp_path / f"swarmhub-redis-{_dead_pid()}-abc"
    folder.mkdir()
    _record(folder, server.pid, signal.SIGKILL)
    assert reap_orphans(tmp_path) == [folder]
    assert server.wait(30) == -signal.SIGKILL
    assert not folder.exists()


def test_a_live_owners_server_and_a_reused_pid_are_left_alone(
        tmp_path: Path, server: subprocess.Popen[bytes]) -> None:
    mine = tmp_path / f"swarmhub-pg-{os.getpid()}-abc"
    mine.mkdir()
    _record(mine, server.pid, signal.SIGKILL)
    # a dead owner whose record names a PID now used by another process (start time differs)
    reused = tmp_path / f"swarmhub-s3-{_dead_pid()}-abc"
    reused.mkdir()
    (reused / "server.pid").write_text(f"{server.pid} 1 {int(signal.SIGKILL)}\n")
    assert reap_orphans(tmp_path) == [reused]
    assert server.poll() is None
    assert mine.exists()
