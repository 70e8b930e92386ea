"""What the ramp's piece holders do with their uplink in ``lab simulate`` (issue 9).

    nice -n 10 .venv/bin/python bench/sim_ramp.py [--peers 256] [--mode p2p] [--seed 1]
        [--piece-kib 256] [--until 3] [--window 0.25] [--set NAME=VALUE] [--src TREE/src]

Why: the clients' uplink is 2 % busy at 0.5-1 s of an N=256 run (``sim_util.py``); is
that holders that do not upload, or too few holders? Every 5 virtual ms until
``--until`` s it looks at each client holding at least one verified piece and not all
(a *holder*), and prints per ``--window`` the holders' share of the clients, then per
holder (means): its uplink's busy share, how many peers receive from it at once
(``recv``: flows with data), its open neighbours, those lacking a piece it holds
(``lack``), of them interested in it (``l_int``) and unchoked by it (``l_unch``), all
unchoked (``unch``) and unchoked but not interested (``unch_ni``), interested and choked
(``int_ch``), with requests queued here (``queued``) or in flight to it (``inflight``),
and lacking neighbours that heard a Have of what they lack and are not interested
(``heard_ni``: news that did not make them interested).

It samples from an event on the simulation's own queue, so the compiled core runs.
Virtual time: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

_COLUMNS = ("busy", "recv", "nb", "lack", "l_int", "l_unch", "unch", "unch_ni", "int_ch",
            "queued", "inflight", "heard_ni")


def _holder(node: Any) -> dict[str, float]:
    """One holder's row (see the module doc)."""
    sw = node.swarm
    have, num = sw.have, sw.num_pieces
    used = 0.0
    recv = 0
    for p in node.up.flows:
        used += p.rate
        recv += p.rate > 0
    row = dict.fromkeys(_COLUMNS, 0.0)
    row["busy"] = min(1.0, used / node.up.cap)
    row["recv"] = recv
    for e in node.ends:
        ps = e.ps
        if not e.open or ps is None or ps.closed:
            continue
        far = e.far.ps
        row["nb"] += 1
        if not ps.am_choking:
            row["unch"] += 1
            row["unch_ni"] += not ps.peer_interested
        row["int_ch"] += ps.peer_interested and ps.am_choking
        row["queued"] += bool(ps.incoming)
        row["inflight"] += far is not None and bool(far.requested)
        lacks = [i for i in range(num) if have[i] and not ps.have[i]]
        if not lacks:
            continue
        row["lack"] += 1
        row["l_int"] += ps.peer_interested
        row["l_unch"] += ps.peer_interested and not ps.am_choking
        if far is not None and not far.am_interested and any(far.have[i] for i in lacks):
            row["heard_ni"] += 1
    return row


def simulate_with(factory: Any, mode: str, n: int, seed: int, piece: int,
                  settings: Any, size: int = 32 << 20, latency: float = 0.01) -> Any:
    """One scenario (32 MiB unless ``size``, 20/100 mbit, 10 ms unless ``latency``) whose
    Simulation ``factory`` makes (it wraps the real one to observe it); the result of
    ``simulate``. Why here: every sim_* bench observes a run this way, one copy of it."""
    from swarmhub.lab import simrun
    from swarmhub.lab.simrun import SimOptions, simulate

    real = simrun.Simulation
    simrun.Simulation = factory
    try:
        return simulate(mode, SimOptions(
            peers=n, size=size, up=[(20e6, 1.0)], down=[(100e6, 1.0)], latency_s=latency,
            piece_length=piece, seed=seed, settings=settings))
    finally:
        simrun.Simulation = real


def run(mode: str, n: int, seed: int, piece: int, until: float, window: float,
        settings: Any) -> tuple[float, list[dict[str, float]]]:
    """One run sampled until ``until`` s: its ratio and one row per window."""
    from swarmhub.lab import simrun

    dt = 0.005
    acc: defaultdict[int, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    real = simrun.Simulation

    def factory(*args: Any, **kwargs: Any) -> Any:
        sim = real(*args, **kwargs)

        def sample(_arg: object) -> None:
            now = sim.ev.now
            a = acc[int(now / window)]
            for node in sim.clients:
                sw = node.swarm
                if sw is None or node.gone:
                    continue
                a["clients"] += 1
                if 0 < sw.num_have < sw.num_pieces:
                    a["holders"] += 1
                    for k, v in _holder(node).items():
                        a[k] += v
            if now < until:
                sim.ev.at(now + dt, sample, None)

        sim.ev.at(dt / 2, sample, None)
        return sim

    res = simulate_with(factory, mode, n, seed, piece, settings)
    rows = []
    for w in sorted(acc):
        a = acc[w]
        h = a["holders"] or 1.0
        row = {"at": w * window, "holders": a["holders"] / (a["clients"] or 1.0)}
        row.update({k: a[k] / h for k in _COLUMNS})
        rows.append(row)
    return res.ratio, rows


def scenario_args(ap: argparse.ArgumentParser, peers: int) -> None:
    """The options of one traced scenario (shared with ``sim_hop.py``)."""
    ap.add_argument("--peers", type=int, default=peers)
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--src", type=Path, help="another tree's src (before/after)")


def scenario_settings(args: argparse.Namespace) -> Any:
    """Put ``--src`` (or this tree's src) first on the path; the ``--set`` settings."""
    sys.path.insert(0, str(args.src or Path(__file__).resolve().parents[1] / "src"))
    from swarmhub.settings import Settings

    return Settings.from_mapping(dict(item.partition("=")[::2] for item in args.set))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenario_args(ap, 256)
    ap.add_argument("--until", type=float, default=3.0, help="virtual s sampled")
    ap.add_argument("--window", type=float, default=0.25, help="virtual s per row")
    args = ap.parse_args(argv)
    settings = scenario_settings(args)
    ratio, rows = run(args.mode, args.peers, args.seed, args.piece_kib * 1024, args.until,
                      args.window, settings)
    print(f"{args.mode} N={args.peers} seed {args.seed}: {ratio:.4f}x the bound; per "
          "holder (means):")
    print("   at holders " + " ".join(f"{c:>8}" for c in _COLUMNS))
    for r in rows:
        print(f"{r['at']:5.2f} {r['holders']:7.3f} "
              + " ".join(f"{r[c]:8.2f}" for c in _COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
