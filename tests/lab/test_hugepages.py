"""``lab simulate`` re-executes itself on glibc's malloc with transparent huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmhub.lab.hugepages import ENV, TUNABLE, glibc_version, hugepage_env, thp_mode

LINUX = {"PATH": "/usr/bin"}


def test_the_environment_asks_glibc_for_huge_pages_where_it_can() -> None:
    env, why = hugepage_env(LINUX, "Linux", (2, 36), "madvise")
    assert env is not None and "madvise" in why
    assert env["PYTHONMALLOC"] == "malloc"
    assert env["GLIBC_TUNABLES"] == TUNABLE
    assert env[ENV] == "1" and env["PATH"] == "/usr/bin"
    # the caller's other tunables are kept
    env, _ = hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "Linux", (2, 35),
                          "always")
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize(("environ", "system", "glibc", "thp"), [
    ({}, "Darwin", None, None),
    ({}, "Linux", None, "madvise"),  # musl
    ({}, "Linux", (2, 34), "madvise"),  # no glibc.malloc.hugetlb
    ({}, "Linux", (2, 36), "never"),
    ({}, "Linux", (2, 36), None),
    ({"PYTHONMALLOC": "debug"}, "Linux", (2, 36), "madvise"),  # the caller's choice
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", (2, 36), "madvise"),
    ({ENV: "0"}, "Linux", (2, 36), "madvise"),  # asked not to
    ({ENV: "1"}, "Linux", (2, 36), "madvise"),  # the re-executed child: never twice
])
def test_no_reexecution_where_it_cannot_help_or_would_loop(
        environ: dict[str, str], system: str, glibc: tuple[int, int] | None,
        thp: str | None) -> None:
    env, why = hugepage_env(environ, system, glibc, thp)
    assert env is None and why


def test_the_kernel_and_libc_are_read(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    assert thp_mode(tmp_path / "missing") is None
    got = glibc_version()
    assert got is None or got >= (2, 0)


def _simulate(tmp_path: Path, name: str, extra: dict[str, str]) -> tuple[str, dict[str, object]]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONMALLOC", "GLIBC_TUNABLES", ENV)}
    env.update({"SWARMHUB_DHT": "0", "SWARMHUB_LSD": "0", "PYTHONHASHSEED": "0", **extra})
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "swarmhub", "lab", "simulate", "--peers", "8", "--modes",
         "p2p", "--size", "4MiB", "--piece-size", "256KiB", "--out", str(out), "-vv"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    return done.stderr, results


def _comparable(results: object) -> object:
    """What a run simulated (not its wall time, nor the measured hashing speed)."""
    assert isinstance(results, list)
    return [(r["ratio"], r["source_upload"], r["last_completion_s"], r["hosts"])
            for r in results]


def test_the_command_reexecutes_once_on_huge_pages_with_the_same_results(
        tmp_path: Path) -> None:
    import platform

    if hugepage_env({}, platform.system(), glibc_version(), thp_mode())[0] is None:
        pytest.skip("no glibc >= 2.35 with transparent huge pages here")
    err, on = _simulate(tmp_path, "on", {})
    # the child got the variables (it logs what it runs on) and ran only once
    assert f"re-executed: PYTHONMALLOC=malloc GLIBC_TUNABLES={TUNABLE}" in err
    assert err.count("lab simulate: memory:") == 1
    err, off = _simulate(tmp_path, "off", {ENV: "0"})
    assert f"{ENV}=0: CPython's allocator kept" in err
    assert _comparable(on) == _comparable(off)
