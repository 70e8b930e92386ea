"""One simulated scenario, end to end: hosts from the options, the run, a ScenarioResult.

Why the same :class:`~swarmhub.lab.results.ScenarioResult` as ``lab run``: the table, the
report and every comparison (measured/bound, source upload in F, the completion CDF)
then read simulated and real runs alike, so the two can sit in one table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarmhub.lab.bounds import cs_bound, p2p_bound
from swarmhub.lab.results import HostResult, ScenarioResult
from swarmhub.lab.simhosts import HostSpec, assign, churn_schedule
from swarmhub.lab.simulate import Simulation
from swarmhub.metainfo.create import auto_piece_length
from swarmhub.settings import Settings

__all__ = ["SimOptions", "simulate"]


@dataclass
class SimOptions:
    """What ``lab simulate`` takes: rates in bit/s (classes of (rate, share)), seconds."""

    peers: int
    size: int
    up: list[tuple[float, float]]
    down: list[tuple[float, float]]
    source_up_bps: float | None = None
    latency_s: float = 0.0
    piece_length: int | None = None
    join_rate: float = 0.0
    leave_rate: float = 0.0
    seed_leaves_after_copy: bool = False
    seed: int = 1
    #: hashing speed, bytes/s (a fixed cost per verified piece; content is virtual)
    hash_rate: float = 1.6e9
    timeout: float | None = None
    settings: Settings = field(default_factory=Settings)


def simulate(mode: str, opts: SimOptions,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> ScenarioResult:
    """Run ``mode`` (cs, p2p, hybrid) once in virtual time and measure it like the lab."""
    rng = random.Random(f"{opts.seed}:{mode}")
    n = opts.peers
    ups = assign(opts.up, n, rng)
    downs = assign(opts.down, n, rng)
    src_up = opts.source_up_bps or opts.up[0][0]
    src_down = max(d for d, _ in opts.down)
    specs = [HostSpec(src_up, src_down, opts.latency_s)]
    specs += [HostSpec(u, d, opts.latency_s) for u, d in zip(ups, downs, strict=True)]
    joins, lives = churn_schedule(n, opts.join_rate, opts.leave_rate, rng)
    piece_length = opts.piece_length or auto_piece_length(opts.size)
    if mode == "cs":
        bound = cs_bound(opts.size, src_up, downs)
    else:
        bound = p2p_bound(opts.size, src_up, downs, ups)
    deadline = opts.timeout if opts.timeout is not None else 5 * bound + 30 + max(joins)
    sim = Simulation(mode, specs, opts.size, piece_length, opts.settings, rng=rng,
                     hash_rate=opts.hash_rate, join_times=joins, lifetimes=lives,
                     seed_leaves_after_copy=opts.seed_leaves_after_copy, on_event=on_event)
    started = time.perf_counter()
    sim.run(deadline)
    wall = time.perf_counter() - started
    uniform = len(opts.up) == 1 and len(opts.down) == 1
    res = ScenarioResult(
        mode=mode, client="simulated", peers=n, size=opts.size,
        up_bps=ups[0] if uniform else sum(ups) / n,
        down_bps=downs[0] if uniform else sum(downs) / n,
        source_up_bps=src_up, latency_ms=opts.latency_s * 1000, shaped=True, bound_s=bound,
        wall_s=wall,
    )
    res.rtt_min_ms = res.rtt_median_ms = 2 * opts.latency_s * 1000
    for node in sim.clients:
        left = node.gone and node.done is None
        res.hosts.append(HostResult(
            host=node.host, addr=node.addr[0],
            completion_s=None if node.done is None else round(node.done, 4),
            bytes_down=node.got, bytes_up=node.gave, ok=node.done is not None,
            error="" if node.done is not None else (
                "left the swarm (churn)" if left else f"not done after {deadline:.0f} s"),
            killed=left, webseed_bytes=node.webseed_bytes,
        ))
    src = sim.source
    res.source_upload = int(src.up.sent)
    if mode != "p2p":
        res.hub_http_bytes = sim.http_bytes
        res.hub_seeder_bytes = src.gave
    res.num_pieces = sim.num_pieces
    survivors = [h for h in res.hosts if not h.killed]
    done = [h.completion_s for h in survivors if h.completion_s is not None]
    res.ok = bool(survivors) and len(done) == len(survivors)
    if res.ok:
        res.last_completion_s = max(done)
        res.ratio = res.last_completion_s / bound
    res.notes.append(
        f"simulated in virtual time ({sim.ev.now:.1f} s simulated in {wall:.1f} s wall time): "
        "bytes are payload per host; source upload is link-level (TCP/IP headers included)")
    res.notes.append(f"piece length {piece_length} B ({sim.num_pieces} pieces), rng seed "
                     f"{opts.seed}, hashing {opts.hash_rate / 1e9:g} GB/s")
    if not uniform:
        res.notes.append("heterogeneous hosts: the up/down columns show the mean rate; the "
                         "bound uses every host's own rates")
    if opts.join_rate or opts.leave_rate:
        res.notes.append(f"churn: joins {opts.join_rate:g}/s, each peer leaves at rate "
                         f"{opts.leave_rate:g}/s; the bound assumes everyone from the start")
    res.notes.append(f"{res.mode} N={n}: {sim.connections} connections opened, "
                     f"{2 * sim.connections / len(sim.nodes):.1f} per host")
    if sim.refusals:
        res.notes.append(f"{res.mode} N={n}: handshakes refused: " + ", ".join(
            f"{why} {count}" for why, count in sim.refusals.most_common()))
    if sim.source_left is not None:
        res.notes.append(f"the source left at {sim.source_left:.1f} s after one full copy")
    return res
