"""Start-up: seconds from ``swarmhub get`` process start to its first peer connection.

    .venv/bin/python bench/startup.py [--rounds 7] [--src DIR ...] [--help-runs 5]
                                      [--cases torrent,magnet,hub]

Why: issue 9 wants the first peer contact within 0.5 s of process start on loopback (import
only what the command needs). Three ways in, each against a real peer on 127.0.0.1:

- ``torrent``: ``get T.torrent --peer RELAY`` (a ``swarmhub seed`` of a small file);
- ``magnet``: ``get "magnet:?xt=...&x.pe=RELAY"`` (the same seed; the first connection
  fetches the metadata);
- ``hub``: ``get http://HUB/f/ID --peer RELAY`` (a ``swarmhub hub``; RELAY leads to its
  BitTorrent peer; a peer from the hub's tracker comes one announce later).

RELAY is a TCP relay in this process in front of the real peer: the wall-clock time it
accepts the first connection, less the time just before ``Popen``, is the figure (what a
peer sees; no probe inside the client). The CPU seconds the ``get`` process had used when
its first BitTorrent handshake completed come from a log handler added before the CLI runs
(its first "connected <Peer" record: for a magnet that is after the metadata), and are
steadier than wall time on a shared machine.

Anchor, in the same rounds: the same interpreter doing nothing but ``socket.create_connection``
to the seed (the floor of any Python client), so a busy machine shows in both. Each ``--src``
(a ``src`` folder: PYTHONPATH for the children; default this checkout's) runs in every round,
in turn, so two trees (main and a branch) meet the same load. Also the user+sys CPU seconds
of ``swarmhub get --help`` (steadier than wall time on a shared machine).

Bytecode: the children cache it under a temporary PYTHONPYCACHEPREFIX (even where
PYTHONDONTWRITEBYTECODE is set) after one untimed warm-up per tree and case, as an
installed package has it (pip compiles at install); without it a fresh checkout spends
~0.2-0.3 s compiling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.interop.harness import VENV_PYTHON, make_test_data

from hub_get import _free_port, _publish, _start_hub

__all__ = ["main"]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
OWN_SRC = Path(__file__).resolve().parents[1] / "src"
CASES = ("torrent", "magnet", "hub")
#: ``swarmhub get`` (as ``python -m swarmhub``), plus a log handler that writes the
#: process's CPU seconds at the first "connected <Peer" record.
_PROBE = """
import logging, os, sys, time
class Probe(logging.Handler):
    def emit(self, record):
        if "connected <Peer" in record.getMessage() and self.level == 0:
            self.setLevel(100)
            with open(os.environ["STARTUP_PROBE_OUT"], "w") as fh:
                fh.write(f"{time.process_time()}")
logging.getLogger("swarmhub.engine.torrent").addHandler(Probe())
sys.argv[0] = "swarmhub"
from swarmhub.cli import main
main()
"""
_FLOOR = ("import socket, sys, time; socket.create_connection(('127.0.0.1', int(sys.argv[1])))"
          ".close(); print(time.time())")


class Relay:
    """A loopback TCP relay to ``target`` that notes when it accepts its first connection
    since :meth:`reset` (threads; each connection is copied both ways until one side
    closes; everything ends with :meth:`close`)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.first: float | None = None
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.first = None

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            at = time.time()
            with self._lock:
                if self.first is None:
                    self.first = at
            try:
                far = socket.create_connection(self.target, timeout=10)
            except OSError:
                conn.close()
                continue
            far.settimeout(None)
            with self._lock:
                self._conns += [conn, far]
            for a, b in ((conn, far), (far, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for c in self._conns:
                c.close()


def _first_connect(env: dict[str, str], source: str, relay: Relay, dst: Path,
                   extra: list[str]) -> tuple[float, float]:
    """One ``get``: (wall seconds from Popen to the relay's first accept, CPU seconds of
    the process at its first "connected <Peer" log record)."""
    probe = dst.with_suffix(".probe")
    relay.reset()
    started = time.time()
    out = subprocess.run([str(VENV_PYTHON), "-c", _PROBE, "get", source, "-o", str(dst),
                          "--listen", "127.0.0.1:0", "-vv", "--json", *extra],
                         env=dict(env, SWARMHUB_STATE_DIR=str(dst) + "s",
                                  STARTUP_PROBE_OUT=str(probe)),
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not probe.exists() or relay.first is None:
        raise RuntimeError(f"get failed ({out.returncode}, relay accepted "
                           f"{relay.first is not None}):\n{out.stderr[-2000:]}")
    shutil.rmtree(dst, ignore_errors=True)
    return relay.first - started, float(probe.read_text())


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


def _seed(env: dict[str, str], work: Path) -> tuple[subprocess.Popen[str], Path, str, int]:
    """A ``swarmhub seed`` of 4 MiB on loopback: (process, .torrent, magnet, port)."""
    data = make_test_data(work / "src", [4 << 20], seed=1)
    tfile = work / "t.torrent"
    made = subprocess.run([*SWARMHUB, "create", str(data), "-o", str(tfile)], check=True,
                          env=env, capture_output=True, text=True)
    magnet = next(ln for ln in made.stdout.splitlines() if ln.startswith("magnet:"))
    seed = subprocess.Popen([*SWARMHUB, "seed", str(tfile), str(data), "--listen",
                             "127.0.0.1:0", "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert seed.stdout is not None
    for line in seed.stdout:
        if '"listening"' in line:
            return seed, tfile, magnet, int(json.loads(line)["port"])
    raise RuntimeError("the seed did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--src", action="append", type=Path,
                   help="a src folder to run (repeat to compare); default: this checkout's")
    p.add_argument("--help-runs", type=int, default=5)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    if not set(cases) <= set(CASES):
        p.error(f"--cases: choose from {', '.join(CASES)}")
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
    stack = contextlib.ExitStack()  # the hub and the relays
    series = [(case, src) for case in cases for src in srcs]
    firsts: dict[tuple[str, Path], list[float]] = {k: [] for k in series}
    cpus: dict[tuple[str, Path], list[float]] = {k: [] for k in series}
    floors: list[float] = []
    try:
        env0 = envs[srcs[0]]
        seed, tfile, magnet, port = _seed(env0, work)
        seed_relay = Relay(("127.0.0.1", port))
        stack.callback(seed_relay.close)
        # source, relay, extra arguments of each case's get
        how: dict[str, tuple[str, Relay, list[str]]] = {
            "torrent": (str(tfile), seed_relay, ["--peer", f"127.0.0.1:{seed_relay.port}"]),
            "magnet": (f"{magnet}&x.pe=127.0.0.1:{seed_relay.port}", seed_relay, []),
        }
        if "hub" in cases:
            peer_port = _free_port()
            hub, url, token = _start_hub(work, peer_port)
            stack.enter_context(hub)
            # 64 MiB: a 4 MiB file came whole from the hub's web seed (~40 MB/s) before the
            # first peer handshake on a loaded machine, and the round had no figure
            file_url = _publish(url, token, make_test_data(work / "hubsrc", [64 << 20],
                                                           seed=2), work)
            hub_relay = Relay(("127.0.0.1", peer_port))
            stack.callback(hub_relay.close)
            how["hub"] = (file_url, hub_relay, ["--peer", f"127.0.0.1:{hub_relay.port}"])
        for case, src in series:  # warm-up: bytecode into the cache prefix
            _first_connect(envs[src], how[case][0], how[case][1], work / "warm",
                           how[case][2])
        for n in range(args.rounds):
            floors.append(_floor(base, port))
            order = series if n % 2 == 0 else series[::-1]
            for key in order:
                case, src = key
                wall, cpu_s = _first_connect(envs[src], how[case][0], how[case][1],
                                             work / f"dl{n}", how[case][2])
                firsts[key].append(wall)
                cpus[key].append(cpu_s)
            print(f"  round {n + 1}: floor {floors[-1]:.3f} s; " + "; ".join(
                f"{case} {src.parent.name}: {firsts[case, src][-1]:.3f} s "
                f"({cpus[case, src][-1]:.3f} CPU-s)" for case, src in series), flush=True)
        cpu = {src: [_help_cpu(envs[src]) for _ in range(args.help_runs)] for src in srcs}
    except RuntimeError as exc:
        print(exc)
        return 1
    finally:
        stack.close()
        if seed is not None:
            seed.terminate()
            seed.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(floors)
    print(f"\nfloor (python, connect only): median of {args.rounds} {floor:.3f} s")
    print(f"start -> first peer TCP connection (target <= 0.5 s), medians of {args.rounds}; "
          "CPU-s of the process at its first peer handshake:")
    for case, src in series:
        med = statistics.median(firsts[case, src])
        print(f"  {case:8} {src}: {med:.3f} s, {med / floor:.1f}x the floor, "
              f"{statistics.median(cpus[case, src]):.3f} CPU-s")
    help_runs = args.help_runs > 0  # --help-runs 0 skips them: no median of nothing
    for src in srcs if help_runs else ():
        print(f"`get --help` CPU, median of {args.help_runs}, {src}: "
              f"{statistics.median(cpu[src]):.3f} s")
    if len(srcs) > 1:
        a, b = srcs[0], srcs[-1]
        def ratio(d: dict[tuple[str, Path], list[float]], case: str) -> float:
            return statistics.median(d[case, b]) / statistics.median(d[case, a])

        for case in cases:
            print(f"{case}: {b} / {a}: first connection {ratio(firsts, case):.2f} (wall), "
                  f"{ratio(cpus, case):.2f} (CPU)")
        if help_runs:
            print(f"get --help CPU {b} / {a}: "
                  f"{statistics.median(cpu[b]) / statistics.median(cpu[a]):.2f}")
    print(f"load average at end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
