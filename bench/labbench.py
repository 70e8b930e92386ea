"""What the benches around the netns lab share (``lab_packets.py``, ``lab_wait.py``,
``swarm.py``): the options and the run of one ``swarmhub lab run --keep``, the lab's
network namespaces, and a sampler thread that polls while a run goes on. Not a bench.

A script imports it from its own folder (``python bench/X.py`` puts ``bench/`` first on
``sys.path``; a test loading a bench by path puts it there first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

__all__ = ["Poller", "add_lab_run_options", "finish", "lab_namespaces", "lab_run_command",
           "run_lab"]


def add_lab_run_options(p: argparse.ArgumentParser, *, prefix: str,
                        modes_option: str = "--modes", modes_default: str = "p2p,hybrid",
                        modes_help: str | None = None) -> None:
    """The options of the one ``lab run`` a bench wraps (``--peers``, ``--modes`` under
    the name ``modes_option``, ``--size``, ``--up``, ``--down``, ``--latency``,
    ``--prefix``, ``--out``), ``--json`` for the bench's figures, ``--swarmhub`` and the
    extra ``lab run`` arguments after ``--``."""
    p.add_argument("--peers", type=int, default=32)
    p.add_argument(modes_option, dest="modes", default=modes_default, help=modes_help,
                   metavar=modes_option.strip("-").upper())
    p.add_argument("--size", default="32MiB")
    p.add_argument("--up", default="20mbit")
    p.add_argument("--down", default="100mbit")
    p.add_argument("--latency", default="10ms")
    p.add_argument("--prefix", default=prefix)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--swarmhub", default=str(Path(sys.executable).parent / "swarmhub"))
    p.add_argument("extra", nargs="*", help="more `lab run` arguments (after --)")


def lab_run_command(a: argparse.Namespace) -> list[str]:
    """``swarmhub lab run ... --keep`` from :func:`add_lab_run_options`' options."""
    return [a.swarmhub, "lab", "run", "--peers", str(a.peers), "--modes", a.modes, "--size",
            a.size, "--up", a.up, "--down", a.down, "--latency", a.latency, "--prefix",
            a.prefix, "--out", str(a.out), "--keep", *a.extra]


def run_lab(a: argparse.Namespace, env: dict[str, str] | None = None,
            started: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Run :func:`lab_run_command` (the load average and the command printed first, the
    tail of its output after; ``started`` gets its PID); its ``results.json``."""
    cmd = lab_run_command(a)
    print(f"load average {os.getloadavg()}; {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if started is not None:
        started(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    print(stdout[-3000:], stderr[-2000:], sep="\n", flush=True)
    results: list[dict[str, Any]] = json.loads((a.out / "results.json").read_text())
    return results


def finish(got: Any, json_path: Path | None) -> None:
    """A bench's last lines: the load average, and its figures to ``--json``."""
    print(f"load average {os.getloadavg()}")
    if json_path:
        json_path.write_text(json.dumps(got, indent=1))


def lab_namespaces(prefix: str) -> dict[int, str]:
    """The lab's network namespaces now: inode -> name after ``<prefix>-`` (``br``, ``h3``)."""
    got: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/run/netns"):
            if name.startswith(prefix + "-"):
                with contextlib.suppress(OSError):
                    got[os.stat(f"/run/netns/{name}").st_ino] = name[len(prefix) + 1:]
    return got


class Poller:
    """Calls :meth:`poll` every ``interval`` s on a thread of its own, from entering a
    ``with`` block to leaving it."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
