"""The DHT node's protocol state, sans-IO: datagrams and time in, datagrams and events out.

Like h2's ``data_to_send``, :class:`DhtCore` never touches a socket or a clock: the driver
feeds it :meth:`~DhtCore.receive` (a datagram and its source), calls :meth:`~DhtCore.tick`
with the time, and sends whatever :meth:`~DhtCore.take_datagrams` returns. Finished lookups
come out of :meth:`~DhtCore.take_events`.

Incoming queries are ``rpc_*`` methods, outgoing ones ``call_*`` (the split of kademlia's
``protocol.py``). Every response updates the routing table; every timeout counts against
the node. A query we cannot parse is answered with a 203 error only when it carried a
transaction id; anything else malformed, oversized, unsolicited or over the per-address
rate limit is dropped and counted.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from swarmhub.discovery.dht import krpc
from swarmhub.discovery.dht.krpc import (
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Query,
    Response,
)
from swarmhub.discovery.dht.lookup import Lookup, LookupKind
from swarmhub.discovery.dht.nodeid import is_local, node_id_for_ip, node_id_matches_ip
from swarmhub.discovery.dht.routing import RoutingTable
from swarmhub.discovery.dht.storage import PeerStore, QueryLimiter, Tokens

__all__ = ["Config", "DhtCore", "LookupDone", "Stats"]

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Config:
    """Knobs of one node; the defaults follow BEP 5 and libtorrent's."""

    k: int = 8
    alpha: int = 3
    query_timeout: float = 3.0
    max_pending: int = 512
    refresh_check: float = 60.0
    bootstrap_retry: float = 30.0
    enforce_node_id: bool = False  # BEP 42: keep non-matching ids out of the table
    read_only: bool = False  # BEP 43
    query_rate: float = 20.0
    query_burst: float = 50.0
    version: bytes = b"SH\x01\x00"


@dataclass(frozen=True, slots=True)
class LookupDone:
    """A lookup finished. ``announced``: announce_peer queries sent after it;
    ``started``/``first_peers``/``finished``: times (the caller's clock) it began, first
    heard of a peer (None: never) and ended, for latency figures."""

    lookup_id: int
    target: bytes
    kind: LookupKind
    peers: tuple[Addr, ...]
    nodes: tuple[NodeInfo, ...]
    queries: int
    responses: int
    announced: int
    started: float = 0.0
    first_peers: float | None = None
    finished: float = 0.0


@dataclass(slots=True)
class Stats:
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    queries_in: Counter[str] = field(default_factory=Counter)
    queries_out: Counter[str] = field(default_factory=Counter)
    responses_in: int = 0
    errors_in: int = 0
    timeouts: int = 0
    malformed: int = 0
    rate_limited: int = 0
    unsolicited: int = 0
    bad_tokens: int = 0
    lookups_started: int = 0
    lookups_done: int = 0


@dataclass(slots=True)
class _Pending:
    addr: Addr
    method: str
    deadline: float
    lookup: int | None


class DhtCore:
    def __init__(self, node_id: bytes, rng: random.Random, now: float, *,
                 config: Config | None = None, bootstrap: list[Addr] | None = None,
                 own_addr: Addr | None = None) -> None:
        self.config = c = config or Config()
        self.node_id = node_id
        self.own_addr = own_addr
        self.rng = rng
        self.table = RoutingTable(node_id, k=c.k, now=now)
        self.tokens = Tokens(rng, now)
        self.store = PeerStore()
        self.limiter = QueryLimiter(rate=c.query_rate, burst=c.query_burst)
        self.bootstrap_addrs = list(bootstrap or [])
        #: Nodes from a saved routing table: asked first when bootstrapping.
        self.known_nodes: list[NodeInfo] = []
        self.stats = Stats()
        self.ip_votes: Counter[str] = Counter()
        self._pending: dict[bytes, _Pending] = {}
        self._next_tid = rng.randrange(1 << 16)
        self._lookups: dict[int, tuple[Lookup, int | None]] = {}  # id -> (lookup, port)
        self._next_lookup = 1
        self._times: dict[int, tuple[float, float | None]] = {}  # started, first peers
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[LookupDone] = []
        self._next_refresh = now + c.refresh_check
        self._next_bootstrap = now

    # -- driver interface ----------------------------------------------------------------

    def take_datagrams(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[LookupDone]:
        out, self._events = self._events, []
        return out

    @property
    def external_ip(self) -> str | None:
        """The address most responders saw us at (BEP 42 ``ip``), once three agree."""
        if not self.ip_votes:
            return None
        ip, n = self.ip_votes.most_common(1)[0]
        return ip if n >= 3 else None

    def adopt_external_id(self) -> bool:
        """BEP 42: once responders agree on a public address our id does not match, take
        an id derived from it (so BEP 42-enforcing nodes keep us) and rebuild the table
        around it. Returns whether the id changed; local addresses never change it."""
        ip = self.external_ip
        if ip is None or is_local(ip) or node_id_matches_ip(self.node_id, ip):
            return False
        self.change_id(node_id_for_ip(ip, self.rng))
        return True

    def change_id(self, node_id: bytes) -> None:
        old = self.table
        self.node_id = node_id
        self.table = RoutingTable(node_id, k=old.k, max_fails=old.max_fails)
        for e in sorted(old, key=lambda e: e.last_response or 0.0):
            if e.last_response is not None:
                self.table.heard_from(e.id, e.addr, e.last_response, response=True)

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        try:
            msg = krpc.decode(data, addr)
        except KrpcError as exc:
            self.stats.malformed += 1
            if exc.reply and exc.tid is not None and self.limiter.allow(addr[0], now):
                self._send(Error(exc.tid, exc.code, str(exc)[:100]), addr)
            return
        if isinstance(msg, Query):
            if not self.limiter.allow(addr[0], now):
                self.stats.rate_limited += 1
                return
            self._on_query(msg, addr, now)
        else:
            self._on_reply(msg, addr, now)

    def tick(self, now: float) -> None:
        """Expire queries, rotate token secrets, refresh stale buckets, re-bootstrap."""
        for tid, p in list(self._pending.items()):
            if p.deadline <= now:
                del self._pending[tid]
                self.stats.timeouts += 1
                if p.method != "bootstrap":
                    entry = self._by_addr(p.addr)
                    if entry is not None:
                        self.table.failed(entry)
                if p.lookup is not None:
                    self._lookup_failed(p.lookup, p.addr, now)
        for lid in list(self._lookups):  # a lookup held back by max_pending goes on
            self._pump(lid, now)
        self.tokens.tick(now)
        if now >= self._next_refresh:
            self._next_refresh = now + self.config.refresh_check
            self.store.expire(now)
            for target in self.table.refresh_targets(now, self.rng)[:4]:
                self.find_node(target, now)
        if len(self.table) < self.config.k and self.bootstrap_addrs \
                and now >= self._next_bootstrap:
            self.bootstrap(now)

    # -- starting work ---------------------------------------------------------------------

    def bootstrap(self, now: float) -> int:
        """Look up our own id from the routing table and the bootstrap addresses."""
        self._next_bootstrap = now + self.config.bootstrap_retry
        lk = Lookup(self.node_id, LookupKind.FIND_NODE)
        lk.add(self.known_nodes)
        return self._start(lk, now, self.bootstrap_addrs, None)

    def find_node(self, target: bytes, now: float, seeds: list[Addr] | None = None) -> int:
        return self._start(Lookup(target, LookupKind.FIND_NODE), now, seeds, None)

    def get_peers(self, info_hash: bytes, now: float, *, announce_port: int | None = None,
                  seeds: list[Addr] | None = None) -> int:
        """Find peers for ``info_hash``; with ``announce_port`` (0: implied, our UDP port)
        announce ourselves to the k nearest nodes that answered."""
        return self._start(Lookup(info_hash, LookupKind.GET_PEERS), now, seeds, announce_port)

    def call_ping(self, addr: Addr, now: float) -> None:
        self._query(Ping(self._tid(), self.node_id), addr, now, None)

    def _start(self, lk: Lookup, now: float, seeds: list[Addr] | None,
               port: int | None) -> int:
        lk.k, lk.alpha = self.config.k, self.config.alpha
        lk.exclude_id, lk.exclude_addr = self.node_id, self.own_addr
        lk.candidates = {a: c for a, c in lk.candidates.items()
                         if c.id != self.node_id and a != self.own_addr}
        lk.add([NodeInfo(e.id, e.addr) for e in self.table.closest(lk.target, 2 * lk.k)])
        lk.add_seeds(seeds or ([] if len(self.table) else self.bootstrap_addrs))
        lid = self._next_lookup
        self._next_lookup += 1
        self._lookups[lid] = (lk, port)
        self._times[lid] = (now, None)
        self.stats.lookups_started += 1
        self._pump(lid, now)
        return lid

    # -- incoming queries (rpc_*) -------------------------------------------------------------

    def _on_query(self, q: Query, addr: Addr, now: float) -> None:
        name = type(q).__name__
        self.stats.queries_in[name] += 1
        if isinstance(q, Ping):
            reply: Response | Error = Response(q.tid, self.node_id, ip=addr)
        elif isinstance(q, FindNode):
            reply = self.rpc_find_node(q, addr)
        elif isinstance(q, GetPeers):
            reply = self.rpc_get_peers(q, addr, now)
        elif isinstance(q, AnnouncePeer):
            reply = self.rpc_announce_peer(q, addr, now)
        self._send(reply, addr)
        if not q.read_only and self._acceptable(q.sender, addr):
            known = self.table.get(q.sender) is not None
            if self.table.heard_from(q.sender, addr, now, response=False) and not known:
                self.call_ping(addr, now)  # verify before we hand it to anyone

    def rpc_find_node(self, q: FindNode, addr: Addr) -> Response:
        return Response(q.tid, self.node_id, nodes=self._nodes_for(q.target), ip=addr)

    def rpc_get_peers(self, q: GetPeers, addr: Addr, now: float) -> Response:
        values = tuple(self.store.get(q.info_hash, now, self.rng))
        return Response(q.tid, self.node_id, nodes=self._nodes_for(q.info_hash),
                        values=values, token=self.tokens.make(addr[0]), ip=addr)

    def rpc_announce_peer(self, q: AnnouncePeer, addr: Addr, now: float) -> Response | Error:
        if not self.tokens.check(q.token, addr[0]):
            self.stats.bad_tokens += 1
            return Error(q.tid, krpc.ERROR_PROTOCOL, "bad token")
        self.store.add(q.info_hash, (addr[0], q.port), now)
        return Response(q.tid, self.node_id, ip=addr)

    def _nodes_for(self, target: bytes) -> tuple[NodeInfo, ...]:
        return tuple(NodeInfo(e.id, e.addr) for e in self.table.closest(target, verified=True))

    def _acceptable(self, node_id: bytes, addr: Addr) -> bool:
        return not self.config.enforce_node_id or node_id_matches_ip(node_id, addr[0])

    # -- replies to our queries ------------------------------------------------------------

    def _on_reply(self, msg: Response | Error, addr: Addr, now: float) -> None:
        p = self._pending.get(msg.tid)
        if p is None or p.addr != addr:
            self.stats.unsolicited += 1  # late, spoofed or never asked
            return
        del self._pending[msg.tid]
        if isinstance(msg, Error):
            self.stats.errors_in += 1
            if p.lookup is not None:
                self._lookup_failed(p.lookup, addr, now)
            return
        self.stats.responses_in += 1
        if msg.ip is not None:
            self.ip_votes[msg.ip[0]] += 1
            if len(self.ip_votes) > 64:
                self.ip_votes = Counter(dict(self.ip_votes.most_common(8)))
        if msg.sender != self.node_id and self._acceptable(msg.sender, addr):
            kept = self.table.heard_from(msg.sender, addr, now, response=True)
            if not kept:
                stale = self.table.ping_candidate(msg.sender, now)
                if stale is not None and not self._pinging(stale.addr):
                    self.call_ping(stale.addr, now)
        if p.lookup is not None:
            entry = self._lookups.get(p.lookup)
            if entry is not None:
                entry[0].on_response(addr, msg.sender, msg.nodes, msg.values, msg.token)
                if msg.values and self._times.get(p.lookup, (0.0, 0.0))[1] is None:
                    self._times[p.lookup] = (self._times[p.lookup][0], now)
                self._pump(p.lookup, now)

    def _lookup_failed(self, lid: int, addr: Addr, now: float) -> None:
        entry = self._lookups.get(lid)
        if entry is not None:
            entry[0].on_failure(addr)
            self._pump(lid, now)

    def _pump(self, lid: int, now: float) -> None:
        lk, port = self._lookups[lid]
        method = "find_node" if lk.kind is LookupKind.FIND_NODE else "get_peers"
        if len(self._pending) < self.config.max_pending:
            for c in lk.next_queries():
                q: Query = FindNode(self._tid(), self.node_id, lk.target) \
                    if lk.kind is LookupKind.FIND_NODE \
                    else GetPeers(self._tid(), self.node_id, lk.target)
                self._query(q, c.addr, now, lid, method if c.id else "bootstrap")
        if not lk.done:
            return
        del self._lookups[lid]
        announced = 0
        if port is not None:
            for c in lk.closest_answered():
                if c.token is not None:
                    q = AnnouncePeer(self._tid(), self.node_id, lk.target, port or 1, c.token,
                                     implied_port=port == 0)
                    self._query(q, c.addr, now, None)
                    announced += 1
        self.stats.lookups_done += 1
        started, first = self._times.pop(lid, (now, None))
        self._events.append(LookupDone(
            lid, lk.target, lk.kind, tuple(lk.peers),
            tuple(NodeInfo(c.id, c.addr) for c in lk.closest_answered() if c.id),
            lk.queries, lk.responses, announced, started, first, now))

    # -- plumbing ------------------------------------------------------------------------

    def _query(self, q: Query, addr: Addr, now: float, lookup: int | None,
               method: str | None = None) -> None:
        self._pending[q.tid] = _Pending(addr, method or type(q).__name__,
                                        now + self.config.query_timeout, lookup)
        self.stats.queries_out[type(q).__name__] += 1
        self._out.append((krpc.encode(q, our_id=self.node_id, version=self.config.version,
                                      read_only=self.config.read_only), addr))
        self.stats.packets_out += 1
        self.stats.bytes_out += len(self._out[-1][0])

    def _send(self, msg: Response | Error, addr: Addr) -> None:
        data = krpc.encode(msg, our_id=self.node_id, version=self.config.version)
        self._out.append((data, addr))
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)

    def _tid(self) -> bytes:
        for _ in range(1 << 16):
            self._next_tid = (self._next_tid + 1) & 0xFFFF
            tid = self._next_tid.to_bytes(2, "big")
            if tid not in self._pending:
                return tid
        raise AssertionError("no free transaction id")  # max_pending < 65536

    def _pinging(self, addr: Addr) -> bool:
        return any(p.addr == addr and p.method == "Ping" for p in self._pending.values())

    def _by_addr(self, addr: Addr) -> bytes | None:
        return self.table.id_at(addr)
