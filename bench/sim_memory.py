"""Where ``lab simulate``'s memory goes: bytes per type and per owner attribute, mid-run.

    nice -n 10 .venv/bin/python bench/sim_memory.py [--peers 1000] [--at 8] [--top 30]
        [--mode p2p] [--piece-kib 256]

One simulated run (32 MiB, 20/100 mbit, 10 ms, seed 1, the compiled core when built),
stopped at virtual time ``--at`` s (mid-download: connections open, requests in flight);
then three tables:

- by type: every object reachable from the collector's tracked objects (their referents
  included, so untracked ints, floats, bytes and tuples count), ``sys.getsizeof`` each,
  once: what the run holds;
- by owner: for each swarmhub object, each attribute's value (``Type.attr``, shallow, plus
  the containers a dict or list holds): which field holds it. Shared objects count once
  per owner here (a ``Node`` named by 50 ``End``s shows 50 times), so read this one for
  per-connection fields, the type table for totals;
- per open connection end and per host: the type table divided out.

The census takes about 20 s at N=1,000 (and the process's memory doubles meanwhile).
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

__all__ = ["main"]

MIB = 1 << 20


def _name(t: type) -> str:
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def by_type() -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Bytes and counts per type of every object reachable from the tracked ones."""
    stack: list[object] = gc.get_objects()
    seen: dict[int, object] = {}
    mine = {id(stack), id(seen)}  # the census's own containers are not the run's
    skip = (type, type(sys), type(_name), type(len))
    from swarmhub.lab.netmodel import Event
    while stack:
        o = stack.pop()
        if id(o) in seen or id(o) in mine:
            continue
        seen[id(o)] = o
        # an Event is acyclic (compiled: untracked, no referents for the collector):
        # what it holds is followed here
        refs = (o.fn, o.arg) if type(o) is Event else gc.get_referents(o)
        stack.extend(r for r in refs if id(r) not in seen and not isinstance(r, skip))
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for o in seen.values():
        name = _name(type(o))
        size[name] += sys.getsizeof(o)
        count[name] += 1
    return size, count


def _fields(t: type) -> set[str]:
    names: set[str] = set()
    for k in t.__mro__:
        names.update(getattr(k, "__slots__", ()) or ())
        names.update(getattr(k, "__mypyc_attrs__", ()) or ())
    return names


def by_owner() -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Shallow bytes per ``Type.attr:valuetype`` over every swarmhub object."""
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        t = type(o)
        if not t.__module__.startswith("swarmhub"):
            continue
        for a in _fields(t) or set(getattr(o, "__dict__", {})):
            try:
                v = getattr(o, a)
            except AttributeError:
                continue
            if v is None or isinstance(v, (bool, int, float)):
                continue
            nbytes = sys.getsizeof(v)
            if isinstance(v, dict):
                nbytes += sum(sys.getsizeof(x) for x in v.values()
                              if isinstance(x, (list, dict, set, tuple, float)))
            elif isinstance(v, list):
                nbytes += sum(sys.getsizeof(x) for x in v if isinstance(x, (list, tuple)))
            key = f"{t.__qualname__}.{a}:{type(v).__name__}"
            size[key] += nbytes
            count[key] += 1
    return size, count


def census(sim: Any, at: float, top: int) -> None:
    ends = sum(len(n.ends) for n in sim.nodes)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size, count = by_type()
    total = sum(size.values())
    print(f"N={len(sim.clients)} at {at:g} s virtual: {sum(count.values())} objects, "
          f"{total / MIB:.1f} MiB; peak RSS so far {rss:.0f} MiB; {ends} open connection "
          f"ends ({ends / len(sim.nodes):.1f} per host); events so far {sim.ev._seq}, "
          f"calendar {len(sim.ev._q)}, lane {len(sim.ev._lane)}")
    print(f"per open end {total / max(1, ends):.0f} B, per host {total / len(sim.nodes):.0f} B"
          " (everything, divided out)")
    print("\nby type:     MiB     count   B each")
    for name, nbytes in size.most_common(top):
        print(f"  {nbytes / MIB:9.1f} {count[name]:9d} {nbytes / count[name]:8.0f}  {name}")
    osize, ocount = by_owner()
    print("\nby owner (shallow; shared objects once per owner):     MiB    count   B each")
    for name, nbytes in osize.most_common(top):
        print(f"  {nbytes / MIB:9.2f} {ocount[name]:9d} {nbytes / ocount[name]:8.0f}  {name}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--at", type=float, default=8.0, help="virtual seconds (mid-run)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--piece-kib", type=int, default=256)
    args = ap.parse_args(argv)

    from swarmhub import _compiled
    from swarmhub.lab import simrun
    from swarmhub.lab.simulate import Simulation

    print(f"core: {_compiled.status()}")
    run = Simulation.run

    def run_then_census(self: Any, until: float) -> None:
        def stop(_arg: object) -> None:
            census(self, args.at, args.top)
            os._exit(0)  # the rest of the run is not the point

        self.ev.at(args.at, stop, None)
        run(self, until)

    Simulation.run = run_then_census  # type: ignore[method-assign]
    opts = simrun.SimOptions(peers=args.peers, size=32 << 20, up=[(20e6, 1.0)],
                             down=[(100e6, 1.0)], latency_s=0.01,
                             piece_length=args.piece_kib << 10)
    simrun.simulate(args.mode, opts)
    print("the run ended before --at")


if __name__ == "__main__":
    main()
