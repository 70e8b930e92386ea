"""``lab simulate``'s CPU by phase of one run (issue 8): where the cost per event grows with N.

    nice -n 10 .venv/bin/python bench/sim_phases.py [--peers 1000,3000] [--mode p2p]
        [--piece-kib 256] [--dt 1.0] [--seed 1] [--until T] [--heap-kinds] [--src OTHER/src]

One run per N on the compiled core (its own event loop, unchanged): an event of the
simulation's own queue every ``--dt`` virtual seconds records the process's CPU time,
the events queued so far (the queue's insertion counter: every event the run ran, give
or take the queue's length), the heap's length, the resident set, completed clients,
connections opened and the rate solver's passes over links (``Network.passes``). Prints
per window CPU-s, events per peer, microseconds per event and RSS, so that two N compare
phase by phase (the connection storm at the start, the middle, the tail), then the
totals and the peak RSS (``ru_maxrss``). ``--until`` stops at that virtual time (the
first seconds of a large N, cheaply); ``--heap-kinds`` counts the heap's entries by
callback at each sample (``_done`` split into live, stale and early); ``--src`` imports
another tree's ``src`` (e.g. the baseline's, with its compiled modules) for an A/B.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # no /proc: not measured
        return float("nan")


def _huge_mib() -> float:
    """Anonymous memory in transparent huge pages (MiB; nan without /proc)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def one(n: int, mode: str, piece_kib: int, dt: float, seed: int,
        kinds: dict[str, int] | None = None, until: float | None = None) -> list[dict[str, Any]]:
    from swarmhub.lab import simulate as sim_mod
    from swarmhub.lab.simrun import SimOptions, simulate

    rows: list[dict[str, Any]] = []
    original = sim_mod.Simulation.run

    def run(self: Any, until: float) -> None:

        def sample(_arg: object) -> None:
            ev = self.ev
            rows.append({"t": ev.now, "cpu": time.process_time(), "seq": ev._seq,
                         "heap": len(ev._q), "lane": len(ev._lane), "rss": _rss_mib(),
                         "done": sum(1 for c in self.clients if c.done is not None),
                         "conns": self.connections, "passes": self.net.passes})
            if kinds is not None:
                for event in ev._q:
                    fn, arg = event.fn, event.arg
                    name = getattr(fn, "__name__", "?")
                    if name == "_done":
                        pipe = arg
                        name += " stale" if event.seq != pipe.done_seq else " early" \
                            if pipe.due > pipe.at else " live"
                    kinds[name] = kinds.get(name, 0) + 1
            if self.pending > 0:
                ev.at(ev.now + dt, sample)

        self.ev.at(0.0, sample)
        original(self, until)
        sample(None)  # the end of the run

    # the compiled class takes a Python-level override (simrun calls it by attribute)
    setattr(sim_mod.Simulation, "run", run)  # noqa: B010 (mypy: no method assignment)
    try:
        opts = SimOptions(peers=n, size=32 << 20, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
                          latency_s=0.01, piece_length=piece_kib << 10, seed=seed, timeout=until)
        cpu0 = time.process_time()
        simulate(mode, opts)
        rows.append({"t": float("inf"), "cpu": time.process_time(), "start": cpu0})
    finally:
        setattr(sim_mod.Simulation, "run", original)  # noqa: B010
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="1000,3000")
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--dt", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--until", type=float, default=None,
                    help="stop at this virtual time (s): one phase of a large N, cheaply")
    ap.add_argument("--heap-kinds", action="store_true",
                    help="count the heap's entries by callback at each sample (slow)")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    from swarmhub import _compiled

    print(f"swarmhub from {args.src}, compiled={_compiled.uses_compiled()}")
    for n in (int(x) for x in args.peers.split(",")):
        kinds: dict[str, int] | None = {} if args.heap_kinds else None
        rows = one(n, args.mode, args.piece_kib, args.dt, args.seed, kinds, args.until)
        end = rows.pop()
        total = end["cpu"] - end["start"]
        print(f"N={n} {args.mode}: {total:.1f} CPU-s, {rows[-1]['seq'] / n:,.0f} events per "
              f"peer, {total / rows[-1]['seq'] * 1e6:.1f} us per event, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
              f"(this process so far), {_huge_mib():.0f} MiB of it in huge pages")
        print("      t   CPU-s  ev/peer  us/ev  heap/peer  RSS MiB   done  conns/peer"
              "  passes/ev")
        prev = {"cpu": end["start"], "seq": 0, "passes": 0}
        for r in rows:
            dcpu, dseq = r["cpu"] - prev["cpu"], r["seq"] - prev["seq"]
            print(f"  {r['t']:5.1f} {dcpu:7.2f} {dseq / n:8.1f} {dcpu / max(dseq, 1) * 1e6:6.1f}"
                  f" {r['heap'] / n:10.1f} {r['rss']:8.0f} {r['done']:6d} {2 * r['conns'] / n:8.1f}"
                  f" {(r['passes'] - prev['passes']) / max(dseq, 1):8.2f}")
            prev = r
        if kinds:
            total_k = sum(kinds.values())
            print("  heap entries by callback, summed over the samples: " + ", ".join(
                f"{k} {v / total_k:.0%}" for k, v in sorted(kinds.items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
