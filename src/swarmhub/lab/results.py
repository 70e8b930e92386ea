"""What one lab run measured: per host and per scenario (plain data, JSON round-trip).

Why a module of its own: the runners fill these in, the report reads them back from
``results.json``, and neither should import the other. Rates in bit/s, sizes in bytes,
times in seconds from the moment the first client could start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from swarmhub.lab.bounds import cs_bound, p2p_bound

__all__ = ["HostResult", "ScenarioResult", "bound_for"]


@dataclass
class HostResult:
    """One receiving host: when it finished (s from the scenario's start), bytes it moved."""

    host: int
    addr: str
    completion_s: float | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    ok: bool = False
    error: str = ""
    #: Killed on purpose by a ``kill-peers`` fault: not counted as a failure.
    killed: bool = False
    #: Bytes this host got from the hub's web seed (hybrid) as the client reported them.
    webseed_bytes: int = 0
    #: Started only after the fault struck (``late``): it knew a magnet link, no live hub.
    late: bool = False
    #: The client process's CPU seconds when it reached the start gate (interpreter start-up
    #: and imports) and at the end of the run (everything), from /proc; None when unknown.
    cpu_start_s: float | None = None
    cpu_s: float | None = None


@dataclass
class ScenarioResult:
    """Everything a report needs about one run. Rates in bit/s, sizes in bytes, times in s."""

    mode: str
    client: str
    peers: int
    size: int
    up_bps: float
    down_bps: float
    source_up_bps: float
    #: One-way latency asked for; the RTT measured between hosts before the run (ms).
    latency_ms: float
    shaped: bool
    bound_s: float
    hosts: list[HostResult] = field(default_factory=list)
    #: Bytes host 0 sent (link counters in namespaces, application counters on loopback).
    source_upload: int = 0
    last_completion_s: float | None = None
    ratio: float | None = None
    ok: bool = False
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: The hub's own counters (cs, hybrid): bytes its HTTP origin and its seeder sent.
    hub_http_bytes: int | None = None
    hub_seeder_bytes: int | None = None
    #: The fault injected (``kill-hub@50%``…), when it struck, and what it did.
    fault: str | None = None
    fault_at_s: float | None = None
    #: kill-hub: verified pieces the receivers held between them when the hub died.
    pieces_held_at_fault: int | None = None
    num_pieces: int | None = None
    #: The union of the pieces the receivers had reported when the fault's trigger fired.
    pieces_reported_at_fault: int | None = None
    #: The receivers still downloading when the fault struck (none had printed its
    #: "finished" line): empty when it struck too late to test anything.
    downloading_at_fault: list[int] | None = None
    rtt_min_ms: float | None = None
    rtt_median_ms: float | None = None
    #: Whether the clients started behind the start gate (:mod:`swarmhub.lab.gate`): times
    #: then count from the gate's opening, not from the first client's start.
    gated: bool = False
    #: The gate's opening as Unix time (None when ungated): to line the run's window up
    #: with outside samples (``bench/swarm.py`` measures the machine's idle CPU within it).
    gate_unix_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        hosts = [HostResult(**h) for h in data.get("hosts", [])]
        return cls(**{**data, "hosts": hosts})

    @property
    def hub_upload(self) -> int | None:
        """HTTP + seeder bytes by the hub's own counters (None without a hub)."""
        if self.hub_http_bytes is None and self.hub_seeder_bytes is None:
            return None
        return (self.hub_http_bytes or 0) + (self.hub_seeder_bytes or 0)


def bound_for(
    mode: str, peers: int, size: int, up_bps: float, down_bps: float, source_up_bps: float
) -> float:
    """The theoretical minimum for ``mode`` (hybrid and p2p share the peer-to-peer bound)."""
    if mode == "cs":
        return cs_bound(size, source_up_bps, [down_bps] * peers)
    return p2p_bound(size, source_up_bps, [down_bps] * peers, [up_bps] * peers)
