"""The lab compiles the package it runs before it starts its processes, so its clients
read bytecode (as an installed swarmhub's do) even where PYTHONDONTWRITEBYTECODE is set."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmhub.lab import bytecode
from swarmhub.lab.results import ScenarioResult
from swarmhub.lab.runner import Runner
from swarmhub.lab.topology import LabProc, LoopbackLab


def _package(root: Path) -> list[Path]:
    pkg = root / "labpkg"
    (pkg / "sub").mkdir(parents=True)
    files = [pkg / "__init__.py", pkg / "mod.py", pkg / "sub" / "__init__.py",
             pkg / "sub" / "deep.py"]
    for f in files:
        f.write_text("VALUE = 1\n")
    return files


def _pyc(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def test_every_module_gets_its_bytecode_and_an_edit_rewrites_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE=1
    files = _package(tmp_path)
    assert bytecode.compile_package(tmp_path / "labpkg")
    assert all(_pyc(f).is_file() for f in files)
    mod = files[1]
    before = _pyc(mod).read_bytes()
    mod.write_text("VALUE = 22\n")
    later = mod.stat().st_mtime + 10  # compileall compares whole seconds of mtime
    os.utime(mod, (later, later))
    assert bytecode.compile_package(tmp_path / "labpkg")
    assert _pyc(mod).read_bytes() != before


def test_a_process_that_may_not_write_bytecode_reads_the_compiled_files(
        tmp_path: Path) -> None:
    files = _package(tmp_path)
    assert bytecode.compile_package(tmp_path / "labpkg")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-v", "-c", "import labpkg.sub.deep"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    # -v names the file each module's code came from
    assert f"code object from '{_pyc(files[3])}'" in out.stderr


class _Started(Exception):
    pass


class _SourceOnly(Runner):
    """Stops the run where the source would start (nothing is started)."""

    def start_source(self) -> None:
        raise _Started

    def start_client(self, host: int) -> LabProc:
        raise AssertionError("no client before the source")


def test_the_runner_compiles_the_package_before_it_starts_the_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _package(tmp_path)
    monkeypatch.setattr(bytecode, "PACKAGE", tmp_path / "labpkg")
    result = ScenarioResult(mode="p2p", client="swarmhub", peers=1, size=1, up_bps=8e6,
                            down_bps=8e6, source_up_bps=8e6, latency_ms=0.0, shaped=False,
                            bound_s=1.0)
    runner = _SourceOnly(LoopbackLab(2, 8e6, 8e6), result, files[1], tmp_path / "work",
                         30.0, lambda _e: None)
    with pytest.raises(_Started):
        runner.run()
    assert all(_pyc(f).is_file() for f in files)
