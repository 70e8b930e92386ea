"""Whether the connection graph holds a fresh piece back in ``lab simulate`` (issue 9).

    nice -n 10 .venv/bin/python bench/sim_graph.py [--peers 64,256] [--mode p2p]
        [--seed 1] [--piece-kib 256] [--latency-ms 10] [--dt-ms 20] [--last 10]
        [--set NAME=VALUE] [--json OUT]

Why: a piece's spread takes log2 N doublings only while its holders' neighbours lack it.
If holders sat with every neighbour done while far peers waited (a clustered graph, or
finished peers' slots held by finished peers), the fix would be who connects to whom.
Per run it prints:

- ``copies``: for every new copy a client verifies (sampled every ``--dt-ms``), by phase
  (ramp < 2 s, middle, tail after the last first copy; all per run), how many of the
  holder's neighbours lack the piece then, how many of those it unchokes, how many are
  interested and choked, how many peers it unchokes, and the share of new copies that
  no unchoked neighbour lacks (the holder can forward it only after a choke change);
- ``reciprocity``: every 2 s, the share of a client's unchoked peers that unchoke it
  back (tit-for-tat pairs; a clustered unchoke graph spreads a piece slowly);
- ``last pieces``: every 0.5 s after the source's last first copy, for the ``--last``
  pieces out last: holders, clients lacking it, the mean number of a holder's
  neighbours that lack it, and holders none of whose neighbours lack it.

It samples from an event on the simulation's own queue, so the compiled core runs (the
figures are ``lab simulate``'s). Virtual time: independent of the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.lab import simrun
from swarmhub.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_ramp import simulate_with

__all__ = ["main", "run"]

SIZE = 32 << 20
#: the ramp, for the copies rows: copies verified before this many seconds
RAMP_S = 2.0


def _neighbours(node: Any) -> list[tuple[Any, Any]]:
    """(our PeerState, the far node) of ``node``'s open connections to other clients'
    and the source's cores."""
    out = []
    for e in node.ends:
        ps = e.ps
        if e.open and ps is not None and not ps.closed and e.far.node.swarm is not None:
            out.append((ps, e.far.node))
    return out


def run(mode: str, n: int, seed: int, piece: int, latency: float, settings: Settings,
        dt: float = 0.02, last: int = 10, size: int = SIZE) -> dict[str, Any]:
    """One run, sampled; the figures described in the module docstring."""
    copies: defaultdict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    recip: list[tuple[float, float, float]] = []
    tail: list[dict[str, Any]] = []
    made: list[Any] = []
    real = simrun.Simulation  # the run's Simulation is made by ``factory`` around it

    def factory(*args: Any, **kwargs: Any) -> Any:
        sim = real(*args, **kwargs)
        made.append(sim)
        num = sim.num_pieces
        seen: dict[int, bytes] = {}
        first: dict[int, float] = {}
        next_recip = [2.0]
        next_tail = [0.0]

        def sample(_arg: object) -> None:
            now = sim.ev.now
            all_out = len(first) == num
            for node in sim.clients:
                sw = node.swarm
                if sw is None:
                    continue
                have = bytes(sw.have)
                old = seen.get(node.host)
                seen[node.host] = have
                if old == have:
                    continue
                fresh = [i for i in range(num) if have[i] and (old is None or not old[i])]
                if not fresh:
                    continue
                nbrs = _neighbours(node)
                phase = "tail" if all_out else "ramp" if now < RAMP_S else "middle"
                for p in fresh:
                    first.setdefault(p, now)
                    lack = unchoked_lack = choked_lack = unchoked = 0
                    for ps, far in nbrs:
                        if not ps.am_choking:
                            unchoked += 1
                        if not far.swarm.have[p]:
                            lack += 1
                            if not ps.am_choking:
                                unchoked_lack += 1
                            elif ps.peer_interested:
                                choked_lack += 1
                    copies[phase].append((lack, unchoked_lack, choked_lack, unchoked))
            if now >= next_recip[0]:
                next_recip[0] += 2.0
                back = total = 0
                for node in sim.clients:
                    for ps, _far in _neighbours(node):
                        if not ps.am_choking:
                            total += 1
                            back += not ps.peer_choking
                if total:
                    recip.append((round(now, 2), round(back / total, 3),
                                  round(total / len(sim.clients), 2)))
            if all_out and now >= next_tail[0] and sim.pending:
                next_tail[0] = now + 0.5
                rows = []
                for p in sorted(first, key=lambda i: -first[i])[:last]:
                    holders = [nd for nd in sim.clients
                               if nd.swarm is not None and nd.swarm.have[p]]
                    lacking = [sum(1 for _ps, far in _neighbours(nd)
                                   if far is not sim.source and not far.swarm.have[p])
                               for nd in holders]
                    rows.append({"piece": p, "holders": len(holders),
                                 "lacking": len(sim.clients) - len(holders),
                                 "holder_nbrs_lacking": round(statistics.mean(lacking), 1)
                                 if lacking else 0.0,
                                 "holders_all_nbrs_have": sum(1 for x in lacking if not x)})
                tail.append({"at": round(now, 2), "pending": sim.pending, "pieces": rows})
            if sim.pending > 0:
                sim.ev.at(now + dt, sample, None)

        sim.ev.at(dt / 2, sample, None)
        made.append(sample)
        return sim

    res = simulate_with(factory, mode, n, seed, piece, settings, size, latency)
    made[1](None)  # the copies verified since the last sample (the run ended on them)
    rows = {}
    for phase in ("ramp", "middle", "tail"):
        got = copies.get(phase)
        if not got:
            continue
        rows[phase] = {
            "copies": len(got),
            "nbrs_lacking": round(statistics.mean(x[0] for x in got), 2),
            "unchoked_lacking": round(statistics.mean(x[1] for x in got), 2),
            "choked_interested_lacking": round(statistics.mean(x[2] for x in got), 2),
            "unchoked": round(statistics.mean(x[3] for x in got), 2),
            "no_unchoked_lacking": round(sum(1 for x in got if not x[1]) / len(got), 3),
        }
    return {"mode": mode, "n": n, "seed": seed, "ratio": res.ratio, "pieces": made[0].num_pieces,
            "last_s": res.last_completion_s, "copies": rows, "reciprocity": recip,
            "last_pieces": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="64,256")
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=10.0)
    ap.add_argument("--dt-ms", type=float, default=20.0, help="sampling step, virtual ms")
    ap.add_argument("--last", type=int, default=10, help="pieces out last to follow")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a Settings field for every peer, e.g. unchoke_slots=2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    settings = Settings.from_mapping(dict(item.partition("=")[::2] for item in args.set))
    out = []
    for n in (int(x) for x in args.peers.split(",")):
        r = run(args.mode, n, args.seed, args.piece_kib * 1024, args.latency_ms / 1000,
                settings, args.dt_ms / 1000, args.last)
        out.append(r)
        print(f"{args.mode} N={n} seed {args.seed}: {r['ratio']:.4f}x the bound, last "
              f"{r['last_s']:.2f} s")
        for phase, c in r["copies"].items():
            print(f"  copies {phase:6} n={c['copies']}: neighbours lacking "
                  f"{c['nbrs_lacking']}, of them unchoked {c['unchoked_lacking']} / "
                  f"interested and choked {c['choked_interested_lacking']}; unchoked "
                  f"{c['unchoked']}; no unchoked neighbour lacks it "
                  f"{c['no_unchoked_lacking']:.0%}")
        print("  reciprocity (at s: share unchoked back, unchoked per client): " + ", ".join(
            f"{t}: {s} ({u})" for t, s, u in r["reciprocity"]))
        for snap in r["last_pieces"]:
            print(f"  at {snap['at']} s ({snap['pending']} left): " + "; ".join(
                f"{x['piece']}: {x['holders']} hold, holders' nbrs lacking "
                f"{x['holder_nbrs_lacking']}, none lacking {x['holders_all_nbrs_have']}"
                for x in snap["pieces"][:5]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
