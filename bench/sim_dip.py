"""Why a client holding a few pieces idles its uplink right after the ramp (issue 9's dip).

    nice -n 19 .venv/bin/python bench/sim_dip.py [--peers 1000] [--mode p2p] [--seed 1]
        [--piece-kib 256] [--from 2] [--to 5] [--max-have 5] [--dt-ms 10]
        [--set NAME=VALUE] [--src TREE/src] [--json OUT]

Why: ``sim_util.py`` puts >= 0.034 of N=1,000's middle idle (0.087 x bound) in 2-5 s,
where clients holding 1-5 pieces run their uplinks at 0.63-0.87 (N=256: 0.86-0.92), and
names the cause only coarsely (``unchoked, nothing asked``, ``unchoke in flight`` ...).
This takes each such client's idle uplink-time apart by what its neighbours do, seen
from both ends of every connection (the simulation holds both PeerStates and both
swarms, so "stale" views and messages in flight show). Every ``--dt-ms`` of virtual
time in [``--from``, ``--to``), each client holding 1..``--max-have`` verified pieces,
not complete, whose uplink is not full adds its free capacity x dt to the first cause
that matches (``X`` the idle client, ``P`` a neighbour):

- ``flow below link``: X sends, below its link (cwnd / slow start, receiver);
- ``disk read`` / ``requests held``: X has accepted requests not written yet;
- ``in flight, queue at target``: some P has requests out to X, and P's queue to X is at
  its target: the pipeline is shorter than the round trip (the queue is too short);
- ``in flight, queue below target``: requests out to X, P's queue below its target (P
  asked all it wants of X);
- ``unchoke in flight``: X unchoked an interested P that has not seen the Unchoke;
- ``unchoked`` causes, for X's unchoked, interested P that know it (the first that
  matches among them, in this order, names the sample):
  ``unchoked, NotInterested in flight`` (P lost interest, X has not heard),
  ``unchoked, choke due`` (P waits for a Choke it expects, see ``_lost_interest``),
  ``unchoked, P could ask`` (a piece of X's that P lacks and knows has a free block at P:
  a refill not run yet), ``unchoked, ours requested elsewhere`` (every piece of X's
  that P lacks and knows of is in progress at P with no free block: P fetches X's pieces
  from other peers), ``unchoked, Have in flight`` (P lacks a piece of X's it has not
  heard of: interested for another), ``unchoked, other``;
- ``interested, all choked``: interested P exist, X chokes them all; split by X's
  unchoked peers against its slots: ``..., slots free`` (fewer unchoked than
  ``_slots() + 1``), ``..., slots full`` (its unchoked peers fill them, each asking
  nothing of X or not interested), and whether the choked interested P truly lack
  anything of X's (``stale``: each holds all of X's pieces, its NotInterested not sent
  because X chokes it: ``_tell_passed`` tells NotInterested only to a peer unchoking us);
- ``lack, Have in flight`` (a P lacks a piece of X's and has not heard of it yet),
  ``lack, Interested in flight`` (it heard, said Interested, X has not heard),
  ``lack, heard, not interested``;
- ``neighbours have ours``: every open P holds every piece X holds.

Then, for holders idle with nothing sending: X's unchoked peers by state (asking, unchoke
in flight, NotInterested in flight, asks nothing, not interested), the share of that idle
with every slot taken while interested peers wait choked, and for the unchoked peers that
ask nothing because X's pieces are asked of other peers, how long those requests have
waited there (p10/p50/p90). Per cause, the mean number of X's open neighbours, its
unchoked peers, its interested choked peers and the neighbours lacking one of its
pieces, and in units of the bound (capacity x bound time of all uplinks) the idle
sampled, to set against ``sim_util.py``'s rows.

It samples from an event on the simulation's own queue (nothing wrapped), so the
compiled core runs. Virtual time: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_ramp import scenario_args, scenario_settings, simulate_with

__all__ = ["CAUSES", "classify", "main", "run"]

UP = 20e6
#: buckets of pieces held, for the idle of every client in the window
_GROUPS = ("few", "holders")
_HELD = (("0", 0), ("1-5", 5), ("6-15", 15), ("16-40", 40), ("41+", 1 << 30))


def _lacks(mine: list[int], have: bytearray) -> list[int]:
    return [i for i in mine if not have[i]]


def _unchoked_cause(x_node: Any, ps: Any, far: Any, p_node: Any, mine: list[int],
                    now: float) -> str:
    """Why ``P`` (the far side of X's ``ps``), unchoked, interested and knowing it, asks
    X for nothing."""
    if not far.am_interested:
        return "unchoked, NotInterested in flight"
    if now < far.choke_due_until:
        return "unchoked, choke due"
    psw = p_node.swarm
    lack = _lacks(mine, psw.have)
    known = [i for i in lack if far.have[i]]
    picker = psw.picker
    downloading = picker._downloading
    for i in known:
        piece = downloading.get(i)
        if piece is None or piece.num_free:
            return "unchoked, P could ask"
    if known:
        return "unchoked, ours requested elsewhere"
    if lack:
        return "unchoked, Have in flight"
    return "unchoked, other"


def _slot_census(node: Any, now: float) -> tuple[dict[str, int], bool, list[float]]:
    """X's unchoked peers by state (``asking``: requests out to X; ``unchoke in flight``;
    ``NotInterested in flight``; ``asks nothing``: interested, knows, asks nothing;
    ``not interested``), whether X's slots (``_slots() + 1``) are all taken while
    interested peers wait choked, and for each unchoked peer that asks nothing because
    X's pieces are requested elsewhere, how long ago (s) its oldest request for such a
    piece went to another peer."""
    sw = node.swarm
    have = sw.have
    mine = [i for i in range(sw.num_pieces) if have[i]]
    states = dict.fromkeys(_SLOT_STATES, 0)
    unchoked = waiting = 0
    ages: list[float] = []
    for e in node.ends:
        ps = e.ps
        if not e.open or ps is None or ps.closed:
            continue
        if ps.am_choking:
            waiting += ps.peer_interested
            continue
        unchoked += 1
        far = e.far.ps
        if not ps.peer_interested or far is None:
            states["not interested"] += 1
        elif far.peer_choking:
            states["unchoke in flight"] += 1
        elif far.requested:
            states["asking"] += 1
        elif not far.am_interested:
            states["NotInterested in flight"] += 1
        else:
            states["asks nothing"] += 1
            psw = e.remote.swarm
            for i in _lacks(mine, psw.have):
                if not far.have[i]:
                    continue
                asked = [t for q in psw.peers.values() if not q.closed
                         for b, t in q.requested.items() if b.index == i]
                if asked:
                    ages.append(now - min(asked))
    return states, bool(waiting) and unchoked >= sw._slots(now) + 1, ages


_SLOT_STATES = ("asking", "unchoke in flight", "NotInterested in flight", "asks nothing",
                "not interested")


#: every cause :func:`classify` names
CAUSES: tuple[str, ...] = (
    "flow below link", "disk read", "requests held", "in flight, queue at target",
    "in flight, queue below target", "unchoke in flight",
    "unchoked, NotInterested in flight", "unchoked, choke due", "unchoked, P could ask",
    "unchoked, ours requested elsewhere", "unchoked, Have in flight", "unchoked, other",
    *(f"interested, all choked, {s}{t}" for s in ("slots free", "slots full")
      for t in ("", ", stale")),
    "lack, Have in flight", "lack, Interested in flight", "lack, heard, not interested",
    "neighbours have ours")

_UNCHOKED_ORDER = ("unchoked, NotInterested in flight", "unchoked, choke due",
                   "unchoked, P could ask", "unchoked, ours requested elsewhere",
                   "unchoked, Have in flight", "unchoked, other")


def classify(node: Any, now: float) -> tuple[str, dict[str, int]]:
    """The first cause (see the module doc) of ``node``'s idle uplink now, and counts of
    its neighbours (open, unchoked, interested and choked, lacking one of its pieces)."""
    sw = node.swarm
    have = sw.have
    mine = [i for i in range(sw.num_pieces) if have[i]]
    counts = {"nb": 0, "unch": 0, "int_ch": 0, "lack": 0}
    if node.up.flows:
        return "flow below link", counts
    if node.reads:
        return "disk read", counts
    at_target = below = unchoke_flight = False
    unchoked_causes: list[str] = []
    int_choked: list[tuple[Any, Any, Any]] = []
    unch_asking_nothing = 0
    lack_states: list[str] = []
    held = False
    for e in node.ends:
        ps = e.ps
        if not e.open or ps is None or ps.closed:
            continue
        far_end = e.far
        far = far_end.ps if far_end is not None else None
        p_node = e.remote
        counts["nb"] += 1
        if ps.incoming:
            held = True
        if far is not None and far.requested:
            if len(far.requested) >= far.queue_target:
                at_target = True
            else:
                below = True
        if not ps.am_choking:
            counts["unch"] += 1
        true_lack = (p_node.swarm is not None and not p_node.gone
                     and bool(_lacks(mine, p_node.swarm.have)))
        counts["lack"] += true_lack
        if ps.peer_interested:
            if ps.am_choking:
                counts["int_ch"] += 1
                int_choked.append((ps, far, p_node))
            elif far is not None and far.peer_choking:
                unchoke_flight = True
            elif far is not None and not far.requested:
                unch_asking_nothing += 1
                unchoked_causes.append(_unchoked_cause(node, ps, far, p_node, mine, now))
        elif not ps.am_choking:
            unch_asking_nothing += 1
        if true_lack and not ps.peer_interested and far is not None:
            lack = _lacks(mine, p_node.swarm.have)
            if not any(far.have[i] for i in lack):
                lack_states.append("lack, Have in flight")
            elif far.am_interested:
                lack_states.append("lack, Interested in flight")
            else:
                lack_states.append("lack, heard, not interested")
    if held:
        return "requests held", counts
    if at_target:
        return "in flight, queue at target", counts
    if below:
        return "in flight, queue below target", counts
    if unchoke_flight:
        return "unchoke in flight", counts
    if unchoked_causes:
        return min(unchoked_causes, key=_UNCHOKED_ORDER.index), counts
    if int_choked:
        slots = sw._slots(now) + 1
        state = "slots free" if counts["unch"] < slots else "slots full"
        stale = all(not _lacks(mine, p.swarm.have) for _, _, p in int_choked
                    if p.swarm is not None)
        return f"interested, all choked, {state}{', stale' if stale else ''}", counts
    if lack_states:
        order = ("lack, Have in flight", "lack, Interested in flight",
                 "lack, heard, not interested")
        return min(lack_states, key=order.index), counts
    return "neighbours have ours", counts


def run(mode: str, n: int, seed: int, piece: int, settings: Any, start: float = 2.0,
        stop: float = 5.0, max_have: int = 5, dt: float = 0.01,
        size: int = 32 << 20) -> dict[str, Any]:
    """One run sampled in [start, stop): the idle uplink-time of the clients holding
    1..max_have pieces (``few``) and of every unfinished holder (``holders``) by cause,
    and the figures the module doc names."""
    from swarmhub.lab import simrun

    #: group -> cause -> idle wire bytes; group -> cause -> neighbour counts summed
    idle: dict[str, defaultdict[str, float]] = {g: defaultdict(float) for g in _GROUPS}
    nbs: dict[str, defaultdict[str, defaultdict[str, float]]] = {
        g: defaultdict(lambda: defaultdict(float)) for g in _GROUPS}
    busy = {g: [0.0, 0.0] for g in ("few", "all")}  # (used, capacity) wire bytes
    #: holders idle with nothing sending: weight, weighted unchoked peers by state, weight
    #: with every slot taken and interested peers waiting; ages (see _slot_census)
    slot_w = [0.0, 0.0]
    slot_states: defaultdict[str, float] = defaultdict(float)
    ages: list[float] = []
    #: pieces held (bucket) -> idle wire bytes of the clients holding that many
    by_held: defaultdict[str, float] = defaultdict(float)
    real = simrun.Simulation

    def factory(*args: Any, **kwargs: Any) -> Any:
        sim = real(*args, **kwargs)

        def sample(_arg: object) -> None:
            now = sim.ev.now
            for node in sim.clients:
                sw = node.swarm
                if sw is None or node.gone or node.done is not None:
                    continue
                link = node.up
                used = min(link.cap, sum(p.rate for p in link.flows))
                free = link.cap - used
                held = sw.num_have
                few = 1 <= held <= max_have
                for g in ("few", "all") if few else ("all",):
                    busy[g][0] += used * dt
                    busy[g][1] += link.cap * dt
                by_held[next(name for name, top in _HELD if held <= top)] += free * dt
                if not held or held == sw.num_pieces or free <= 1e-3 * link.cap:
                    continue
                cause, counts = classify(node, now)
                if not link.flows:
                    states, full, waited = _slot_census(node, now)
                    w = free * dt
                    slot_w[0] += w
                    slot_w[1] += w * full
                    for k, v in states.items():
                        slot_states[k] += w * v
                    ages.extend(waited)
                for g in ("few", "holders") if few else ("holders",):
                    idle[g][cause] += free * dt
                    row = nbs[g][cause]
                    row["samples"] += 1
                    for k, v in counts.items():
                        row[k] += v
            if now + dt < stop:
                sim.ev.at(now + dt, sample, None)

        sim.ev.at(start + dt / 2, sample, None)
        return sim

    res = simulate_with(factory, mode, n, seed, piece, settings, size)
    need = (UP + n * UP) / 8 * res.bound_s  # wire bytes: the bound's capacity
    for g in _GROUPS:
        assert set(idle[g]) <= set(CAUSES), set(idle[g]) - set(CAUSES)

    def table(g: str) -> dict[str, dict[str, float]]:
        total = sum(idle[g].values()) or 1.0
        return {c: {"share": round(v / total, 4), "x_bound": round(v / need, 4),
                    **{k: round(x / nbs[g][c]["samples"], 1)
                       for k, x in nbs[g][c].items() if k != "samples"}}
                for c, v in sorted(idle[g].items(), key=lambda kv: -kv[1])}

    ages.sort()
    sw0 = slot_w[0] or 1.0
    return {
        "slots": {"unchoked_by_state": {k: round(slot_states[k] / sw0, 2)
                                        for k in _SLOT_STATES},
                  "full_while_waiting": round(slot_w[1] / sw0, 3),
                  "elsewhere_age_p10_p50_p90": [
                      round(ages[int(q * (len(ages) - 1))], 3) for q in (0.1, 0.5, 0.9)]
                  if ages else []},
        "mode": mode, "n": n, "seed": seed, "ratio": res.ratio, "from": start, "to": stop,
        "max_have": max_have,
        "busy_few": round(busy["few"][0] / busy["few"][1], 3) if busy["few"][1] else None,
        "busy_all": round(busy["all"][0] / busy["all"][1], 3) if busy["all"][1] else None,
        "idle_x_bound": {g: round(sum(idle[g].values()) / need, 4) for g in _GROUPS},
        "idle_by_held_x_bound": {k: round(by_held[k] / need, 4) for k, _ in _HELD},
        "causes": {g: table(g) for g in _GROUPS},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenario_args(ap, 1000)
    ap.add_argument("--from", dest="start", type=float, default=2.0)
    ap.add_argument("--to", dest="stop", type=float, default=5.0)
    ap.add_argument("--max-have", type=int, default=5)
    ap.add_argument("--dt-ms", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    settings = scenario_settings(args)
    r = run(args.mode, args.peers, args.seed, args.piece_kib * 1024, settings, args.start,
            args.stop, args.max_have, args.dt_ms / 1000)
    print(f"{r['mode']} N={r['n']} seed {r['seed']}: {r['ratio']:.4f}x the bound; "
          f"{r['from']}-{r['to']} s: clients holding 1-{r['max_have']} pieces ('few') "
          f"{r['busy_few']} busy, all unfinished clients {r['busy_all']}")
    print("  every unfinished client's idle by pieces held (x bound): " + ", ".join(
        f"{k} {v:.4f}" for k, v in r["idle_by_held_x_bound"].items()))
    for g in _GROUPS:
        print(f"  {g}: idle {r['idle_x_bound'][g]:.4f} x bound")
        print(f"  {'cause':<50} {'share':>6} {'xbound':>7} {'nb':>5} {'unch':>5} "
              f"{'int_ch':>6} {'lack':>5}")
        for c, v in r["causes"][g].items():
            print(f"  {c:<50} {v['share']:6.3f} {v['x_bound']:7.4f} {v['nb']:5.1f} "
                  f"{v['unch']:5.1f} {v['int_ch']:6.1f} {v['lack']:5.1f}")
    sl = r["slots"]
    print("  holders idle with nothing sending: unchoked peers by state (mean) " + ", ".join(
        f"{k} {v}" for k, v in sl["unchoked_by_state"].items())
        + f"; every slot taken while interested peers wait {sl['full_while_waiting']}"
        f"; an asks-nothing peer's oldest request for our piece elsewhere, age "
        f"p10/p50/p90 {sl['elsewhere_age_p10_p50_p90']} s")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
