"""bench/loopback.py: the trees it times start from bytecode; its event-loop CPU is one thread's."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import load_bench  # type: ignore[import-not-found,unused-ignore]


def _tree(root: Path) -> Path:
    pkg = root / "src" / "swarmhub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    return pkg


def _pycs(pkg: Path) -> set[str]:
    return {p.name.split(".")[0] for p in pkg.glob("__pycache__/*.pyc")}


def test_ours_and_the_other_tree_are_compiled_before_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loopback = load_bench("loopback")
    ours, other = _tree(tmp_path / "ours"), _tree(tmp_path / "other")
    monkeypatch.setattr(loopback, "REPO_ROOT", tmp_path / "ours")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE=1
    assert _pycs(ours) == _pycs(other) == set()
    assert loopback.compile_trees(tmp_path / "other") == [ours, other.resolve()]
    assert _pycs(ours) == _pycs(other) == {"__init__", "mod"}


def test_a_threads_cpu_is_read_apart_from_the_processes() -> None:
    """The event-loop figure is the get's main thread alone, not its hash and disk pools."""
    loopback = load_bench("loopback")

    def burn() -> None:  # ~0.3 CPU-s in another thread of this process
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass

    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    pid = os.getpid()
    # /proc counts in clock ticks (10 ms): the worker's 0.3 s show in the process only
    assert loopback._cpu_of(pid) - loopback._cpu_of(pid, pid) >= 0.25
