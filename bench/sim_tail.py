"""Where a simulated swarm's tail comes from: ``lab simulate`` runs taken apart.

    SWARMHUB_PURE=1 .venv/bin/python bench/sim_tail.py [--peers 16,64,256] [--modes p2p]
        [--seeds 1] [--piece-kib 256] [--latency-ms 10] [--set NAME=VALUE ...] [--json OUT]

Each run (32 MiB, 20 mbit up, 100 mbit down, as ``lab simulate``'s issue 9 runs) prints:

- ``ratio``, the source's upload (link level, and payload only) in F;
- ``first copies out``: when every piece had reached some client once (from the source,
  or the web seed in hybrid), and ``tail``: the last completion after that;
- the completion CDF (min, p10, median, p90, max);
- ``copies``: for the first, middle and last pieces to appear (10 each), the median time
  from a piece's first copy to its 2nd, 4th, 8th ... and last copy (how fast a piece
  spreads, hop by hop);
- ``source's first 12 offers``: the initial seed's first super-seeding Haves: to how
  many distinct clients (and at most how many to one), when, with how many peers the
  seed had then, and when each offered piece was first verified by a client;
- ``hops``: where a piece's hop from one client to the next goes, for the 2nd to 8th
  copies of the 12 pieces out first (the ramp): from the first copy to the Have reaching
  the next client, from that Have to its first request of the piece, and from the
  request to the piece verified (the transfer, and any wait behind other pieces or
  peers at the holder); then, per phase, the median wait from a client's first Have of a
  piece to its first request of it, and for the waits over 0.5 s what the announcing
  peer's state was at that Have (choking us or not, our queue to it full or not);
- ``uplinks``: the clients' useful upload (payload that a receiver kept) per 0.5 s, as a
  share of their payload capacity: the ramp at the start, the plateau, the end; and the
  seconds of a client's uplink lost (idle share x time) in the ramp (until the first
  0.5 s at >= 90 % busy), the plateau (until the first copies are out) and the end. The
  clients must upload about (N - source copies) F in all, so these seconds are what the
  last completion loses to the bound (the whole completion time, not only the tail);
- ``sent``: the messages every core sent (Haves, broadcast, aside), per client per
  piece, and how soon a peer we told NotInterested heard Interested again (p10/p50/p90;
  the interest/choke churn of issue 9);
- ``idle``: every 0.1 s, each unfinished client whose uplink has nothing queued, by why:
  nothing it has is lacked by a neighbour / only choked neighbours lack it / the
  unchoked ones that lack it are not interested / they are, yet ask it for nothing
  (as the idle client sees its neighbours: a peer does not announce a piece to a peer
  that has it and is interested in it, so "lack" can be stale; before 7ac4657 most of
  the last kind were peers that had everything the client could give them and stayed
  "interested" until their next tick).

Why these: the p2p bound here is ``F/u_s`` and the clients must upload (N-1)/N of what
the source sends, so their uplinks have no slack; an uplink that idles is made up only
after the source is done, and the tail is about the clients' mean idle time.

It observes by wrapping the simulator's methods, so it needs the pure-Python modules
(``SWARMHUB_PURE=1``, set here when missing; about 1.7x slower than compiled). Virtual
time: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("SWARMHUB_PURE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub import _compiled
from swarmhub.engine import swarm as swarm_mod
from swarmhub.lab import simulate as sim_mod
from swarmhub.lab.netmodel import MSS, OVERHEAD
from swarmhub.lab.simrun import SimOptions, simulate
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

__all__ = ["main", "run"]

SIZE = 32 << 20
#: the initial seed's offers recorded (the ramp's first pieces)
_OFFERS = 12
UP, DOWN = 20e6, 100e6


def _q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def run(mode: str, n: int, seed: int, piece: int, latency: float,
        settings: Settings) -> dict[str, Any]:
    """One run, observed; the figures described in the module docstring."""
    Sim, End = sim_mod.Simulation, sim_mod.End
    if _compiled.uses_compiled():
        raise SystemExit("sim_tail needs the pure modules: run with SWARMHUB_PURE=1")
    copies: dict[int, list[float]] = {}  # piece -> when each client verified it
    useful: Counter[int] = Counter()  # 0.5 s bucket -> client-to-client payload kept
    idle: dict[str, Counter[str]] = {"ramp": Counter(), "plateau": Counter(), "end": Counter()}
    orig_verified, orig_blocks, orig_start = Sim._verified, End.got_blocks, Sim.start
    Swarm = swarm_mod.Swarm
    orig_have, orig_send = Swarm._got_have, Swarm._send
    # (client swarm id, piece) -> first Have: (when, announcer choking us, our queue to it
    # full); -> first request; -> verified
    learnt: dict[tuple[int, int], tuple[float, bool, bool]] = {}
    asked: dict[tuple[int, int], float] = {}
    got: dict[tuple[int, int], float] = {}
    sent: Counter[str] = Counter()  # message type -> how many the cores sent (not Haves)
    # (core, peer) -> when we last sent it NotInterested; the gaps until the next Interested
    lost_at: dict[tuple[int, object], float] = {}
    # the initial seed's first offers (super-seeding Haves): (when, to whom, piece, how
    # many peers it had then)
    offers: list[tuple[float, object, int, int]] = []
    regained: list[float] = []

    def verified(self: Any, arg: tuple[Any, int]) -> None:
        node, index = arg
        if not node.gone and node.swarm is not None:
            copies.setdefault(index, []).append(self.ev.now)
            if node is not self.source:
                got[(id(node.swarm), index)] = self.ev.now
        orig_verified(self, arg)

    def got_have(self: Any, ps: Any, index: int, now: float) -> None:
        key = (id(self), index)
        if key not in learnt and not self.have[index]:
            learnt[key] = (now, ps.peer_choking, len(ps.requested) >= ps.queue_target)
        orig_have(self, ps, index, now)

    def send(self: Any, ps: Any, msgs: tuple[Any, ...], now: float) -> None:
        for msg in msgs:
            kind = type(msg)
            sent[kind.__name__] += 1
            if kind is m.Request:
                asked.setdefault((id(self), msg.index), now)
            elif kind is m.NotInterested:
                lost_at[(id(self), ps.handle)] = now
            elif kind is m.Interested:
                was = lost_at.pop((id(self), ps.handle), None)
                if was is not None:
                    regained.append(now - was)
            elif kind is m.Have and len(offers) < _OFFERS and self.complete \
                    and not self.downloaded:
                offers.append((now, ps.handle, msg.index, len(self.peers)))
        orig_send(self, ps, msgs, now)

    def got_blocks(self: Any, blocks: list[Any]) -> None:
        sim = self.node.sim
        if self.open and self.remote is not sim.source:
            before = self.node.useful
            orig_blocks(self, blocks)
            useful[int(sim.ev.now * 2)] += self.node.useful - before
            return
        orig_blocks(self, blocks)

    def start(self: Any) -> None:
        orig_start(self)
        first_copies_at = [float("inf")]

        def sample(_arg: object) -> None:
            now = self.ev.now
            if len(copies) == self.num_pieces and first_copies_at[0] == float("inf"):
                first_copies_at[0] = now
            phase = "ramp" if now < 3.0 else "plateau" if now < first_copies_at[0] else "end"
            for node in self.clients:
                swarm = node.swarm
                if swarm is None or node.done is not None or node.gone:
                    continue
                if any(e.out.queued for e in node.ends):
                    idle[phase]["busy"] += 1
                    continue
                have = swarm.have
                lack = [ps for ps in swarm.peers.values() if not ps.closed and any(
                    h and not p for h, p in zip(have, ps.have, strict=True))]
                unchoked = [ps for ps in lack if not ps.am_choking]
                why = ("nothing a neighbour lacks" if not lack
                       else "only choked neighbours lack it" if not unchoked
                       else "unchoked ones not interested"
                       if not any(ps.peer_interested for ps in unchoked)
                       else "interested, no requests")
                idle[phase][why] += 1
            if self.pending:
                self.ev.at(now + 0.1, sample, None)

        self.ev.at(0.05, sample, None)

    Sim._verified, End.got_blocks, Sim.start = verified, got_blocks, start  # type: ignore[method-assign]
    Swarm._got_have, Swarm._send = got_have, send  # type: ignore[method-assign]
    try:
        res = simulate(mode, SimOptions(
            peers=n, size=SIZE, up=[(UP, 1.0)], down=[(DOWN, 1.0)], latency_s=latency,
            piece_length=piece, seed=seed, settings=settings))
    finally:
        Sim._verified, End.got_blocks, Sim.start = orig_verified, orig_blocks, orig_start  # type: ignore[method-assign]
        Swarm._got_have, Swarm._send = orig_have, orig_send  # type: ignore[method-assign]
    done = [h.completion_s for h in res.hosts if h.completion_s is not None]
    first = {i: min(ts) for i, ts in copies.items()}
    order = sorted(first, key=lambda i: first[i])
    out_at = max(first.values())

    def growth(pieces: list[int]) -> list[float]:
        row, k = [], 2
        while k <= n:
            # hybrid: the web seed's copies of a piece are not the clients' (fewer than n)
            gaps = [sorted(copies[i])[k - 1] - first[i] for i in pieces if len(copies[i]) >= k]
            row.append(statistics.median(gaps) if gaps else float("nan"))
            k *= 2
        row.append(statistics.median(max(copies[i]) - first[i] for i in pieces))
        return [round(x, 2) for x in row]

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 3) if xs else float("nan")

    by_piece: dict[int, list[tuple[float, int]]] = {}
    for (sw, index), at in got.items():
        by_piece.setdefault(index, []).append((at, sw))
    hop: list[tuple[float, float, float]] = []  # (Have after copy 1, request - Have, got - request)
    for index in order[:12]:
        for at, sw in sorted(by_piece.get(index, []))[1:8]:
            seen, req = learnt.get((sw, index)), asked.get((sw, index))
            if seen is not None and req is not None:
                hop.append((seen[0] - first[index], req - seen[0], at - req))
    waits: dict[str, dict[str, Any]] = {}
    for phase, lo, hi in (("ramp", 0.0, 3.0), ("plateau", 3.0, out_at), ("end", out_at, 1e9)):
        rows = [(asked[k] - v[0], v) for k, v in learnt.items() if k in asked and lo <= v[0] < hi]
        slow = Counter(("choked" if v[1] else "unchoked") + (", queue full" if v[2] else "")
                       for w, v in rows if w > 0.5)
        waits[phase] = {"median": med([w for w, _ in rows]), "n": len(rows),
                        "over_0.5s": {k: round(c / max(1, len(rows)), 3)
                                      for k, c in slow.most_common()}}
    takers = Counter(h for _, h, _, _ in offers)
    offered = {
        "distinct_clients": len(takers),
        "most_to_one": max(takers.values()) if takers else 0,
        "source_peers_at": [k for _, _, _, k in offers],
        "at_s": [round(t, 3) for t, _, _, _ in offers],
        # when the offered piece was first verified by a client (the first copy)
        "first_copy_s": [round(first[i], 3) if i in first else None for _, _, i, _ in offers],
    }
    mid = len(order) // 2
    capacity = n * UP / 8 * MSS / (MSS + OVERHEAD) * 0.5
    end = max(done) if done else 0.0
    uplinks = [useful[k] / capacity for k in range(int(end * 2) + 1)]
    busy_at = next((k / 2 for k, u in enumerate(uplinks) if u >= 0.9), end)
    lost = {"ramp": 0.0, "plateau": 0.0, "end": 0.0}
    for k, u in enumerate(uplinks[:-1]):  # the last bucket is cut short by the end
        t = k / 2
        lost["ramp" if t < busy_at else "plateau" if t < out_at else "end"] += (1 - u) / 2
    return {
        "mode": mode, "n": n, "seed": seed, "ratio": res.ratio, "bound_s": res.bound_s,
        "source_xF": res.source_upload / SIZE,
        "first_copies_out_s": out_at, "tail_s": end - out_at if done else None,
        "cdf_s": [_q(done, p) for p in (0.0, 0.1, 0.5, 0.9, 1.0)] if done else [],
        "copies_early": growth(order[:10]), "copies_mid": growth(order[mid - 5:mid + 5]),
        "copies_late": growth(order[-10:]),
        "hops": [med([h[i] for h in hop]) for i in range(3)],
        "source_offers": offered,
        "learn_to_request": waits,
        "uplinks": [round(u, 2) for u in uplinks],
        "uplinks_busy_at_s": busy_at,
        "uplink_s_lost": {k: round(v, 2) for k, v in lost.items()},
        "idle": {ph: {k: round(v / max(1, sum(c.values())), 3) for k, v in c.most_common()}
                 for ph, c in idle.items()},
        # per client per piece, every core's sends (Requests included; Haves are broadcast)
        "sent_per_client_piece": {k: round(v / (n * len(first)), 3)
                                  for k, v in sent.most_common()},
        "interest_regained_s": [_q(regained, p) for p in (0.1, 0.5, 0.9)] if regained else [],
        "interest_regained_n": len(regained),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="16,64,256")
    ap.add_argument("--modes", default="p2p")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=10.0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a Settings field for every peer, e.g. unchoke_slots=2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    base = Settings()
    for item in args.set:
        name, _, value = item.partition("=")
        cur = getattr(base, name)
        overrides[name] = (value.lower() in ("1", "true", "yes")) if isinstance(cur, bool) \
            else type(cur)(value)
    settings = Settings(**overrides)
    rows = []
    for mode in args.modes.split(","):
        for n in (int(x) for x in args.peers.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                r = run(mode, n, seed, args.piece_kib * 1024, args.latency_ms / 1000, settings)
                rows.append(r)
                print(f"{mode} N={n} seed {seed}: {r['ratio']:.3f}x the bound "
                      f"({r['bound_s']:.2f} s), source {r['source_xF']:.3f} F; first copies "
                      f"out {r['first_copies_out_s']:.2f} s, tail {r['tail_s']:.2f} s; "
                      f"CDF {' '.join(f'{x:.2f}' for x in r['cdf_s'])}")
                for k in ("copies_early", "copies_mid", "copies_late"):
                    print(f"  {k:13} (2,4,8..,last) {' '.join(f'{x:.2f}' for x in r[k])}")
                have, ask, fetch = r["hops"]
                print(f"  hops (copies 2-8, first 12 pieces) Have after copy 1 {have:.3f} s, "
                      f"request after Have {ask:.3f} s, verified after request {fetch:.3f} s")
                so = r["source_offers"]
                copy1 = " ".join("-" if x is None else f"{x:.2f}" for x in so["first_copy_s"])
                if so["at_s"]:
                    print(f"  source's first {len(so['at_s'])} offers: "
                          f"{so['distinct_clients']} clients (at most {so['most_to_one']} to "
                          f"one), at {' '.join(f'{x:.2f}' for x in so['at_s'])} s with "
                          f"{' '.join(map(str, so['source_peers_at']))} peers; first copies "
                          f"{copy1} s")
                for ph, w in r["learn_to_request"].items():
                    slow = ", ".join(f"{k} {v:.3f}" for k, v in w["over_0.5s"].items())
                    print(f"  {ph:8} Have -> request median {w['median']:.3f} s "
                          f"(n={w['n']}); > 0.5 s: {slow}")
                print(f"  uplinks /0.5 s {' '.join(f'{x:.2f}' for x in r['uplinks'])}")
                lost = r["uplink_s_lost"]
                print(f"  uplink s lost per client: ramp (until 0.9 busy at "
                      f"{r['uplinks_busy_at_s']:.1f} s) {lost['ramp']:.2f}, plateau "
                      f"{lost['plateau']:.2f}, end {lost['end']:.2f}")
                for ph, shares in r["idle"].items():
                    print(f"  {ph:8} {', '.join(f'{k} {v:.3f}' for k, v in shares.items())}")
                print("  sent per client per piece: " + ", ".join(
                    f"{k} {v}" for k, v in r["sent_per_client_piece"].items()))
                gaps = " ".join(f"{x:.3f}" for x in r["interest_regained_s"])
                print(f"  NotInterested -> Interested again (p10 p50 p90 s): {gaps} "
                      f"(n={r['interest_regained_n']})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
