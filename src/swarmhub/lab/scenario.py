"""One lab scenario: distribute one file from host 0 to N hosts, measure, compare to the bound.

Why: the lab's claim ("p2p scales, client-server overloads") is only as good as the runs
behind it, so a scenario starts real processes on emulated hosts, times each host from the
moment the first client could start, verifies every byte, and always cleans up.

The modes (cs, p2p, hybrid) and the clients each can run with are in
:mod:`swarmhub.lab.modes`; the shared loop and the faults in :mod:`swarmhub.lab.runner`.
Every scenario has a global deadline (5 x bound + 30 s); a host not done by then is
reported failed and every process is killed.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path

from swarmhub.lab.faults import parse_fault
from swarmhub.lab.latency import latency_support
from swarmhub.lab.modes import CLIENTS, P2P, runner_for
from swarmhub.lab.results import HostResult, ScenarioResult, bound_for
from swarmhub.lab.runner import EventSink
from swarmhub.lab.topology import Lab, LabError, LoopbackLab, netns_available, run_prefix

__all__ = [
    "MODES",
    "HostResult",
    "ScenarioResult",
    "bound_for",
    "make_data",
    "run_scenario",
]

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = tuple(CLIENTS)


def make_data(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes (incompressible, reproducible); return the SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_scenario(
    mode: str,
    peers: int,
    size: int,
    up_bps: float,
    down_bps: float,
    source_up_bps: float | None = None,
    latency_ms: float = 0.0,
    client: str = "swarmhub",
    fault: str | None = None,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    *,
    prefix: str | None = None,
    use_netns: bool | None = None,
    timeout: float | None = None,
    dht: bool = False,
    late: int = 0,
    piece_length: int | None = None,
) -> ScenarioResult:
    """Run one scenario and return its result (``ok`` False with an error per failed host
    rather than raising; :class:`LabError` only when the lab itself cannot run).

    ``dht``: peers also find each other on a DHT of the lab's hosts (p2p: no tracker, the
    clients start from a magnet link); ``late``: that many more hosts start once a
    ``kill-hub`` fault struck, from a magnet link, and must still find the swarm;
    ``piece_length``: the torrent's (p2p only: the hub makes its own torrents)."""
    runner_cls = runner_for(mode, client)
    if piece_length is not None and not issubclass(runner_cls, P2P):
        raise LabError(f"--piece-size applies to p2p only, not {mode} (the hub picks its own)")
    try:
        parsed_fault = parse_fault(fault) if fault else None
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if peers < 1 or size < 1 or late < 0:
        raise LabError("need at least one peer and a non-empty file")
    if (dht or late) and client != "swarmhub":
        raise LabError("the lab's DHT runs with swarmhub peers only")
    source_up = float(source_up_bps or up_bps)
    bound = bound_for(mode, peers, size, up_bps, down_bps, source_up)
    deadline_s = timeout if timeout is not None else 5 * bound + 30
    sink = on_event or (lambda _e: None)
    if use_netns is None:
        use_netns = netns_available()[0]
    if (dht or late) and not use_netns:
        raise LabError("the DHT and late joiners need the namespace lab (root): on "
                       "loopback every node shares one address and unknown ports")
    if late and (parsed_fault is None or parsed_fault.kind != "kill-hub" or not dht):
        raise LabError("late joiners need --dht and a kill-hub fault to join after")
    if latency_ms > 0:  # refused before any folder exists
        ok, why = latency_support() if use_netns else (False, "")
        if not ok:
            raise LabError(
                why or "--latency needs the namespace lab (root): loopback cannot delay packets"
            )
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix=f"swarmhub-lab-{mode}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = ScenarioResult(
        mode=mode,
        client=client,
        peers=peers,
        size=size,
        up_bps=up_bps,
        down_bps=down_bps,
        source_up_bps=source_up,
        latency_ms=latency_ms,
        shaped=use_netns,
        bound_s=bound,
        fault=str(parsed_fault) if parsed_fault else None,
    )
    data = workdir / "source" / "payload.bin"
    if not data.exists() or data.stat().st_size != size:
        make_data(data, size)
    digest = _sha256(data)
    hosts = peers + late + 1
    ups = [source_up] + [float(up_bps)] * (hosts - 1)
    downs = [float(down_bps)] * hosts
    lab: Lab | LoopbackLab
    if use_netns:
        lab = Lab(prefix or run_prefix(), hosts, ups, downs, latency_ms,
                  log_dir=workdir / "logs")
    else:
        why = netns_available()[1]
        lab = LoopbackLab(hosts, ups, downs, latency_ms, log_dir=workdir / "logs")
        if why:
            lab.notes.append(f"why loopback: {why}")
    started = time.monotonic()
    with lab:
        if isinstance(lab, Lab) and lab.rtt is not None:
            result.rtt_min_ms, result.rtt_median_ms = lab.rtt.min_ms, lab.rtt.median_ms
        runner = runner_cls(lab, result, data, workdir, deadline_s, sink, parsed_fault,
                            dht=dht, late=late)
        runner.piece_length = piece_length
        runner.run()
        if dht:
            result.notes.append("peers also found each other on a DHT of the lab's hosts")
        result.notes.extend(lab.notes)
    result.wall_s = time.monotonic() - started
    for h in result.hosts:
        out = workdir / f"h{h.host}" / data.name
        if h.ok and (not out.exists() or _sha256(out) != digest):
            h.ok = False
            h.error = "downloaded bytes differ from the source"
    survivors = [h for h in result.hosts if not h.killed]
    done = [h.completion_s for h in survivors if h.ok and h.completion_s is not None]
    result.ok = bool(survivors) and len(done) == len(survivors)
    if result.ok:
        # the bound is for the N hosts there from the start: late joiners are reported apart
        first = [h.completion_s for h in survivors if not h.late and h.completion_s is not None]
        result.last_completion_s = max(first or done)
        result.ratio = result.last_completion_s / bound
        late_done = [h.completion_s for h in survivors if h.late and h.completion_s is not None]
        if late_done and result.fault_at_s is not None:
            result.notes.append(
                f"{len(late_done)} late joiners (magnet link, DHT) finished "
                f"{min(late_done) - result.fault_at_s:.1f}-{max(late_done) - result.fault_at_s:.1f}"
                " s after the hub died")
    sink({"event": "scenario-done", "mode": mode, "ok": result.ok, "ratio": result.ratio})
    return result
