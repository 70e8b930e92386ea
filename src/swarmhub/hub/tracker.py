"""HTTP tracker server: announce and scrape (BEP 3, 7, 23, 48) with a sans-IO core.

:class:`TrackerState` holds the swarms and turns parsed requests into bencoded bodies; it
takes the time as an argument and never touches sockets or logging, so a test drives it
with a fake clock. :func:`make_tracker_app` is the thin aiohttp adapter the hub mounts
(``/announce`` and ``/scrape``); ``python -m swarmhub.hub.tracker --listen HOST:PORT``
runs it alone (``--udp HOST:PORT`` adds the UDP tracker, :mod:`swarmhub.hub.udp_tracker`).

Query strings are parsed from the raw request target: aiohttp's ``request.query`` decodes
percent-escapes as UTF-8, which mangles binary info hashes. Errors are bencoded
``failure reason`` dicts sent with HTTP 200, which is what clients expect from trackers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from swarmhub.bencode import bencode
from swarmhub.errors import TrackerError
from swarmhub.hub.limits import address_key

__all__ = [
    "GRACE",
    "TRACKER_STATE_KEY",
    "AnnounceParams",
    "TrackerState",
    "default_peer_ttl",
    "failure_body",
    "main",
    "make_tracker_app",
    "parse_announce_query",
    "parse_scrape_query",
]

log = logging.getLogger(__name__)

#: Events a client may send. "paused" (BEP 21) is kept as a regular announce.
_EVENTS = {
    "": None,
    "started": "started",
    "completed": "completed",
    "stopped": "stopped",
    "paused": None,
}
#: Upper bound on info hashes in one scrape, so a request cannot make a huge answer.
MAX_SCRAPE_HASHES = 256
#: Upper bound on numbers in a query, well above any real byte count.
_MAX_COUNT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class AnnounceParams:
    """One validated announce. ``ip`` is the address peers will be told to dial."""

    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    uploaded: int = 0
    downloaded: int = 0
    left: int | None = None
    event: str | None = None
    numwant: int = 50
    compact: bool = True
    no_peer_id: bool = False
    key: bytes | None = None


def failure_body(reason: str) -> bytes:
    """The bencoded BEP 3 answer for a refused request."""
    return bencode({b"failure reason": reason.encode()})


def _split_query(query: bytes | str) -> list[tuple[str, bytes]]:
    """``k=v&k=v`` -> ``[(k, raw value bytes)]``; ``+`` stays a literal byte."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        # Most values (numbers, events) have no escapes: skip the unquoting call for them.
        raw = urllib.parse.unquote_to_bytes(value) if "%" in value else value.encode()
        pairs.append((urllib.parse.unquote(name), raw))
    return pairs


def _count(name: str, raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_COUNT:
        raise TrackerError(f"invalid {name}: expected a non-negative integer")
    return int(raw)


def _normalize_ip(text: str) -> str | None:
    """Canonical text of an IP address (IPv4-mapped IPv6 -> IPv4), ``None`` if invalid."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.scope_id:
            return None
    return str(addr)


def parse_announce_query(
    query: bytes | str, remote_ip: str, *, trust_ip: bool = False
) -> AnnounceParams:
    """Validate an announce query string; ``TrackerError`` carries the failure reason.

    ``ip=`` is ignored unless ``trust_ip`` (a proxy in front sets it): otherwise any
    client could put any address (8.8.8.8:53, a LAN host's ssh port) into a swarm.
    """
    values: dict[str, bytes] = {}
    for name, value in _split_query(query):
        values.setdefault(name, value)  # first occurrence wins, as in most trackers
    info_hash = values.get("info_hash")
    if info_hash is None or len(info_hash) != 20:
        raise TrackerError("invalid info_hash: must be 20 bytes")
    peer_id = values.get("peer_id")
    if peer_id is None or len(peer_id) != 20:
        raise TrackerError("invalid peer_id: must be 20 bytes")
    if "port" not in values:
        raise TrackerError("missing port")
    port = _count("port", values["port"])
    if not 0 < port <= 0xFFFF:
        raise TrackerError("invalid port: must be 1..65535")
    event_raw = values.get("event", b"").decode("latin-1")
    if event_raw not in _EVENTS:
        raise TrackerError(f"unknown event {event_raw!r}")
    ip = _normalize_ip(remote_ip)
    if ip is None:
        raise TrackerError("cannot tell the address of the announcing peer")
    if trust_ip and "ip" in values:
        # An explicit address is honoured only when it is a real IP (not a DNS name).
        ip = _normalize_ip(values["ip"].decode("latin-1")) or ip
    left = values.get("left")
    return AnnounceParams(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=ip,
        port=port,
        uploaded=_count("uploaded", values.get("uploaded", b"0")),
        downloaded=_count("downloaded", values.get("downloaded", b"0")),
        left=None if left is None else _count("left", left),
        event=_EVENTS[event_raw],
        numwant=_count("numwant", values.get("numwant", b"50")),
        compact=values.get("compact", b"1") != b"0",
        no_peer_id=values.get("no_peer_id", b"0") == b"1",
        key=values.get("key"),
    )


def parse_scrape_query(query: bytes | str) -> list[bytes]:
    """The info hashes of a scrape (none means "everything", BEP 48)."""
    hashes = [v for k, v in _split_query(query) if k == "info_hash"]
    if any(len(h) != 20 for h in hashes):
        raise TrackerError("invalid info_hash: must be 20 bytes")
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise TrackerError(f"too many info hashes: at most {MAX_SCRAPE_HASHES} per scrape")
    return list(dict.fromkeys(hashes))


@dataclass(slots=True)
class _Peer:
    peer_id: bytes
    ip: str
    port: int
    seeder: bool
    last_seen: float
    # The BEP 23/7 compact form (6 bytes IPv4, 18 IPv6), packed once when the peer first
    # announces: parsing the address text for every peer of every answer dominated the
    # tracker's CPU profile.
    compact: bytes


@dataclass(slots=True)
class _Swarm:
    # Keyed by (ip, port): a restarted client with a new peer_id replaces its old entry,
    # and a peer can only ever change the entry at its own address.
    peers: dict[tuple[str, int], _Peer] = field(default_factory=dict)
    seeders: int = 0
    downloaded: int = 0
    # Entries per source address (IPv6: per /64), least recently announced first: what
    # the per-address cap evicts from.
    by_source: dict[str, dict[tuple[str, int], None]] = field(default_factory=dict)

    def remove(self, addr: tuple[str, int]) -> None:
        old = self.peers.pop(addr, None)
        if old is None:
            return
        if old.seeder:
            self.seeders -= 1
        key = address_key(addr[0])
        mine = self.by_source.get(key)
        if mine is not None:
            mine.pop(addr, None)
            if not mine:
                del self.by_source[key]

    def touch(self, addr: tuple[str, int], cap: int) -> None:
        """Note that ``addr`` announced; past ``cap`` entries of its source, drop the stalest."""
        mine = self.by_source.setdefault(address_key(addr[0]), {})
        mine.pop(addr, None)
        mine[addr] = None
        while 0 < cap < len(mine):
            self.remove(next(iter(mine)))


#: Seconds past twice the interval before a silent peer is dropped (see :func:`default_peer_ttl`).
GRACE = 60.0


def default_peer_ttl(interval: float, grace: float = GRACE) -> float:
    """How long a peer that stopped announcing stays listed: two intervals plus ``grace``.

    One late re-announce, or one lost announce, keeps the entry; a client that left
    without ``stopped`` goes. Every swarm store (memory, Redis) uses this one default.
    """
    return 2.0 * interval + grace


class TrackerState:
    """Swarms of a tracker, sans-IO: ``announce``/``scrape`` take params and the time.

    ``allowed`` is the hub's whitelist hook: when given, an info hash it rejects gets
    "unregistered torrent". Peers that have not announced for ``peer_ttl`` seconds are
    dropped by :meth:`purge`: by default :func:`default_peer_ttl` of the interval.

    ``max_peers_per_ip`` (0 = no cap) bounds the entries one source address (IPv6: one
    /64) holds in a swarm; a new entry past the cap replaces that address's least
    recently announced one, so a flood from one host only ever displaces its own peers.
    A ``stopped`` event removes the entry at the sender's address only if the peer id
    matches too.
    """

    def __init__(
        self,
        *,
        interval: int = 1800,
        min_interval: int = 60,
        peer_ttl: float | None = None,
        grace: float = GRACE,
        max_numwant: int = 200,
        allowed: Callable[[bytes], bool] | None = None,
        rng: random.Random | None = None,
        max_peers_per_ip: int = 0,
    ) -> None:
        if interval <= 0 or min_interval <= 0 or max_numwant < 0 or max_peers_per_ip < 0:
            raise ValueError(
                "interval and min_interval must be positive, max_numwant and "
                "max_peers_per_ip >= 0"
            )
        self.max_peers_per_ip = max_peers_per_ip
        self.interval = interval
        self.min_interval = min_interval
        self.peer_ttl = default_peer_ttl(interval, grace) if peer_ttl is None else peer_ttl
        self.max_numwant = max_numwant
        self.allowed = allowed
        self._rng = rng or random.Random()
        self._swarms: dict[bytes, _Swarm] = {}

    def stats(self, info_hash: bytes) -> tuple[int, int, int]:
        """``(complete, downloaded, incomplete)`` of one torrent (zeros when unknown)."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return (0, 0, 0)
        return (swarm.seeders, swarm.downloaded, len(swarm.peers) - swarm.seeders)

    def file_stats(self, info_hashes: Iterable[bytes]) -> tuple[int, int]:
        """``(seeders, leechers)`` over several swarms of one file, each peer counted once:
        a hybrid client announces under both its v1 and its truncated v2 hash (and the hub's
        own seeder sits in the v1-only swarm too). A peer is its address; it counts as a
        seeder if it is one in any of the swarms.

        The largest swarm counts by its totals; only the others' peers are looked at (the
        hub's HTTP announce asks this of every announce, and its clients announce the v1
        hash only: the other swarms hold the hub's seeder and the odd v1-only client)."""
        swarms = [sw for ih in dict.fromkeys(info_hashes) if (sw := self._swarms.get(ih))]
        if not swarms:
            return 0, 0
        base = max(swarms, key=lambda sw: len(sw.peers))
        seeders, total = base.seeders, len(base.peers)
        # addresses past base's, and base's leechers found seeding elsewhere: seeder or not
        more: dict[tuple[str, int], bool] = {}
        for swarm in swarms:
            if swarm is base:
                continue
            for addr, peer in swarm.peers.items():
                known = base.peers.get(addr)
                if known is None and addr not in more:
                    more[addr] = peer.seeder
                    total += 1
                    seeders += peer.seeder
                elif peer.seeder and not more.get(addr, False) and not (known and known.seeder):
                    more[addr] = True
                    seeders += 1
        return seeders, total - seeders

    def announce(self, params: AnnounceParams, now: float) -> bytes:
        """Record one announce and return the bencoded answer (with peers to dial)."""
        if self.allowed is not None and not self.allowed(params.info_hash):
            return failure_body("unregistered torrent")
        peers, complete, incomplete = self._record(params, now)
        body: dict[bytes, object] = {
            b"interval": self.interval,
            b"min interval": self.min_interval,
            b"complete": complete,
            b"incomplete": incomplete,
        }
        if params.compact:
            body[b"peers"] = b"".join([p.compact for p in peers if len(p.compact) == 6])
            v6 = b"".join([p.compact for p in peers if len(p.compact) != 6])
            if v6:
                body[b"peers6"] = v6
        else:
            body[b"peers"] = [_peer_dict(p, params.no_peer_id) for p in peers]
        return bencode(body)

    def announce_compact(
        self, params: AnnounceParams, now: float, width: int
    ) -> tuple[bytes, int, int] | None:
        """Record one announce; ``(compact peers, seeders, leechers)`` for a UDP answer
        (BEP 15: only ``width``-byte entries, 6 for IPv4 or 18 for IPv6), or ``None``
        when the whitelist rejects the torrent. Peers are picked as for HTTP and then
        filtered, so a client in a mixed IPv4/IPv6 swarm may get fewer than it asked."""
        if self.allowed is not None and not self.allowed(params.info_hash):
            return None
        peers, complete, incomplete = self._record(params, now)
        blob = b"".join([p.compact for p in peers])
        if len(blob) != width * len(peers):  # a mixed swarm (rare): keep one family
            blob = b"".join([p.compact for p in peers if len(p.compact) == width])
        return blob, complete, incomplete

    def _record(self, params: AnnounceParams, now: float) -> tuple[list[_Peer], int, int]:
        swarm = self._swarms.get(params.info_hash)
        if swarm is None:
            swarm = self._swarms[params.info_hash] = _Swarm()
        addr = (params.ip, params.port)
        old = swarm.peers.get(addr)
        if params.event == "stopped" and old is not None and old.peer_id != params.peer_id:
            old = None  # another peer's entry at this address: not the sender's to remove
        seeder = params.left == 0 or (params.event == "completed" and params.left is None)
        was_seeder = old is not None and old.seeder
        # A download is complete on a "completed" event or when a known leecher reports
        # left=0 (aria2 with --seed-time=0 only ever sends "stopped" with left=0).
        if seeder and not was_seeder and (params.event == "completed" or old is not None):
            swarm.downloaded += 1
        if params.event == "stopped":
            if old is not None:
                swarm.remove(addr)
        else:
            if was_seeder:
                swarm.seeders -= 1
            if old is None:
                swarm.peers[addr] = _Peer(
                    params.peer_id, params.ip, params.port, seeder, now, _pack(*addr)
                )
            else:  # the key is (ip, port), so the packed address is still right
                old.peer_id, old.seeder, old.last_seen = params.peer_id, seeder, now
            if seeder:
                swarm.seeders += 1
            swarm.touch(addr, self.max_peers_per_ip)
        numwant = 0 if params.event == "stopped" else min(params.numwant, self.max_numwant)
        peers = self._pick(swarm, params, seeder, numwant)
        complete = swarm.seeders
        incomplete = len(swarm.peers) - complete
        if not swarm.peers and not swarm.downloaded:
            del self._swarms[params.info_hash]
        return peers, complete, incomplete

    def _pick(
        self, swarm: _Swarm, params: AnnounceParams, seeder: bool, numwant: int
    ) -> list[_Peer]:
        if numwant <= 0:
            return []
        # The announcing peer was just stored under its address with this peer_id, so the
        # peer_id test leaves it out too. A seeder has no use for other seeders; everyone
        # else gets both kinds.
        peer_id = params.peer_id
        if seeder:
            candidates = [p for p in swarm.peers.values() if not p.seeder and p.peer_id != peer_id]
        else:
            candidates = [p for p in swarm.peers.values() if p.peer_id != peer_id]
        if len(candidates) > numwant:
            return self._rng.sample(candidates, numwant)
        return candidates

    def scrape(self, info_hashes: Sequence[bytes], now: float) -> bytes:
        """Bencoded BEP 48 answer; no hashes means every (allowed) torrent."""
        del now  # stats do not depend on time; purge() handles expiry
        hashes: Iterable[bytes] = info_hashes or list(self._swarms)
        files = {
            ih: dict(zip((b"complete", b"downloaded", b"incomplete"), self.stats(ih), strict=True))
            for ih in hashes
            if self.allowed is None or self.allowed(ih)
        }
        return bencode({b"files": files})

    def purge(self, now: float) -> int:
        """Drop peers silent for longer than ``peer_ttl``; return how many went."""
        gone = 0
        deadline = now - self.peer_ttl
        for info_hash in list(self._swarms):
            swarm = self._swarms[info_hash]
            stale = [addr for addr, p in swarm.peers.items() if p.last_seen < deadline]
            for addr in stale:
                swarm.remove(addr)
            gone += len(stale)
            if not swarm.peers and not swarm.downloaded:
                del self._swarms[info_hash]
        return gone

    def drop(self, info_hash: bytes, ip: str, port: int, peer_id: bytes) -> bool:
        """Remove one peer now (its access was revoked); only if it is still that peer."""
        swarm = self._swarms.get(info_hash)
        peer = None if swarm is None else swarm.peers.get((ip, port))
        if swarm is None or peer is None or peer.peer_id != peer_id:
            return False
        swarm.remove((ip, port))
        return True

    def __len__(self) -> int:
        """Number of torrents with peers or a download count."""
        return len(self._swarms)


def _pack(ip: str, port: int) -> bytes:
    return ipaddress.ip_address(ip).packed + port.to_bytes(2, "big")


def _peer_dict(peer: _Peer, no_peer_id: bool) -> dict[bytes, object]:
    d: dict[bytes, object] = {b"ip": peer.ip.encode(), b"port": peer.port}
    if not no_peer_id:
        d[b"peer id"] = peer.peer_id
    return d


# --------------------------------------------------------------------------- aiohttp app

TRACKER_STATE_KEY = web.AppKey("tracker_state", TrackerState)
_PLAIN = "text/plain"


def _raw_query(request: web.Request) -> str:
    # raw_path is the request target exactly as sent, percent-escapes intact.
    return request.raw_path.partition("?")[2]


async def _announce(request: web.Request) -> web.Response:
    state = request.app[TRACKER_STATE_KEY]
    loop = asyncio.get_running_loop()
    try:
        params = parse_announce_query(_raw_query(request), request.remote or "")
    except TrackerError as exc:
        return web.Response(body=failure_body(str(exc)), content_type=_PLAIN)
    body = state.announce(params, loop.time())
    return web.Response(body=body, content_type=_PLAIN)


async def _scrape(request: web.Request) -> web.Response:
    state = request.app[TRACKER_STATE_KEY]
    try:
        hashes = parse_scrape_query(_raw_query(request))
    except TrackerError as exc:
        return web.Response(body=failure_body(str(exc)), content_type=_PLAIN)
    body = state.scrape(hashes, asyncio.get_running_loop().time())
    return web.Response(body=body, content_type=_PLAIN)


def make_tracker_app(state: TrackerState, *, purge_every: float | None = None) -> web.Application:
    """An aiohttp app with ``GET /announce`` and ``GET /scrape`` over ``state``.

    While the app runs, stale peers are purged every ``purge_every`` seconds (default:
    ``state.min_interval``). The state's clock is the event loop's monotonic clock.
    """
    app = web.Application()
    app[TRACKER_STATE_KEY] = state
    app.router.add_get("/announce", _announce)
    app.router.add_get("/scrape", _scrape)
    period = float(purge_every if purge_every is not None else state.min_interval)

    async def purger(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            clock = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(period)
                gone = state.purge(clock.time())
                if gone:
                    log.debug("purged %d stale peers", gone)

        task = asyncio.create_task(loop(), name="tracker-purge")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(purger)
    return app


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m swarmhub.hub.tracker --listen 127.0.0.1:6969``: run until killed."""
    parser = argparse.ArgumentParser(description="standalone swarmhub HTTP tracker")
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 6969),
        help="HOST:PORT to listen on (default 127.0.0.1:6969)",
    )
    parser.add_argument(
        "--interval", type=int, default=1800, help="re-announce interval handed to clients, seconds"
    )
    parser.add_argument(
        "--min-interval", type=int, default=60, help="minimum re-announce interval, seconds"
    )
    parser.add_argument(
        "--udp",
        type=_parse_listen,
        default=None,
        help="also answer BEP 15 UDP announces on HOST:PORT (same swarms; default off)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, port = args.listen
    state = TrackerState(interval=args.interval, min_interval=args.min_interval)
    app = make_tracker_app(state)
    if args.udp is not None:
        udp_host, udp_port = args.udp

        async def udp(app: web.Application) -> AsyncIterator[None]:
            from swarmhub.hub.udp_tracker import UdpTrackerCore, start_udp_tracker

            server = await start_udp_tracker(UdpTrackerCore(state), udp_host, udp_port)
            log.info("UDP tracker on %s:%d", *server.address)
            yield
            server.close()

        app.cleanup_ctx.append(udp)
    # No per-request access log: formatting and writing a line per announce cost about a
    # quarter of the tracker's CPU under load (opentracker does not log announces either).
    web.run_app(app, host=host, port=port, access_log=None)


if __name__ == "__main__":
    main()
