"""The lab compiles the package it runs before it starts its processes, so its clients
read bytecode (as an installed swarmhub's do) even where PYTHONDONTWRITEBYTECODE is set."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
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


#: Not root's: who the checkout belongs to in the root-owned-bytecode test (nobody).
_OWNER = 65534


def _as_owner(action: str, pkg: Path) -> int:
    """Run ``action`` on ``pkg`` in a forked child that is :data:`_OWNER` (no exec: the
    interpreter may live where that user cannot read); its exit status, 0 when done."""
    pid = os.fork()
    if pid == 0:  # the child: only os._exit leaves it
        status = 3
        try:
            os.setgroups([])
            os.setgid(_OWNER)
            os.setuid(_OWNER)
            if action == "recompile":
                source = pkg / "mod.py"
                py_compile.compile(str(source), cfile=str(_pyc(source)), doraise=True)
            else:
                shutil.rmtree(pkg)
            status = 0
        except OSError:
            status = 1
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root: the lab's case (root compiles a tree another user owns)")
def test_bytecode_the_lab_writes_as_root_stays_replaceable_by_the_checkouts_owner() -> None:
    """As root, on a tree another user owns: every __pycache__ and .pyc is that user's,
    so they can rewrite a stale .pyc and remove their checkout (both failed with
    "Permission denied" when root kept them)."""
    # pytest's own folders are root's alone (0700): the owner's tree goes where it can reach
    home = Path(tempfile.mkdtemp(prefix="swarmhub-bytecode-"))
    try:
        os.chown(home, _OWNER, _OWNER)
        files = _package(home)
        pkg = home / "labpkg"
        for path in pkg.rglob("*"):
            os.chown(path, _OWNER, _OWNER)
        os.chown(pkg, _OWNER, _OWNER)
        assert bytecode.compile_package(pkg)
        for f in files:
            for path in (_pyc(f), _pyc(f).parent):
                st = path.stat()
                assert (st.st_uid, st.st_gid) == (_OWNER, _OWNER), path
        assert _as_owner("recompile", pkg) == 0
        assert _as_owner("remove", pkg) == 0
        assert not pkg.exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_caches_take_the_owner_of_their_source_folder_only_where_they_differ(
        tmp_path: Path) -> None:
    """Without root, nothing to change: the caller owns both (the function is a no-op)."""
    _package(tmp_path)
    assert bytecode.compile_package(tmp_path / "labpkg")
    assert bytecode.give_caches_to_source_owners(tmp_path / "labpkg") == 0


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
