"""One downloader from a hub: ``swarmhub get http://hub/f/ID`` in hybrid (default) vs cs mode.

    .venv/bin/python bench/hub_get.py [--size 64] [--rounds 3] [--json OUT]
                                      [--baseline OTHER/src]

Why: hybrid must never be the slow choice (issue 9: at most 1.1x the cs time). One hub
process (with its embedded seeding peer) serves one published file over loopback; each
round times a fresh ``get`` process, start to exit 0, in each mode (alternating which goes
first), and reports where the hybrid download's bytes came from (web seed vs peers, from
its ``--json`` finished line). Start-up alone is bench/startup.py. ``--baseline SRC``
adds both modes run with another source tree (``PYTHONPATH=SRC``, e.g. main's) in the same
rounds against the same hub, so a change is measured against its base under the same load.

Bytecode: the ``get`` children cache it under a temporary PYTHONPYCACHEPREFIX (even where
PYTHONDONTWRITEBYTECODE is set), after one untimed warm-up ``get`` per series, as an
installed package has it; otherwise a tree without ``__pycache__`` (a fresh worktree)
compiled its modules in every ``get`` and lost to one that had them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tests.interop.harness import VENV_PYTHON, Proc, make_test_data, wait_listening

__all__ = ["main"]

MiB = 1 << 20
SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
#: This tree's sources, run by PYTHONPATH as a ``--baseline`` is, not through the editable
#: install's import hook: the two series then differ only in their code.
HERE_SRC = str(Path(__file__).resolve().parents[1] / "src")
#: The network rule: no DHT bootstrap routers (a failing DNS lookup of them also cost both
#: modes ~0.7 s at start on a loaded machine).
QUIET = {"SWARMHUB_DHT": "0", "SWARMHUB_DHT_LOCAL_ONLY": "1", "SWARMHUB_LSD": "0"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on the machine skew the times)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _start_hub(work: Path, peer_port: int | None = None) -> tuple[Proc, str, str]:
    """A hub on loopback (its BitTorrent peer on ``peer_port``, default any free port):
    (process, base URL, admin token)."""
    port, peer_port = _free_port(), peer_port or _free_port()
    env = dict(os.environ, **QUIET, SWARMHUB_STATE_DIR=str(work / "hub-state"))
    proc = Proc([*SWARMHUB, "hub", "--data", str(work / "hubdata"), "--listen",
                 f"127.0.0.1:{port}", "--peer-listen", f"127.0.0.1:{peer_port}"],
                env=env, name="hub", log=work / "hub.log")
    line = proc.wait_for_line(lambda s: "admin token" in s, 60)
    token = re.search(r"admin token: (\S+)", line)
    if token is None:
        raise SystemExit(proc.describe())
    wait_listening(port, 30, proc)
    return proc, f"http://127.0.0.1:{port}", token.group(1)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far (/proc, 10 ms
    ticks): the hub's share of each get, read before and after it."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _publish(url: str, token: str, path: Path, work: Path) -> str:
    with Proc([*SWARMHUB, "publish", str(path), "--hub", url, "--token", token],
              name="publish", log=work / "publish.log") as p:
        if p.wait(120) != 0:
            raise SystemExit(p.describe())
        m = re.search(r"http:\s+(\S+)", p.output())
    if m is None:
        raise SystemExit(p.output())
    return m.group(1)


def _get(url: str, mode: str | None, work: Path, n: int, src: str | None = None
         ) -> tuple[float, float, str]:
    # (n < 0: the untimed warm-up)
    """Seconds from start to exit 0, the process's CPU seconds (user + system: on a loaded
    machine they tell more than the wall clock), and the ``finished`` JSON line. ``src``:
    run that source tree's swarmhub (PYTHONPATH; the default is the installed one)."""
    dst = work / f"dl-{mode or 'hybrid'}-{n}"
    args = [*SWARMHUB, "get", url, "-o", str(dst), "--json", "--timeout", "300"]
    if mode:
        args += ["--mode", mode]
    env = dict(os.environ, **QUIET, SWARMHUB_STATE_DIR=str(work / f"state-{n}-{mode}-{src}"),
               PYTHONPYCACHEPREFIX=str(work / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if src:
        env["PYTHONPATH"] = src
    with Proc(args, env=env, name="get", log=work / f"get-{mode}-{n}.log") as p:
        code = p.wait(400)
        seconds, cpu = p.elapsed, p.cpu_s or 0.0
        out = p.output()
    if code != 0:
        raise SystemExit(f"get --mode {mode} failed:\n{out[-3000:]}")
    shutil.rmtree(dst, ignore_errors=True)
    finished = [ln for ln in out.splitlines() if ln.startswith('{"event": "finished"')]
    return seconds, cpu, finished[-1] if finished else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="MiB (default 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--baseline", default=None, metavar="SRC",
                   help="also run both modes with this source tree (e.g. ../main/src)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="swarmhub-hubget-"))
    series = ["cs", "hybrid"] + (["base-cs", "base-hybrid"] if args.baseline else [])
    times: dict[str, list[float]] = {k: [] for k in series}
    cpus: dict[str, list[float]] = {k: [] for k in series}
    #: the finished line's "elapsed": the download alone (from the URL to the last piece),
    #: without the interpreter's start-up and exit, which a loaded machine makes noisy
    inner: dict[str, list[float]] = {k: [] for k in series}
    #: the hub process's CPU seconds during each get (HTTP, tracker and its own peer)
    hub_cpus: dict[str, list[float]] = {k: [] for k in series}
    print(f"load average at start: {_load()}", flush=True)
    details: list[dict[str, object]] = []
    try:
        data = make_test_data(work / "src", [args.size * MiB], seed=3)
        hub, url, token = _start_hub(work)
        with hub:
            file_url = _publish(url, token, data, work)
            for mode in series:  # untimed: compiles each tree's bytecode once
                _get(file_url, "cs" if mode.endswith("cs") else None, work, -1,
                     args.baseline if mode.startswith("base-") else HERE_SRC)
            for n in range(args.rounds):
                # Rotated, not reversed: a reversal of four series kept each in the same two
                # slots every round (hubget-23: main's cs 0.47 s vs the same cs code here
                # 0.56 s); rotation gives each slot to each in turn.
                k = n % len(series)
                for mode in series[k:] + series[:k]:
                    src = args.baseline if mode.startswith("base-") else HERE_SRC
                    hub_before = _cpu_of(hub.pid)
                    secs, cpu, fin = _get(file_url, "cs" if mode.endswith("cs") else None,
                                          work, n, src)
                    hub_cpus[mode].append(_cpu_of(hub.pid) - hub_before)
                    times[mode].append(secs)
                    cpus[mode].append(cpu)
                    if fin:
                        inner[mode].append(float(json.loads(fin)["elapsed"]))
                    details.append({"mode": mode, "round": n + 1, "seconds": secs,
                                    "cpu_s": cpu, "hub_cpu_s": hub_cpus[mode][-1],
                                    "finished": fin})
                    print(f"  round {n + 1} {mode:11}: {secs:6.2f} s  {cpu:5.2f} CPU-s  "
                          f"hub {hub_cpus[mode][-1]:4.2f} CPU-s  "
                          f"{fin[:160]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cs, hy = statistics.median(times["cs"]), statistics.median(times["hybrid"])
    print(f"\n{args.size} MiB, medians of {args.rounds}: cs {cs:.2f} s, hybrid {hy:.2f} s, "
          f"hybrid/cs {hy / cs:.2f} (target <= 1.10)")
    ccs, chy = statistics.median(cpus["cs"]), statistics.median(cpus["hybrid"])
    print(f"CPU-s of the get process, medians: cs {ccs:.2f}, hybrid {chy:.2f}, "
          f"hybrid/cs {chy / ccs:.2f}")
    print("CPU-s of the hub during a get, medians: " + ", ".join(
        f"{k} {statistics.median(v):.3f}" for k, v in hub_cpus.items()))
    if all(inner.values()):
        med = {k: statistics.median(v) for k, v in inner.items()}
        print("download alone (finished line's elapsed), medians: " + ", ".join(
            f"{k} {v:.3f} s" for k, v in med.items()) + f"; hybrid/cs "
            f"{med['hybrid'] / med['cs']:.2f}" + (
                f", baseline's {med['base-hybrid'] / med['base-cs']:.2f}"
                if args.baseline else ""))
    if args.baseline:
        bcs, bhy = statistics.median(times["base-cs"]), statistics.median(times["base-hybrid"])
        bccs, bchy = statistics.median(cpus["base-cs"]), statistics.median(cpus["base-hybrid"])
        print(f"baseline {args.baseline}: cs {bcs:.2f} s, hybrid {bhy:.2f} s, hybrid/cs "
              f"{bhy / bcs:.2f}; CPU-s cs {bccs:.2f}, hybrid {bchy:.2f}; this tree's "
              f"hybrid / the baseline's: {hy / bhy:.2f} (CPU-s {chy / bchy:.2f})")
    print(f"load average at end: {_load()}")
    if args.json:
        args.json.write_text(json.dumps({**times, "cpu": cpus, "elapsed": inner,
                                         "hub_cpu": hub_cpus,
                                         "runs": details}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
