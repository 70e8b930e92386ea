"""Start-up: seconds from ``swarmhub get`` process start to its first peer connection.

    .venv/bin/python bench/startup.py [--rounds 7] [--src DIR ...] [--help-runs 5]

Why: issue 9 wants the first peer contact within 0.5 s of process start on loopback (import
only what the command needs). One ``swarmhub seed`` of a small file on 127.0.0.1; each round
starts a fresh ``get --peer`` with ``-vv`` and reads the wall-clock time of its first
"connected <Peer" log record (a log handler added before the CLI runs writes it, with the
CPU seconds the process has used so far: steadier than wall time on a shared machine); the
process start is taken just before ``Popen``.

Anchor, in the same rounds: the same interpreter doing nothing but ``socket.create_connection``
to the seed (the floor of any Python client), so a busy machine shows in both. Each ``--src``
(a ``src`` folder: PYTHONPATH for the children; default this checkout's) runs in every round,
in turn, so two trees (main and a branch) meet the same load. Also the user+sys CPU seconds
of ``swarmhub get --help`` (steadier than wall time on a shared machine).

Bytecode: the children cache it under a temporary PYTHONPYCACHEPREFIX (even where
PYTHONDONTWRITEBYTECODE is set) after one untimed warm-up per tree, as an installed package
has it (pip compiles at install); without it a fresh checkout spends ~0.2-0.3 s compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import VENV_PYTHON, make_test_data

__all__ = ["main"]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
OWN_SRC = Path(__file__).resolve().parents[1] / "src"
#: ``swarmhub get`` (as ``python -m swarmhub``), plus a log handler that writes the wall
#: clock and the process's CPU seconds at the first "connected <Peer" record.
_PROBE = """
import logging, os, sys, time
class Probe(logging.Handler):
    def emit(self, record):
        if "connected <Peer" in record.getMessage() and self.level == 0:
            self.setLevel(100)
            with open(os.environ["STARTUP_PROBE_OUT"], "w") as fh:
                fh.write(f"{record.created} {time.process_time()}")
logging.getLogger("swarmhub.engine.torrent").addHandler(Probe())
sys.argv[0] = "swarmhub"
from swarmhub.cli import main
main()
"""
_FLOOR = ("import socket, sys, time; socket.create_connection(('127.0.0.1', int(sys.argv[1])))"
          ".close(); print(time.time())")


def _first_connect(env: dict[str, str], tfile: Path, port: int,
                   dst: Path) -> tuple[float, float]:
    """One ``get``: (wall seconds from Popen, CPU seconds of the process) at its first
    "connected <Peer" log record."""
    probe = dst.with_suffix(".probe")
    started = time.time()
    out = subprocess.run([str(VENV_PYTHON), "-c", _PROBE, "get", str(tfile), "-o", str(dst),
                          "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "-vv",
                          "--json"],
                         env=dict(env, SWARMHUB_STATE_DIR=str(dst) + "s",
                                  STARTUP_PROBE_OUT=str(probe)),
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not probe.exists():
        raise RuntimeError(f"get failed ({out.returncode}):\n{out.stderr[-2000:]}")
    at, cpu = map(float, probe.read_text().split())
    return at - started, cpu


def _floor(env: dict[str, str], port: int) -> float:
    started = time.time()
    out = subprocess.run([str(VENV_PYTHON), "-c", _FLOOR, str(port)], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout) - started


def _help_cpu(env: dict[str, str]) -> float:
    """User+sys CPU seconds of one ``swarmhub get --help``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([*SWARMHUB, "get", "--help"], env=env, capture_output=True, timeout=60,
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--src", action="append", type=Path,
                   help="a src folder to run (repeat to compare); default: this checkout's")
    p.add_argument("--help-runs", type=int, default=5)
    args = p.parse_args(argv)
    srcs = [s.resolve() for s in args.src or [OWN_SRC]]
    work = Path(tempfile.mkdtemp(prefix="swarmhub-startup-"))
    # The network rule: no DHT bootstrap routers (public hosts), no LSD multicast.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    base.update(SWARMHUB_DHT="0", SWARMHUB_DHT_LOCAL_ONLY="1", SWARMHUB_LSD="0",
                SWARMHUB_STATE_DIR=str(work / "state"))
    envs = {src: dict(base, PYTHONPATH=str(src), PYTHONPYCACHEPREFIX=str(work / f"pyc{i}"))
            for i, src in enumerate(srcs)}
    print(f"load average at start: {_load()} ({os.cpu_count()} CPUs)", flush=True)
    seed = None
    firsts: dict[Path, list[float]] = {s: [] for s in srcs}
    cpus: dict[Path, list[float]] = {s: [] for s in srcs}
    floors: list[float] = []
    try:
        data = make_test_data(work / "src", [4 << 20], seed=1)
        tfile = work / "t.torrent"
        env0 = envs[srcs[0]]
        subprocess.run([*SWARMHUB, "create", str(data), "-o", str(tfile)], check=True,
                       env=env0, capture_output=True)
        seed = subprocess.Popen([*SWARMHUB, "seed", str(tfile), str(data), "--listen",
                                 "127.0.0.1:0", "--json"], env=env0, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert seed.stdout is not None
        port = 0
        for line in seed.stdout:
            if '"listening"' in line:
                port = int(json.loads(line)["port"])
                break
        for i, src in enumerate(srcs):  # warm-up: bytecode into the cache prefix
            _first_connect(envs[src], tfile, port, work / f"warm{i}")
        for n in range(args.rounds):
            floors.append(_floor(base, port))
            for i, src in enumerate(srcs):
                wall, cpu_s = _first_connect(envs[src], tfile, port, work / f"dl{n}-{i}")
                firsts[src].append(wall)
                cpus[src].append(cpu_s)
            print(f"  round {n + 1}: floor {floors[-1]:.3f} s; " + "; ".join(
                f"{src}: {firsts[src][-1]:.3f} s ({cpus[src][-1]:.3f} CPU-s)" for src in srcs),
                flush=True)
        cpu = {src: [_help_cpu(envs[src]) for _ in range(args.help_runs)] for src in srcs}
    except RuntimeError as exc:
        print(exc)
        return 1
    finally:
        if seed is not None:
            seed.terminate()
            seed.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(floors)
    print(f"\nfloor (python, connect only): median of {args.rounds} {floor:.3f} s")
    for src in srcs:
        med = statistics.median(firsts[src])
        print(f"{src}: first peer connection, median of {args.rounds}: {med:.3f} s (target "
              f"<= 0.5), {med / floor:.1f}x the floor, {statistics.median(cpus[src]):.3f} "
              f"CPU-s in the process; `get --help` CPU median of {args.help_runs} "
              f"{statistics.median(cpu[src]):.3f} s")
    if len(srcs) > 1:
        a, b = srcs[0], srcs[-1]
        def ratio(d: dict[Path, list[float]]) -> float:
            return statistics.median(d[b]) / statistics.median(d[a])

        print(f"{b} / {a}: first connection {ratio(firsts):.2f} (wall), {ratio(cpus):.2f} "
              f"(CPU); get --help CPU {ratio(cpu):.2f}")
    print(f"load average at end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
