"""The services a simulated lab run has besides its peers: the tracker, the hub's HTTP
(web seed ranges in hybrid mode, whole-file downloads in cs mode) and the driver's BEP 11
peer exchange.

Why apart from :mod:`swarmhub.lab.simulate`: peers are the engine's business, these are
stand-ins for other programs (``swarmhub.hub.tracker``, the hub's origin, the web-seed
client loop of ``WebSeedDriver.loop``, ``PexDriver``), each modelled as the lab runs it: announces
cost a round trip to host 0, the hub's seeder dials every announcer, HTTP responses share
host 0's uplink with its peer connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from swarmhub.engine.pex import PexPeer, listen_addrs
from swarmhub.lab.netmodel import Pipe
from swarmhub.wire.extensions import PexMessage, encode_pex

if TYPE_CHECKING:
    from swarmhub.lab.simulate import End, Node, Simulation

__all__ = ["HTTP_HEADERS", "Services", "pex_wire_size"]

HTTP_HEADERS = 350  #: a range request or response's headers, about
_WS, _CS = "ws", "cs"


def pex_wire_size(msg: PexMessage) -> int:
    """Bytes of ``msg`` as a ut_pex message: length prefix, type, extension id and the
    bencoded payload. Counted, not encoded, when every peer is IPv4 (every simulated
    host is): a 6-byte compact entry and a flag byte per added peer, 6 bytes per dropped
    one (encoding it only to take its length was 1.2% of a run at N=1,000)."""
    added_addrs, dropped_addrs = msg.added, msg.dropped
    v6 = False  # (loops: an ``any`` over a generator was ~360 instructions an address)
    for host, _port in added_addrs:
        if ":" in host:
            v6 = True
    for host, _port in dropped_addrs:
        if ":" in host:
            v6 = True
    if v6:
        return 6 + len(encode_pex(msg))
    added, nflags, dropped = 6 * len(added_addrs), len(msg.added_flags), 6 * len(dropped_addrs)
    size = 2 + len("5:added") + len(str(added)) + 1 + added  # d ... e, then each entry
    if nflags:
        size += len("7:added.f") + len(str(nflags)) + 1 + nflags
    size += len("7:dropped") + len(str(dropped)) + 1 + dropped
    return 6 + size


class Services:
    """The tracker and HTTP of one :class:`~swarmhub.lab.simulate.Simulation`."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        #: one tuple per address: PEX hands every peer new ``(host, port)`` tuples, and
        #: each peer's dialer keeps up to ``schedule.MAX_CANDIDATES`` of them (a new tuple
        #: each was ~60 KB per peer at N=10,000); shared ones cost a reference. Typed
        #: ``object``: compiled, a ``tuple[str, int]`` is unboxed, and boxed anew (another
        #: tuple) wherever it is stored
        self._addrs: dict[object, object] = {}

    def announce(self, node: Node, event: str | None) -> None:
        lat = self.sim._lat(node, self.sim.source)
        self.sim.ev.after(lat, self._at_tracker, (node, event))

    def _at_tracker(self, arg: tuple[Node, str | None]) -> None:
        node, event = arg
        now = self.sim.ev.now
        if node.gone and event != "stopped":
            return
        swarm = node.swarm
        seeder = swarm is not None and swarm.complete
        tr = self.sim.tracker
        if event == "stopped":
            tr.remove(node.addr)
            return
        tr.register(node.addr, seeder, now)
        peers = tr.pick(node.addr, seeder, 50, now)
        seeds, leechers = tr.seeders, tr.leechers
        if self.sim.mode == "hybrid" and not self.sim.source.gone and node is not self.sim.source:
            src = self.sim.source.swarm
            assert src is not None
            src.add_peers([node.addr], now)  # the hub's seeder dials every announcer
            self.sim.flush(self.sim.source)
        self.sim.ev.after(self.sim._lat(node, self.sim.source), self._tracker_answer,
                          (node, peers, seeds, leechers))

    def _tracker_answer(self, arg: tuple[Node, list[tuple[str, int]], int, int]) -> None:
        node, peers, seeds, leechers = arg
        if node.gone or node.swarm is None:
            return
        tr = self.sim.tracker
        node.swarm.tracker_response(self.sim.ev.now, interval=max(tr.min_interval, tr.interval),
                                    peers=peers, seeds=seeds, leechers=leechers)
        self.sim.flush(node)

    # -- BEP 11 peer exchange, as PexDriver does it with the same PexPeer books -------------
    def pex_tick(self, node: Node) -> None:
        """Send each peer the changes in ``node``'s peer list when its PexPeer says so
        (first about 2 s after the handshake, then once a minute): ``PexDriver.tick``."""
        swarm = node.swarm
        if node.gone or swarm is None:
            return
        now = self.sim.ev.now
        current: dict[tuple[str, int], int] | None = None
        for end in list(node.ends):
            pex = end.pex
            if pex is None:
                pex = end.pex = PexPeer(now)
            if now < pex.due:
                continue
            if current is None:  # built only when some peer is due: once a minute
                current = listen_addrs(swarm.peers.values())
            ps = swarm.peers.get(end.uid)
            them = () if ps is None or ps.listen_addr is None else (ps.listen_addr,)
            msg = pex.poll(now, current, exclude=them)
            if msg is not None:
                size = pex_wire_size(msg)
                self.sim.net.send(end.out, size, (end.far, msg), self._pex_arrived)

    def _pex_arrived(self, arg: tuple[End, PexMessage]) -> None:
        """A ut_pex message reached ``end``'s host: ``PexDriver.received``."""
        end, msg = arg
        node = end.node
        if not end.open or node.gone or node.swarm is None:
            return
        now = self.sim.ev.now
        if end.pex is None:
            end.pex = PexPeer(now)
        addrs = end.pex.received(now, msg, own=node.swarm.dialer.own)
        if addrs:
            canon = self._addrs.setdefault
            shared = [canon(a, a) for a in cast("list[object]", addrs)]
            node.swarm.add_peers(cast("list[tuple[str, int]]", shared), now)
            self.sim.flush(node)

    def http_get(self, node: Node, ranges: list[tuple[int, int]], *, cs: bool = False) -> None:
        """Ask the hub for byte ranges; pieces (or the whole file) stream back."""
        lat = self.sim._lat(node, self.sim.source)
        self.sim.ev.after(lat, self._http_serve, (node, ranges, cs))

    def _http_serve(self, arg: tuple[Node, list[tuple[int, int]], bool]) -> None:
        node, ranges, cs = arg
        if self.sim.source.gone or node.gone:
            if not node.gone and not cs:
                node.ws_reserved.clear()
                if node.swarm is not None:
                    node.swarm.webseed_release(self.sim.ev.now, failed=True)
                    self.sim.flush(node)
                self.sim.ev.at(self.sim.ev.now + 5.0, self.ws_loop, node)
            return
        if node.ws_pipe is None:
            node.ws_pipe = Pipe(self.sim.source.up, node.down, self.sim._lat(node, self.sim.source),
                                self._http_arrived(node))
        pipe = node.ws_pipe
        if cs:
            self.sim.net.send(pipe, HTTP_HEADERS + self.sim.size, (_CS, self.sim.size))
            return
        self.sim.net.send(pipe, HTTP_HEADERS, (_WS, -1, 0, False))
        pl = self.sim.piece_length
        for k, (a, b) in enumerate(ranges):
            for index in range(a, b):
                size = min(pl, self.sim.size - index * pl)
                self.sim.net.send(pipe, size, (_WS, index, size, k == len(ranges) - 1
                                           and index == b - 1))

    def _http_arrived(self, node: Node) -> Callable[[tuple[Any, ...]], None]:
        def arrived(payload: tuple[Any, ...]) -> None:
            if node.gone:
                return
            now = self.sim.ev.now
            if payload[0] == _CS:
                node.got += payload[1]
                self.sim.http_bytes += payload[1]
                self.sim._completed(node)
                return
            _, index, size, last = payload
            if index >= 0:
                node.got += size
                self.sim.http_bytes += size
                cost = size / self.sim.hash_rate
                self.sim.ev.at(now + cost, self._ws_piece, (node, index, size, last))
        return arrived

    def _ws_piece(self, arg: tuple[Node, int, int, bool]) -> None:
        node, index, size, last = arg
        swarm = node.swarm
        if node.gone or swarm is None:
            return
        if not swarm.have[index]:
            node.webseed_bytes += size
            swarm.webseed_piece(index, size, self.sim.ev.now)
            self.sim.flush(node)
        if last:
            node.ws_reserved.clear()
            swarm.webseed_release(self.sim.ev.now)
            self.sim.flush(node)
            self.ws_loop(node)

    def ws_loop(self, node: Node) -> None:
        """The client's web-seed loop: fetch what the core picks, in 4 MiB ranges."""
        swarm = node.swarm
        if node.gone or swarm is None or swarm.complete or self.sim.source.gone:
            return
        batch = swarm.webseed_batch(self.sim.ev.now, node.ws_reserved)
        if not batch:  # as the driver: poll briefly until the core lets the web seed start
            wait = 0.5 if swarm.webseed_ready(self.sim.ev.now) else 0.02
            self.sim.ev.at(self.sim.ev.now + wait, self.ws_loop, node)
            return
        node.ws_reserved.update(batch)
        per = max(1, self.sim.settings.web_seed_request_size // self.sim.piece_length)
        ranges: list[tuple[int, int]] = []  # runs of the batch (it may have gaps), cut
        for i in sorted(batch):             # at the request size, as plan_requests does
            if ranges and ranges[-1][1] == i and i - ranges[-1][0] < per:
                ranges[-1] = (ranges[-1][0], i + 1)
            else:
                ranges.append((i, i + 1))
        self.http_get(node, ranges)
