"""``lab simulate`` for a fixed virtual span: CPU, events and memory up to time ``--until``.

    nice -n 10 .venv/bin/python bench/sim_span.py --peers 10000 [--until 4] [--mode p2p]
        [--piece-kib 256] [--size-mib 32]

Why: N=10,000 takes ~15 min whole, too long for a ``perf stat``/``perf record`` per
question; a fixed virtual span (the same at every N) compares per-event cost across N on
the compiled loop itself (no instrumented copy: events are counted from the queue's
insertion numbers, ``EventQueue._seq`` less what is still queued). At ``--until`` it
prints and leaves with ``os._exit`` (the rest of the run is not measured), so a
``perf stat`` around it covers set-up (printed apart) plus the span.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--until", type=float, default=4.0, help="virtual seconds; 0: whole run")
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--size-mib", type=int, default=32)
    args = ap.parse_args(argv)

    from swarmhub import _compiled
    from swarmhub.lab import simrun
    from swarmhub.lab.simulate import Simulation

    print(f"core: {_compiled.status()}", flush=True)
    run = Simulation.run
    t0 = [time.process_time()]

    def report(self: Any, tag: str) -> None:
        ev = self.ev
        queued = len(ev._q) + len(ev._lane)
        done = ev._seq - queued
        cpu = time.process_time() - t0[0]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{tag}: N={args.peers} t={ev.now:.3f} events={done:,} "
              f"({done / args.peers:,.0f}/peer) queued={queued:,} run_cpu={cpu:.1f}s "
              f"({cpu / max(done, 1) * 1e6:.2f} us/event) pending={self.pending} "
              f"peak_rss={rss:,.0f}MiB", flush=True)

    def timed_run(self: Any, until: float) -> None:
        def stop(_arg: object) -> None:
            report(self, "stop")
            os._exit(0)

        if args.until > 0:
            self.ev.at(args.until, stop, None)
        print(f"setup_cpu={time.process_time():.1f}s", flush=True)
        t0[0] = time.process_time()
        run(self, until)
        # the queue was emptied at the end: the events still queued then count as run
        # (~6 per peer of ~6,800: within 0.1 %)
        report(self, "end")

    Simulation.run = timed_run  # type: ignore[method-assign]
    opts = simrun.SimOptions(peers=args.peers, size=args.size_mib << 20, up=[(20e6, 1.0)],
                             down=[(100e6, 1.0)], latency_s=0.01,
                             piece_length=args.piece_kib << 10)
    res = simrun.simulate(args.mode, opts)
    print(f"whole run: run_cpu={time.process_time() - t0[0]:.1f}s "
          f"peak_rss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f}MiB "
          f"result={getattr(res, 'ratio', res)!r:.200}", flush=True)


if __name__ == "__main__":
    main()
