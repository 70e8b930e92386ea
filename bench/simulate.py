"""``lab simulate``: its speed (wall time, peak memory) and its fidelity to the netns lab.

    .venv/bin/python bench/simulate.py [--speed 1000,10000] [--fidelity 4,8,16]
        [--rounds 1] [--timeout 1800] [--lab-runs] [--piece-kib 256] [--pure]
        [--no-hugepages] [--json OUT]

Speed: one simulated p2p run per N (32 MiB, 256 KiB pieces, 20 mbit up, 100 mbit down,
10 ms one way), each in a fresh process so its peak RSS is its own; wall and CPU time
(on a shared machine CPU time is the fairer figure; the load average is printed before
and after); with ``--rounds R`` the median of R runs. A run still going after
``--timeout`` wall seconds is stopped and says how far it got (clients done, the last
one's virtual time, CPU, RSS): on a shared machine N=10,000 can take hours. Targets:
N=1,000 in under 60 s, N=10,000 in under 10 minutes, under 4 GiB. The children run on the
allocator `swarmhub lab simulate` re-executes itself on (glibc malloc with transparent huge
pages where the system has them: lab/hugepages.py); ``--no-hugepages`` keeps CPython's.

The runs use the mypyc-compiled core when ``make setup`` built it (scripts/build-compiled.py;
the header line says which core ran); ``--pure`` forces the pure-Python modules, for the
compiled/pure ratio.

Fidelity: the simulated last completion for each N (32 MiB, the piece length
`swarmhub create` picks, 20/100 mbit, 10 ms) against the netns lab on the same settings:
the recorded runs below, or with --lab-runs fresh `swarmhub lab run` ones (root; about
30 s each at N=4..8; 16 real peers saturate two cores, so N=16 is CPU-bound there).
Target: within 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.lab.hugepages import glibc_version, hugepage_env, thp_mode

__all__ = ["main"]

MIB = 1 << 20
#: `swarmhub lab run --peers N --size 32MiB --up 20mbit --down 100mbit --latency 10ms
#: --modes p2p` on this machine kind (last completion, s; source upload, x F), median of 3,
#: the same runs as tests/lab/test_simulate.py's LAB_LAST_S (reno hosts, 8-segment packets,
#: strict end-game and the decline grace; 3 runs each at load 3-7).
RECORDED = {4: (14.9, 1.02), 8: (15.6, 1.03)}

_CHILD = r"""
import gc, json, resource, signal, sys, time
from swarmhub.lab.simrun import SimOptions, simulate
from swarmhub.lab.simulate import Simulation
from swarmhub import _compiled
n, pl = int(sys.argv[1]), int(sys.argv[2])
o = SimOptions(peers=n, size=32 << 20, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
               latency_s=0.01, piece_length=pl)
done = [0, 0.0]  # clients finished, the last one's virtual time
def on_event(e):
    if e["event"] == "finished":
        done[0] += 1
        done[1] = e["at"]
def usage():
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"n": n, "cpu_s": use.ru_utime + use.ru_stime, "rss": use.ru_maxrss * 1024,
            "compiled": int(_compiled.uses_compiled())}
def stopped(_sig, _frame):
    # the bench's time bound: say how far the run got (N=10,000 may take hours here)
    now = max([s.ev.now for s in gc.get_objects() if isinstance(s, Simulation)], default=0.0)
    print(json.dumps({**usage(), "partial": True, "wall_s": time.perf_counter() - t,
                      "done": done[0], "last_done_s": done[1], "virtual_now": now}),
          flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, stopped)
t = time.perf_counter()
r = simulate("p2p", o, on_event=on_event)
print(json.dumps({**usage(), "wall_s": time.perf_counter() - t, "ratio": r.ratio,
                  "virtual_s": r.last_completion_s, "source_x": r.source_upload / r.size}))
"""


def speed(n: int, piece_kib: int, timeout: float, pure: bool = False,
          hugepages: bool = True) -> dict[str, Any]:
    """One run in a fresh process, on the allocator the ``swarmhub`` command picks
    (``hugepages``; False: CPython's own). Past ``timeout`` wall seconds it is stopped and says
    how far it got (``partial``: clients done, the last one's virtual time, CPU, RSS)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    if pure:
        env["SWARMHUB_PURE"] = "1"
    if hugepages:
        # the allocator `swarmhub lab simulate` re-executes itself on (lab/hugepages.py)
        more, _ = hugepage_env(env, platform.system(), glibc_version(), thp_mode())
        env = more if more is not None else env
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(n), str(piece_kib * 1024)],
        stdout=subprocess.PIPE, text=True, env=env,
    ) as child:
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            seen = _proc_usage(child.pid, n)
            child.terminate()
            try:
                out, _ = child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                # The compiled run loop seldom returns to the interpreter, where the
                # child's SIGTERM handler would run: report what /proc saw and kill it.
                child.kill()
                child.communicate(timeout=60)
                return {**seen, "partial": True, "wall_s": timeout, "done": None}
    lines = out.strip().splitlines()
    if not lines:
        raise SystemExit(f"the speed run at N={n} failed (exit {child.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _proc_usage(pid: int, n: int) -> dict[str, Any]:
    """CPU seconds and peak RSS of a running child, read from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    hwm = next((int(line.split()[1]) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:")), 0)
    return {"n": n, "cpu_s": (int(stat[11]) + int(stat[12])) / ticks, "rss": hwm * 1024}


def _allocator() -> str:
    """What the speed children run on: the allocator `lab simulate` picks here."""
    env, why = hugepage_env({}, platform.system(), glibc_version(), thp_mode())
    return "glibc malloc, huge pages" if env is not None else f"CPython's ({why})"


def _load() -> str:
    """The 1/5/15-minute load averages: what else the machine was doing."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def lab_run(n: int) -> tuple[float, float]:
    from swarmhub.lab.scenario import run_scenario

    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        res = run_scenario("p2p", n, 32 * MIB, 20e6, 100e6, 20e6, 10.0,
                           workdir=Path(tmp), prefix="bsim")
    if res.last_completion_s is None:
        raise SystemExit(f"the lab run at N={n} failed: {res.hosts}")
    return res.last_completion_s, res.source_upload / res.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", default="1000,10000")
    ap.add_argument("--fidelity", default="4,8,16")
    ap.add_argument("--lab-runs", action="store_true")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1, help="speed runs per N (median)")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="wall seconds per speed run before it is stopped (partial figures)")
    ap.add_argument("--pure", action="store_true",
                    help="speed runs on the pure-Python core even if the compiled one is built")
    ap.add_argument("--no-hugepages", action="store_true",
                    help="speed runs on CPython's allocator, not the glibc malloc with huge "
                    "pages that `swarmhub lab simulate` re-executes itself on")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from swarmhub.lab.simrun import SimOptions, simulate

    report: dict[str, list[object]] = {"speed": [], "fidelity": []}
    print("fidelity: simulated vs netns lab, p2p, 32 MiB, 20/100 mbit, 10 ms one way")
    print(f"{'N':>5} {'sim s':>7} {'lab s':>7} {'sim/lab':>8} {'src xF sim':>10} {'lab':>6}")
    for n in [int(x) for x in args.fidelity.split(",") if x]:
        opts = SimOptions(peers=n, size=32 * MIB, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
                          latency_s=0.01)
        res = simulate("p2p", opts)
        lab = lab_run(n) if args.lab_runs else RECORDED.get(n)
        sim_s = res.last_completion_s or float("nan")
        src = res.source_upload / res.size
        if lab is None:
            print(f"{n:>5} {sim_s:>7.1f} {'-':>7} {'-':>8} {src:>10.2f} {'-':>6}")
        else:
            print(f"{n:>5} {sim_s:>7.1f} {lab[0]:>7.1f} {sim_s / lab[0]:>8.3f} {src:>10.2f} "
                  f"{lab[1]:>6.2f}")
        report["fidelity"].append({"n": n, "sim_s": sim_s, "lab": lab})
    sizes = [int(x) for x in args.speed.split(",") if x]
    if sizes:
        from swarmhub import _compiled

        core = "pure-Python core (--pure)" if args.pure else _compiled.status()
        core += ", CPython's allocator" if args.no_hugepages else f", memory: {_allocator()}"
        print(f"\nspeed: p2p, 32 MiB, {args.piece_kib} KiB pieces, 20/100 mbit, 10 ms; "
              f"median of {args.rounds}; {core}; load average before: {_load()}")
        print(f"{'N':>6} {'wall s':>8} {'CPU s':>8} {'peak RSS':>10} {'virtual s':>10} "
              f"{'ratio':>6}")
    for n in sizes:
        runs = [speed(n, args.piece_kib, args.timeout, args.pure, not args.no_hugepages)
                for _ in range(max(1, args.rounds))]
        stopped = [run for run in runs if run.get("partial")]
        if stopped:
            for run in stopped:
                got = ("(it could not say how far it got)" if run["done"] is None else
                       f"{run['done']} of {n} done (the last at {run['last_done_s']:.1f} "
                       f"virtual s) at {run['virtual_now']:.1f} virtual s")
                print(f"{n:>6} stopped after {run['wall_s']:.0f} s wall: {run['cpu_s']:.0f} "
                      f"CPU s, peak RSS {run['rss'] / 2**20:.0f} MiB, {got}   "
                      f"(load average {_load()})")
            report["speed"].append({"stopped": stopped, "runs": runs})
            continue
        r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        print(f"{n:>6} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['rss'] / 2**20:>7.0f} MiB "
              f"{r['virtual_s']:>10.1f} {r['ratio']:>6.2f}   (load average {_load()})")
        report["speed"].append({"median": r, "runs": runs})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
