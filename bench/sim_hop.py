"""How long a piece's hop from one client to the next takes in ``lab simulate`` (issue 9).

    nice -n 10 .venv/bin/python bench/sim_hop.py [--peers 64] [--mode p2p] [--seed 1]
        [--piece-kib 256] [--set NAME=VALUE] [--src TREE/src]

Why: the ramp doubles its holders every ~2 piece times, not every one; is a hop long
because of the requester's pipeline, the number of sources per piece, or the wait at
the holder? For every piece a client verifies it records when its first block was
requested (``req``), its first and last block arrived and when it passed, and from how
many hosts its blocks came; for every block a client uploads, how long the request
waited at it (arrival -> written). Printed per window of verification time, medians in
piece times at the uplink's rate (client-to-client pieces; the source's apart).

It wraps the swarm core's methods, so the core runs interpreted (``SWARMHUB_PURE=1``,
set here: ~5x the compiled run's CPU); the results are the same bits as ``lab simulate``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable
from typing import Any

from sim_ramp import scenario_args, scenario_settings, simulate_with

_WINDOWS = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 1e9))


def run(mode: str, n: int, seed: int, piece: int, settings: Any
        ) -> tuple[float, dict[tuple[int, int], dict[str, Any]], list[tuple[float, float]]]:
    """One run traced: its ratio, per (client, piece) its times and sources, and per block
    uploaded by a client (request arrival, wait at the uploader)."""
    from swarmhub.engine import swarm as core
    from swarmhub.lab import simrun

    sims: list[Any] = []
    hosts: dict[int, int] = {}
    pieces: dict[tuple[int, int], dict[str, Any]] = {}
    waits: list[tuple[float, float]] = []
    arrived: dict[tuple[int, Any, int, int], float] = {}
    real = simrun.Simulation
    originals = {name: getattr(core.Swarm, name)
                 for name in ("blocks_from", "piece_verified", "_on_request", "blocks_sent")}

    def factory(*args: Any, **kwargs: Any) -> Any:
        sims.append(real(*args, **kwargs))
        return sims[-1]

    def host(sw: Any) -> int:
        if id(sw) not in hosts:
            hosts.update((id(node.swarm), node.host) for node in sims[-1].nodes)
        return hosts[id(sw)]

    def wrap(name: str, before: Callable[..., None]) -> None:
        orig = originals[name]

        def call(self: Any, *args: Any) -> Any:
            if name == "blocks_from":  # an iterable, read twice
                args = (args[0], list(args[1]), args[2])
            before(self, *args)
            return orig(self, *args)
        setattr(core.Swarm, name, call)

    def got(sw: Any, ps: Any, blocks: Any, now: float) -> None:
        src = sims[-1].by_uid[ps.handle].remote.host
        for block in blocks:
            asked = ps.requested.get(block)
            if asked is not None:
                p = pieces.setdefault((host(sw), block[0]), {"req": asked, "first": now,
                                                             "src": set()})
                p["req"] = min(p["req"], asked)
                p["last"] = now
                p["src"].add(src)

    def verified(sw: Any, index: int, ok: bool, now: float, *_: Any) -> None:
        p = pieces.get((host(sw), index))
        if p is not None:
            p["ver"] = now

    def request(sw: Any, ps: Any, req: Any, now: float) -> None:
        arrived[(host(sw), ps.handle, req.index, req.begin)] = now

    def sent(sw: Any, handle: Any, served: Any, nbytes: int, now: float) -> None:
        h = host(sw)
        for req in served:
            t = arrived.pop((h, handle, req.index, req.begin), None)
            if t is not None and h:
                waits.append((t, now - t))

    wrap("blocks_from", got)
    wrap("piece_verified", verified)
    wrap("_on_request", request)
    wrap("blocks_sent", sent)
    try:
        res = simulate_with(factory, mode, n, seed, piece, settings)
    finally:
        for name, orig in originals.items():
            setattr(core.Swarm, name, orig)
    return res.ratio or math.nan, pieces, waits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenario_args(ap, 64)
    args = ap.parse_args(argv)
    os.environ["SWARMHUB_PURE"] = "1"  # the wrapped methods must be the Python ones
    settings = scenario_settings(args)
    piece = args.piece_kib * 1024
    ratio, pieces, waits = run(args.mode, args.peers, args.seed, piece, settings)
    pt = piece / 2.5e6  # one piece time at 20 mbit
    print(f"{args.mode} N={args.peers} seed {args.seed}: {ratio:.4f}x the bound; medians "
          f"in piece times ({pt * 1000:.0f} ms)")
    print("verified  pieces  req->ver  req->1st  1st->last  sources | source: pieces "
          "req->ver | holder wait p50 p90")
    for lo, hi in _WINDOWS:
        done = [p for p in pieces.values() if "ver" in p and lo <= p["ver"] < hi]
        peer = [p for p in done if 0 not in p["src"]]
        if not peer:
            continue
        src = [p for p in done if 0 in p["src"]]
        ws = sorted(w for t, w in waits if lo <= t < hi) or [math.nan]

        def med(rows: list[dict[str, Any]], a: str, b: str) -> float:
            return statistics.median((p[b] - p[a]) / pt for p in rows) if rows else math.nan
        print(f"{lo:3.0f}-{min(hi, 99):2.0f} s {len(peer):7d} {med(peer, 'req', 'ver'):9.2f} "
              f"{med(peer, 'req', 'first'):9.2f} {med(peer, 'first', 'last'):10.2f} "
              f"{statistics.mean(len(p['src']) for p in peer):8.2f} | {len(src):14d} "
              f"{med(src, 'req', 'ver'):8.2f} | {statistics.median(ws) / pt:15.2f} "
              f"{ws[int(0.9 * (len(ws) - 1))] / pt:4.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
