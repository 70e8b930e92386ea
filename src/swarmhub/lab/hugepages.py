"""``lab simulate`` on transparent huge pages: re-execute once with glibc's malloc asking for them.

Why: at N=10,000 the simulator's time per event is +50 % over N=1,000 at the same
instructions: the same work on colder memory (bench/README.md, sim10k-45). Its ~2.5 GiB
of small objects span far more 4 KiB pages than the TLB holds, so most misses also miss
the TLB. CPython's own allocator (pymalloc) takes 1 MiB arenas that never get huge pages
in the kernel's ``madvise`` mode (the common default); glibc's malloc asks for them on
its heap when told to (``glibc.malloc.hugetlb=1``, glibc >= 2.35). So
``PYTHONMALLOC=malloc GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` cut the time per event
by ~7-12 % at N=3,000-10,000 (sim10k-46). Both are read when the interpreter starts, so
the command re-executes itself once, before any work, with them set.

Results do not change: the simulation draws from its own seeded generators and orders
by (time, insertion number), never by an object's address (checked with
``bench/sim_fingerprint.py`` under both allocators, sim10k-46).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ENV", "TUNABLE", "describe", "glibc_version", "hugepage_env", "maybe_reexec",
           "thp_mode"]

log = logging.getLogger(__name__)

#: ``SWARMHUB_SIM_HUGEPAGES``: ``0`` keeps CPython's allocator (no re-execution); the
#: re-executed child has it at ``1``, which is also what stops a second re-execution.
ENV = "SWARMHUB_SIM_HUGEPAGES"
#: The glibc tunable that makes malloc ``madvise(MADV_HUGEPAGE)`` the memory it maps.
TUNABLE = "glibc.malloc.hugetlb=1"
THP_PATH = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_PATH) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or
    None where there is no such file (not Linux, or a kernel without THP)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library if it is glibc, else None (musl, macOS)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return None
    name, _, version = text.partition(" ")
    parts = version.split(".")
    if name != "glibc" or len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def hugepage_env(environ: Mapping[str, str], system: str, glibc: tuple[int, int] | None,
                 thp: str | None) -> tuple[dict[str, str] | None, str]:
    """The environment to re-execute with (None: run as is), and why, in words.

    Only where it helps and cannot surprise: Linux with glibc >= 2.35 (the tunable),
    THP not ``never``, and the user has chosen no allocator of their own (an explicit
    ``PYTHONMALLOC``, e.g. ``debug``, wins) nor a ``glibc.malloc.hugetlb`` setting."""
    flag = environ.get(ENV)
    if flag == "1":
        return None, (f"re-executed: PYTHONMALLOC={environ.get('PYTHONMALLOC', '')} "
                      f"GLIBC_TUNABLES={environ.get('GLIBC_TUNABLES', '')}")
    if flag is not None:
        return None, f"{ENV}={flag}: CPython's allocator kept"
    if system != "Linux":
        return None, f"not Linux ({system})"
    if glibc is None or glibc < (2, 35):
        return None, f"no glibc >= 2.35 (glibc {glibc})"
    if thp in (None, "never"):
        return None, f"transparent huge pages off ({thp})"
    if "PYTHONMALLOC" in environ:
        return None, f"PYTHONMALLOC={environ['PYTHONMALLOC']} set by the caller"
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None, f"GLIBC_TUNABLES={tunables} set by the caller"
    env = dict(environ)
    env["PYTHONMALLOC"] = "malloc"
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env[ENV] = "1"
    return env, f"transparent huge pages {thp}, glibc {glibc[0]}.{glibc[1]}"


def describe() -> str:
    """One line on the allocator this process runs on (for the debug log)."""
    _, why = hugepage_env(os.environ, platform.system(), glibc_version(), thp_mode())
    return why


def maybe_reexec(argv: Sequence[str] | None = None) -> None:
    """Replace this process by the same command on glibc's malloc with huge pages, when
    :func:`hugepage_env` says so; otherwise return. ``execv`` keeps the process id,
    stdin/stdout/stderr and so the exit status; nothing has run yet, nothing is lost.

    Call it only from the console script (``swarmhub.cli.main``): in a test runner or
    a library caller the process is not this command's to replace."""
    env, why = hugepage_env(os.environ, platform.system(), glibc_version(), thp_mode())
    if env is None:
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    log.debug("lab simulate: re-executing on glibc malloc with huge pages (%s)", why)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *args], env)
    except OSError as exc:  # e.g. no executable path: run as is
        log.debug("lab simulate: re-execution failed (%s); CPython's allocator kept", exc)
