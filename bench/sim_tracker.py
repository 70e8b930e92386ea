"""``lab simulate``'s tracker: CPU per announce late in a run, when most entries are seeders.

    nice -n 10 .venv/bin/python bench/sim_tracker.py [--peers 1000,10000]
        [--seeders 0.5,0.9,0.99] [--seconds 1] [--src OTHER/src]

A :class:`~swarmhub.lab.simhosts.SimTracker` holding N entries (the given share of them
seeders, drawn at random) answers seeders' announces (``register`` then ``pick`` of 50,
as the simulated tracker does) for ``--seconds`` of CPU; prints microseconds of CPU per
announce. A seeder is handed leechers only, so when they are few its random sample of
2 x 50 + 8 entries falls short and the tracker takes every leecher: before session 23
that looked at all N entries (O(N) per announce, O(N^2) a run). ``--src`` imports
another tree's ``src`` (e.g. main's) for a before/after in the same minute.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

__all__ = ["main"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="1000,10000")
    ap.add_argument("--seeders", default="0.5,0.9,0.99")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    from swarmhub.lab.simhosts import SimTracker

    print(f"tracker from {args.src}")
    for n in (int(x) for x in args.peers.split(",")):
        for share in (float(x) for x in args.seeders.split(",")):
            tr = SimTracker(interval=2, min_interval=1, rng=random.Random(1))
            draw = random.Random(2)
            addrs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 6881) for i in range(n)]
            for a in addrs:
                tr.register(a, draw.random() < share, 0.0)
            seeds = [a for a in addrs if tr._seeder[a]]
            started = time.process_time()
            k = 0
            while time.process_time() - started < args.seconds:
                a = seeds[k % len(seeds)]
                k += 1
                now = k * 1e-6  # within the ttl: nothing expires
                tr.register(a, True, now)
                tr.pick(a, True, 50, now)
            cpu = time.process_time() - started
            print(f"N={n:>6} seeders {share:4.0%}: {1e6 * cpu / k:8.0f} us per seeder announce")


if __name__ == "__main__":
    main()
