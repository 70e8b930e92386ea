"""``lab simulate``'s events by kind, per peer: where a run's events come from (issue 8).

    nice -n 10 .venv/bin/python bench/sim_events.py [--peers 300,1000] [--mode p2p]
        [--piece-kib 256] [--every 20000]

One simulated run per N (32 MiB, 20/100 mbit, 10 ms) on the compiled core, its event loop
replaced by a copy that counts (the same merge of the calendar and the FIFO lane, so the
same order): events per peer by callback and by queue (H: the calendar, ``SlotQueue``,
which was a heap; L: lane), the network's item
completions split into real ones, stale ones (a newer event replaced them when the rate
rose) and early ones (the rate fell: pushed again for when the item is due), the message
kinds of each arriving batch (``End.got_msgs``), CPU microseconds per event (the counting
included) and, every ``--every`` events, the calendar's and the lane's length.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

__all__ = ["main"]


def count(n: int, mode: str, piece_kib: int, every: int) -> dict[str, Any]:
    from swarmhub import _compiled
    from swarmhub.lab import simulate as sim_mod
    from swarmhub.lab.simrun import SimOptions, simulate

    kinds: Counter[tuple[str, str]] = Counter()
    done: Counter[str] = Counter()
    batches: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []

    def run(self: Any, until: float) -> None:
        self.start()
        ev = self.ev
        q, lane = ev._q, ev._lane
        k = 0
        while self.pending > 0:
            first = lane.first()
            h = q.first()
            if h is not None and (first is None or h < first):
                if h.when > until:
                    break
                q.take()
                event, where = h, "H"
            elif first is not None and first.when <= until:
                event, where = lane.popleft(), "L"
            else:
                break
            when, fn, arg = event.when, event.fn, event.arg
            name = getattr(fn, "__qualname__", None) or repr(fn)
            kinds[where, name] += 1
            if name == "Network._done":
                pipe = arg
                done["stale" if event.seq != pipe.done_seq else "early" if pipe.due > when
                     else "real"] += 1
            elif name == "End.got_msgs":
                batches[" ".join(type(x).__name__ for x in arg[:3])
                        + (" ..." if len(arg) > 3 else "")] += 1
            k += 1
            if k % every == 0:
                sizes.append((len(q), len(lane)))
            ev.now = when
            ev.running = event.seq
            fn(arg)
        if self.pending > 0:
            ev.now = max(ev.now, until)

    original = sim_mod.Simulation.run
    sim_mod.Simulation.run = run  # the compiled class takes a Python-level override
    try:
        opts = SimOptions(peers=n, size=32 << 20, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
                          latency_s=0.01, piece_length=piece_kib << 10)
        cpu = time.process_time()
        simulate(mode, opts)
        cpu = time.process_time() - cpu
    finally:
        sim_mod.Simulation.run = original
    total = sum(kinds.values())
    return {"n": n, "compiled": _compiled.uses_compiled(), "cpu_s": cpu, "events": total,
            "kinds": kinds, "done": done, "batches": batches, "sizes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="300,1000")
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--every", type=int, default=20000)
    args = ap.parse_args()
    for n in (int(x) for x in args.peers.split(",")):
        r = count(n, args.mode, args.piece_kib, args.every)
        total = r["events"]
        print(f"N={n} {args.mode} compiled={r['compiled']}: {total:,} events, "
              f"{total / n:,.0f} per peer, {r['cpu_s']:.1f} CPU-s, "
              f"{r['cpu_s'] / total * 1e6:.1f} us per event (counting included)")
        for (where, name), c in r["kinds"].most_common():
            print(f"  {c / n:9.1f} /peer  {where} {name}")
        print("  item completions (Network._done) per peer: "
              + ", ".join(f"{k} {c / n:.1f}" for k, c in r["done"].most_common()))
        print("  arriving batches (End.got_msgs) per peer:")
        for kind, c in r["batches"].most_common(10):
            print(f"  {c / n:9.1f} /peer  {kind}")
        if r["sizes"]:
            heap = sorted(h for h, _ in r["sizes"])
            lane = sorted(ln for _, ln in r["sizes"])
            print(f"  heap length median {heap[len(heap) // 2]:,} max {heap[-1]:,}; "
                  f"lane median {lane[len(lane) // 2]:,} max {lane[-1]:,}")


if __name__ == "__main__":
    main()
