"""Iterative lookups (BEP 5, Kademlia), as pure state machines.

A lookup walks towards ``target``: it keeps candidates sorted by XOR distance, keeps at
most ``alpha`` queries in flight, and queries only candidates among the ``k`` nearest that
have not failed. It is done when those ``k`` nearest have all answered (nothing nearer is
left to learn), when no candidate is left to ask, or after ``max_queries`` queries. A
get_peers lookup also gathers the peers (``values``) it is told about and the write token
of every node that answered, for the announce that may follow.

The lookup sends nothing and has no timer: :meth:`Lookup.next_queries` says whom to ask,
and the node core reports :meth:`on_response` or :meth:`on_failure` (its own timeout).
Candidates are keyed by address: bootstrap routers are asked before their id is known.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from swarmhub.discovery.dht.krpc import NodeInfo

__all__ = ["Candidate", "Lookup", "LookupKind", "State"]

Addr = tuple[str, int]

_FAR = 1 << 161  # unknown ids sort after every real distance


class LookupKind(enum.Enum):
    FIND_NODE = "find_node"
    GET_PEERS = "get_peers"


class State(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(slots=True)
class Candidate:
    addr: Addr
    id: bytes | None
    dist: int
    state: State = State.NEW
    token: bytes | None = None


@dataclass(slots=True)
class Lookup:
    """One lookup for ``target``; ``exclude`` holds our own id and address."""

    target: bytes
    kind: LookupKind
    k: int = 8
    alpha: int = 3
    max_queries: int = 150
    max_candidates: int = 200
    exclude_id: bytes = b""
    exclude_addr: Addr | None = None
    candidates: dict[Addr, Candidate] = field(default_factory=dict)
    peers: dict[Addr, None] = field(default_factory=dict)
    queries: int = 0
    responses: int = 0
    in_flight: int = 0

    def add(self, nodes: list[NodeInfo] | tuple[NodeInfo, ...]) -> None:
        t = int.from_bytes(self.target, "big")
        for n in nodes:
            if n.id == self.exclude_id or n.addr == self.exclude_addr or n.addr in self.candidates:
                continue
            self.candidates[n.addr] = Candidate(n.addr, n.id, int.from_bytes(n.id, "big") ^ t)
        if len(self.candidates) > self.max_candidates:  # forget the farthest unasked
            extra = len(self.candidates) - self.max_candidates
            for c in sorted(self.candidates.values(), key=lambda c: -c.dist):
                if extra == 0:
                    break
                if c.state is State.NEW:
                    del self.candidates[c.addr]
                    extra -= 1

    def add_seeds(self, addrs: list[Addr]) -> None:
        """Addresses without a known id (bootstrap routers): asked when nothing is nearer."""
        for a in addrs:
            if a not in self.candidates and a != self.exclude_addr:
                self.candidates[a] = Candidate(a, None, _FAR)

    def _window(self) -> list[Candidate]:
        live = [c for c in self.candidates.values() if c.state is not State.FAILED]
        live.sort(key=lambda c: c.dist)
        return live[:self.k]

    @property
    def done(self) -> bool:
        if self.in_flight == 0 and (self.queries >= self.max_queries or not any(
                c.state is State.NEW for c in self._window())):
            return True
        window = self._window()
        return bool(window) and all(c.state is State.ANSWERED for c in window)

    def next_queries(self) -> list[Candidate]:
        """Candidates to query now (marked waiting); empty when none should be."""
        out: list[Candidate] = []
        if self.done:
            return out
        for c in self._window():
            if self.in_flight >= self.alpha or self.queries >= self.max_queries:
                break
            if c.state is State.NEW:
                c.state = State.WAITING
                self.in_flight += 1
                self.queries += 1
                out.append(c)
        return out

    def on_response(self, addr: Addr, sender: bytes, nodes: tuple[NodeInfo, ...],
                    values: tuple[Addr, ...], token: bytes | None) -> None:
        c = self.candidates.get(addr)
        if c is None or c.state is not State.WAITING:
            return
        self.in_flight -= 1
        self.responses += 1
        c.state = State.ANSWERED
        if c.id != sender:  # a seed told us its id, or a node changed its id
            c.id = sender
            c.dist = int.from_bytes(sender, "big") ^ int.from_bytes(self.target, "big")
        c.token = token
        for v in values:
            self.peers[v] = None
        self.add(nodes)

    def on_failure(self, addr: Addr) -> None:
        c = self.candidates.get(addr)
        if c is None or c.state is not State.WAITING:
            return
        self.in_flight -= 1
        c.state = State.FAILED

    def closest_answered(self) -> list[Candidate]:
        """The k nearest nodes that answered, nearest first (with their tokens)."""
        done = [c for c in self.candidates.values() if c.state is State.ANSWERED]
        done.sort(key=lambda c: c.dist)
        return done[:self.k]
