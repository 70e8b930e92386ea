"""Where the uplinks idle in ``lab simulate``: the aggregate upload capacity, accounted.

    nice -n 10 .venv/bin/python bench/sim_util.py [--peers 64,256] [--modes p2p]
        [--seeds 1] [--piece-kib 256] [--latency-ms 10] [--dt-ms 10] [--set NAME=VALUE]
        [--json OUT]

Why: when the bound is its aggregate term, ``N·F / (u_s + Σu_i)``, the capacity of every
uplink from 0 to the last completion, ``C = (u_s + Σu_i)·T``, is exactly N·F of useful
payload plus what was lost, so ``ratio = C / ((u_s + Σu_i)·bound)`` splits into additive
rows, each in units of the bound (``x bound``; they sum to the ratio):

- ``bound`` (1) and ``slack`` (<= 0): the payload kept (N·F in p2p; hybrid's web seed adds
  the source's HTTP) is ``1 + slack`` of what the bound lets the uplinks carry: the bound's
  own slack when its ``F/u_s`` or ``F/d_min`` term is the larger (N=16: the source alone
  needs F/u_s, and the aggregate term is 16/17 of it);
- ``framing``: TCP/IP/Ethernet headers and the Piece header of every block kept
  (the model counts a 16 KiB block as 12 segments: 4.9 %, the floor of any figure);
- ``waste``: blocks that arrived and were not kept (duplicates), with their framing;
- ``control``: every other wire byte (Haves, requests, handshakes, PEX, bitfields,
  blocks lost on closed connections);
- ``idle``: capacity nobody used, sampled every ``--dt-ms`` of virtual time (each
  host's link capacity minus the sum of its flows' rates; scaled to the exact total
  ``C - Σ link bytes sent``), split by phase and cause.

Phases (per host and sample): ``source`` (the initial seed), ``ramp`` (a client holding
no verified piece yet), ``middle``, ``done`` (a client that completed and stays to
seed), ``tail`` (any host, once at most ``--tail-share`` of the clients are left).
Causes, first match: ``flow below link`` (data queued but its flows' rates, capped by
cwnd / slow start or the receiver's downlink, do not fill the uplink); ``disk read``;
``requests held`` (accepted requests not written: the upload grants); ``requests in
flight`` (a peer has blocks requested from us that are not here yet, or on their way
back: the pipeline is shorter than the round trip); ``unchoke in flight`` (we unchoked an
interested peer that does not know yet); ``unchoked, nothing asked`` (it knows, and asks
nothing: its queue is full elsewhere or it wants nothing of ours); ``interested, all
choked``; ``lack, not interested`` (a neighbour lacks a piece we have but has not said
interested: a Have on its way); ``nothing yet`` (no verified piece); ``neighbours done``
(we completed and every neighbour did too); ``neighbours have ours`` (an unfinished
client whose neighbours hold all it has).

Also printed: the clients' uplink use per 0.5 s; the structural floor of the ramp and
the end for this piece count (``k + ceil(log2(N+1)) - 1`` piece times for k pieces, one
per piece time from the source, with equal uplinks: the optimal broadcast schedule),
times the framing; and in the tail, the last clients' missing pieces with how many hosts
and how many of their neighbours hold them (the last piece's rarity).

It observes by sampling (an event on the simulation's own queue): nothing is wrapped, so
the compiled core runs (and the figures are those of ``lab simulate``). Virtual time:
the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.lab import simrun
from swarmhub.lab.netmodel import MSS, OVERHEAD
from swarmhub.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_ramp import simulate_with

__all__ = ["main", "run"]

SIZE = 32 << 20
UP, DOWN = 20e6, 100e6
BLOCK = 16384
#: wire bytes of one 16 KiB Piece message, as the simulator counts it
BLOCK_WIRE = BLOCK + 13 + -(-(BLOCK + 13) // MSS) * OVERHEAD


def _desc(d: dict[Any, float]) -> list[tuple[Any, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])


def _cause(node: Any, num: int) -> str:
    """Why ``node``'s uplink idles now (see the module doc, first match)."""
    if node.up.flows:
        return "flow below link"
    if node.reads:
        return "disk read"
    mine = node.swarm.num_have
    lack = False
    unchoke_in_flight = unchoked = interested = in_flight = False
    for e in node.ends:
        ps = e.ps
        if not e.open or ps is None or ps.closed:
            continue
        if ps.incoming:
            return "requests held"
        far = e.far.ps
        if far is not None and far.requested:
            in_flight = True
        if ps.peer_interested:
            interested = True
            if not ps.am_choking:
                if far is not None and far.peer_choking:
                    unchoke_in_flight = True
                else:
                    unchoked = True
        if not lack and mine and ps.num_have < num and not ps.has_all:
            if mine == num:
                lack = True
            else:
                have, theirs = node.swarm.have, ps.have
                lack = any(h and not p for h, p in zip(have, theirs, strict=True))
    if in_flight:
        return "requests in flight"
    if unchoke_in_flight:
        return "unchoke in flight"
    if unchoked:
        return "unchoked, nothing asked"
    if interested:
        return "interested, all choked"
    if lack:
        return "lack, not interested"
    if not mine:
        return "nothing yet"
    if node.done is not None or mine == num:
        return "neighbours done"
    return "neighbours have ours"


def run(mode: str, n: int, seed: int, piece: int, latency: float, settings: Settings,
        dt: float = 0.01, tail_share: float = 0.1, size: int = SIZE) -> dict[str, Any]:
    """One run, sampled; the figures described in the module docstring."""
    #: (phase, cause) -> wire bytes idle
    idle: defaultdict[tuple[str, str], float] = defaultdict(float)
    # 0.5 s bucket -> (clients' used, clients' capacity) wire bytes
    use: dict[int, list[float]] = {}
    last_missing: list[dict[str, Any]] = []
    first_piece: dict[int, float] = {}  # client host -> first sample holding a piece
    first_copy: dict[int, float] = {}  # piece -> first sample a client held it
    seen_have: dict[int, int] = {}  # client host -> its num_have at the last sample
    tail_k = max(1, math.floor(n * tail_share))
    made: list[Any] = []
    real = simrun.Simulation  # the run's Simulation is made by ``factory`` around it

    def factory(*args: Any, **kwargs: Any) -> Any:
        sim = real(*args, **kwargs)
        made.append(sim)
        num = sim.num_pieces

        def sample(_arg: object) -> None:
            now = sim.ev.now
            tail = sim.pending <= tail_k
            bucket = use.setdefault(int(now * 2), [0.0, 0.0])
            for node in sim.nodes:
                if node.gone or node.started is None:
                    continue
                link = node.up
                used = 0.0
                for p in link.flows:
                    used += p.rate
                cap = link.cap
                if node is not sim.source:
                    bucket[0] += min(used, cap) * dt
                    bucket[1] += cap * dt
                free = cap - used
                if free <= 1e-3 * cap:
                    continue
                swarm = node.swarm
                if swarm is None:
                    phase, cause = ("tail" if tail else "ramp"), "nothing yet"
                else:
                    phase = ("source" if node is sim.source else "tail" if tail
                             else "done" if node.done is not None
                             else "ramp" if not swarm.num_have else "middle")
                    cause = _cause(node, num)
                idle[(phase, cause)] += free * dt
            for node in sim.clients:
                sw = node.swarm
                if sw is None or sw.num_have == seen_have.get(node.host, 0):
                    continue
                seen_have[node.host] = sw.num_have
                first_piece.setdefault(node.host, now)
                if len(first_copy) < num:
                    have = sw.have
                    for i in range(num):
                        if have[i] and i not in first_copy:
                            first_copy[i] = now
            if tail:
                holders = [0] * num
                for node in sim.nodes:
                    if node.swarm is not None and not node.gone:
                        for i, h in enumerate(node.swarm.have):
                            holders[i] += h
                snap = []
                for node in sim.clients:
                    if node.done is not None or node.gone or node.swarm is None:
                        continue
                    sw = node.swarm
                    missing = [i for i in range(num) if not sw.have[i]]
                    peers = [ps for ps in sw.peers.values() if not ps.closed]
                    snap.append({
                        "host": node.host, "missing": len(missing),
                        "holders": sorted(holders[i] for i in missing)[:4],
                        "neighbours": len(peers),
                        "neighbours_holding": sorted(
                            sum(1 for ps in peers if ps.has_all or ps.have[i])
                            for i in missing)[:4],
                        "unchoking_us": sum(1 for ps in peers if not ps.peer_choking),
                        "requested": sum(len(ps.requested) for ps in peers),
                    })
                last_missing[:] = [{"at": round(now, 3), "left": snap}]
            if sim.pending > 0:
                sim.ev.at(now + dt, sample, None)

        sim.ev.at(dt / 2, sample, None)
        return sim

    res = simulate_with(factory, mode, n, seed, piece, settings, size, latency)
    sim = made[0]
    end = res.last_completion_s
    assert end is not None, "a run that did not complete"
    agg = (UP + n * UP) / 8  # wire bytes/s, as the bound counts them
    need = agg * res.bound_s  # what the bound lets the uplinks carry
    cap_total = agg * end
    sent = sum(node.up.sent for node in sim.nodes)
    gave = sum(node.gave for node in sim.nodes)  # payload that arrived (kept or not)
    useful = sum(node.useful for node in sim.clients) + sim.http_bytes
    kept_blocks = useful / BLOCK
    framing = kept_blocks * (BLOCK_WIRE - BLOCK)
    waste = (gave - (useful - sim.http_bytes)) / BLOCK * BLOCK_WIRE
    control = sent - useful - framing - waste
    idle_exact = cap_total - sent
    sampled = sum(idle.values())
    scale = idle_exact / sampled if sampled else 0.0
    rows = {
        "bound": 1.0,
        "slack": (useful - need) / need,
        "framing": framing / need, "waste": waste / need, "control": control / need,
        "idle": idle_exact / need,
    }
    by_phase: defaultdict[str, float] = defaultdict(float)
    by_cause: defaultdict[str, float] = defaultdict(float)
    for (ph, ca), v in idle.items():
        by_phase[ph] += v * scale / need
        by_cause[ca] += v * scale / need
    k = sim.num_pieces
    # optimal broadcast with equal uplinks: k + ceil(log2(N+1)) - 1 piece times, over the
    # bound's k piece times (the source's F/u_s), with the framing on top
    floor = (k + math.ceil(math.log2(n + 1)) - 1) / k * BLOCK_WIRE / BLOCK
    # that schedule's ramp: in round r the clients holding nothing yet idle (one piece
    # time each), while the holders double
    ramp_floor = sum(n - min(n, 2 ** (r - 1) - 1) for r in range(1, math.ceil(
        math.log2(n + 1)) + 1)) / (n * k)
    piece_time = sim.piece_length / BLOCK * BLOCK_WIRE / (UP / 8)
    firsts = sorted(first_piece.values())
    uplinks = [round(use[b][0] / use[b][1], 2) for b in sorted(use) if use[b][1]]
    return {
        "mode": mode, "n": n, "seed": seed, "ratio": res.ratio, "bound_s": res.bound_s,
        "last_s": end, "pieces": k, "rows": {k2: round(v, 4) for k2, v in rows.items()},
        "sum": round(sum(rows.values()), 4), "sampled_vs_exact_idle": round(
            sampled / idle_exact, 3) if idle_exact else None,
        "idle_by_phase": {p: round(v, 4) for p, v in _desc(by_phase)},
        "idle_by_cause": {c: round(v, 4) for c, v in _desc(by_cause)},
        "idle_by_phase_cause": {f"{p} / {c}": round(v * scale / need, 4)
                                for (p, c), v in _desc(idle) if v * scale / need
                                >= 0.001},
        # the source's payload that arrived, in F (above 1: pieces it sent twice, each
        # of which delays its last new piece), and when the last piece first reached a
        # client (the source's F/u_s is the bound): the tail is what follows it
        "source_payload_xF": round(sim.source.gave / size, 4),
        "last_first_copy_s": round(max(first_copy.values()), 3) if first_copy else None,
        "floor": round(floor, 4), "ramp_floor": round(ramp_floor, 4),
        "piece_time_s": round(piece_time, 4),
        # when clients first held a verified piece: p10, p50, p90, max (s, sampled), and
        # the optimal schedule's last (ceil(log2(N+1)) piece times)
        "first_piece_s": [round(firsts[min(len(firsts) - 1, int(q * len(firsts)))], 3)
                          for q in (0.1, 0.5, 0.9, 1.0)] if firsts else [],
        "first_piece_ideal_s": round(math.ceil(math.log2(n + 1)) * piece_time, 3),
        "uplinks": uplinks, "tail_left": last_missing,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="64,256")
    ap.add_argument("--modes", default="p2p")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=10.0)
    ap.add_argument("--dt-ms", type=float, default=10.0, help="sampling step, virtual ms")
    ap.add_argument("--tail-share", type=float, default=0.1,
                    help="the tail: at most this share of the clients left")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a Settings field for every peer, e.g. unchoke_slots=2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    settings = Settings.from_mapping(dict(item.partition("=")[::2] for item in args.set))
    out = []
    for mode in args.modes.split(","):
        for n in (int(x) for x in args.peers.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                r = run(mode, n, seed, args.piece_kib * 1024, args.latency_ms / 1000,
                        settings, args.dt_ms / 1000, args.tail_share)
                out.append(r)
                rows = " ".join(f"{k} {v:+.3f}" for k, v in r["rows"].items())
                print(f"{mode} N={n} seed {seed}: {r['ratio']:.3f}x the bound "
                      f"({r['bound_s']:.2f} s, last {r['last_s']:.2f} s); rows (x bound, sum "
                      f"{r['sum']:.3f}): {rows}; structural floor {r['floor']:.3f} "
                      f"(sampled/exact idle {r['sampled_vs_exact_idle']})")
                print(f"  source payload {r['source_payload_xF']} F; last piece first out "
                      f"{r['last_first_copy_s']} s, tail after it "
                      f"{r['last_s'] - (r['last_first_copy_s'] or 0):.2f} s")
                print(f"  ramp floor {r['ramp_floor']:.3f} (piece time {r['piece_time_s']} s); "
                      f"first piece held p10/p50/p90/max {r['first_piece_s']} s, optimal "
                      f"schedule's last {r['first_piece_ideal_s']} s")
                print("  idle by phase: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r["idle_by_phase"].items()))
                print("  idle by cause: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r["idle_by_cause"].items()))
                print("  phase / cause: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r["idle_by_phase_cause"].items()))
                print(f"  clients' uplinks /0.5 s {' '.join(map(str, r['uplinks']))}")
                for snap in r["tail_left"]:
                    print(f"  at {snap['at']} s, left: " + "; ".join(
                        f"h{x['host']} missing {x['missing']} (holders {x['holders']}, "
                        f"neighbours {x['neighbours']} holding {x['neighbours_holding']}, "
                        f"unchoking {x['unchoking_us']}, requested {x['requested']})"
                        for x in snap["left"][:6]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
