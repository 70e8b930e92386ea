"""BEP 14 Local Service Discovery: find peers on the local network by UDP multicast.

A peer multicasts ``BT-SEARCH`` announces (HTTP-like text, one or more ``Infohash``
headers, its listening ``Port``) to 239.192.152.143:6771; whoever is in the same swarm
hears it and dials the sender's address at that port. No tracker, no DHT, no address
typed by hand: two machines on one LAN find each other.

The codec and the rate limits (:class:`LsdState`) are sans-IO and take a clock, so the
rules are tested on state; :class:`LsdSource` is the small asyncio driver that owns the
socket and feeds a session's torrents, the same way :class:`DhtSource` does. What the
rules are, and why:

* announces go out in a burst (a few datagrams at once, when torrents are added) and then
  at most one per ``refill`` seconds (BEP 14: no more than one a minute, to avoid
  multicast storms); each torrent is announced again every ``interval`` (5 min), many
  hashes packed in one datagram of at most 1400 bytes;
* a random ``cookie`` in our announces lets us drop our own (multicast loops back);
* received datagrams are dropped when malformed or oversized, and a source that floods is
  rate-limited (per-source and total budgets, bounded memory); the same peer is handed to
  a torrent at most once per ``repeat`` (a minute: BEP 14's announce rate), so a replayed
  announce cannot make us redial, while a peer that restarts is heard again soon;
* private torrents (BEP 27) are never announced nor fed from LSD;
* a magnet link has no torrent yet, so nobody can dial it: :meth:`LsdSource.peers_for`
  announces its hashes and waits for an announce of the swarm, and a peer that hears a
  newcomer in one of its swarms announces that swarm again at once (at most once per
  ``answer_gap`` per swarm, within the send budget) instead of leaving it to wait 5 min.

Multicast leaves the machine: tests only ever run it inside network namespaces they
create (``SWARMHUB_LSD=0`` everywhere else).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from swarmhub._records import value_methods
from swarmhub.discovery.keys import public_hashes

__all__ = [
    "GROUP4",
    "MAX_DATAGRAM",
    "Announce",
    "LsdSource",
    "LsdState",
    "decode_announce",
    "encode_announces",
    "lsd_for",
]

log = logging.getLogger(__name__)

Addr = tuple[str, int]

#: BEP 14's IPv4 group (org-local scope) and port.
GROUP4: Addr = ("239.192.152.143", 6771)
#: Largest announce we send (BEP 14: avoid fragmentation) and accept (a little slack).
MAX_DATAGRAM = 1400
_MAX_ACCEPT = 2048
_MAX_HASHES_IN = 64
_MAX_COOKIE = 64
_REQUEST_LINE = b"BT-SEARCH * HTTP/1.1"


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Announce:
    """One decoded announce: the sender listens on ``port`` and is in these swarms."""

    port: int
    info_hashes: tuple[bytes, ...]
    cookie: str | None = None


def _head(host: str, port: int) -> bytes:
    return f"BT-SEARCH * HTTP/1.1\r\nHost: {host}\r\nPort: {port}\r\n".encode()


def encode_announces(
    info_hashes: Iterable[bytes], port: int, cookie: str | None, group: Addr = GROUP4
) -> list[bytes]:
    """Announces for ``info_hashes`` (20 bytes each), as few datagrams as fit 1400 bytes."""
    host = f"[{group[0]}]:{group[1]}" if ":" in group[0] else f"{group[0]}:{group[1]}"
    head = _head(host, port)
    tail = (f"cookie: {cookie}\r\n" if cookie else "").encode() + b"\r\n\r\n"
    out: list[bytes] = []
    lines: list[bytes] = []
    for h in info_hashes:
        if len(h) != 20:
            raise ValueError(f"an info hash is 20 bytes, got {len(h)}")
        line = b"Infohash: " + h.hex().encode() + b"\r\n"
        if lines and len(head) + sum(map(len, lines)) + len(line) + len(tail) > MAX_DATAGRAM:
            out.append(head + b"".join(lines) + tail)
            lines = []
        lines.append(line)
    if lines:
        out.append(head + b"".join(lines) + tail)
    return out


def decode_announce(data: bytes) -> Announce | None:
    """The announce in ``data``, or None when it is not a well-formed BT-SEARCH (oversized,
    no valid port, no valid info hash, not ASCII). Unknown headers are ignored (BEP 14)."""
    if len(data) > _MAX_ACCEPT:
        return None
    lines = data.split(b"\r\n")
    if lines[0] != _REQUEST_LINE:
        return None
    port: int | None = None
    cookie: str | None = None
    hashes: dict[bytes, None] = {}
    for raw in lines[1:]:
        if not raw:
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            return None
        key = name.strip().lower()
        val = value.strip()
        if key == b"port":
            if not (val.isdigit() and len(val) <= 5 and 0 < int(val) < 65536):
                return None
            port = int(val)
        elif key == b"infohash":
            if len(val) == 40:
                with contextlib.suppress(ValueError):
                    hashes[bytes.fromhex(val.decode("ascii"))] = None
            if len(hashes) > _MAX_HASHES_IN:
                return None
        elif key == b"cookie":
            if len(val) > _MAX_COOKIE or not val.isascii():
                return None
            cookie = val.decode("ascii")
    if port is None or not hashes:
        return None
    return Announce(port, tuple(hashes), cookie)


class _Bucket:
    """Token bucket: ``burst`` tokens, one more every ``per`` seconds."""

    __slots__ = ("burst", "per", "stamp", "tokens")

    def __init__(self, burst: float, per: float, now: float) -> None:
        self.burst = burst
        self.per = per
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.per)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LsdState:
    """What to send and which heard peers to use, with every limit; no I/O.

    ``due(hashes, now)`` gives the datagrams to multicast now; ``received(data, src, now)``
    gives ``(info_hash, peer address)`` pairs worth dialing.
    """

    def __init__(
        self,
        *,
        cookie: str | None = None,
        interval: float = 300.0,
        repeat: float = 60.0,
        answer_gap: float = 10.0,
        burst: int = 3,
        refill: float = 60.0,
        per_source: tuple[int, float] = (5, 10.0),
        total: tuple[int, float] = (50, 0.1),
        max_sources: int = 1024,
        max_recent: int = 4096,
        now: float = 0.0,
    ) -> None:
        self.cookie = cookie or secrets.token_hex(8)
        self.interval = interval
        self.repeat = repeat
        self.answer_gap = answer_gap
        self._answered: dict[bytes, float] = {}
        self._send = _Bucket(burst, refill, now)
        self._per_source = per_source
        self._total = _Bucket(total[0], total[1], now)
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_sources = max_sources
        self._announced: dict[bytes, float] = {}
        self._recent: OrderedDict[tuple[bytes, Addr], float] = OrderedDict()
        self._max_recent = max_recent
        #: counters for status and tests
        self.sent = 0
        self.dropped = 0
        self.own = 0
        self.limited = 0

    def due(self, hashes: Iterable[bytes], port: int, now: float,
            group: Addr = GROUP4) -> list[bytes]:
        """Datagrams announcing the hashes not announced for ``interval``: never-announced
        ones first, packed; nothing when the send budget is spent (they stay due)."""
        wanted = list(dict.fromkeys(hashes))
        for h in list(self._announced):
            if h not in wanted:
                del self._announced[h]  # a removed torrent is announced afresh if re-added
                self._answered.pop(h, None)
        due = [h for h in wanted if now - self._announced.get(h, -1e18) >= self.interval]
        due.sort(key=lambda h: self._announced.get(h, -1e18))
        out: list[bytes] = []
        packed = encode_announces(due, port, self.cookie, group)
        for datagram in packed:
            if not self._send.take(now):
                break
            out.append(datagram)
            n = datagram.count(b"\r\nInfohash: ")
            for h in due[:n]:
                self._announced[h] = now
            due = due[n:]
        self.sent += len(out)
        return out

    def answer(self, info_hash: bytes, now: float) -> bool:
        """A newcomer announced a swarm we are in: make it due again (our announce tells
        the newcomer where we are: it was not there for the last one), at most once per
        ``answer_gap`` per swarm; the send budget still applies. True if made due."""
        if info_hash not in self._announced:
            return False  # not ours, or due anyway
        if now - self._answered.get(info_hash, -1e18) < self.answer_gap:
            return False
        self._answered[info_hash] = now
        del self._announced[info_hash]
        return True

    def received(self, data: bytes, src: Addr, now: float) -> list[tuple[bytes, Addr]]:
        """Peers announced in ``data`` from ``src``: ``(info_hash, (src ip, port))`` not
        already handed out within ``repeat``; [] for our own, malformed or limited."""
        ip = src[0]
        bucket = self._sources.get(ip)
        if bucket is None:
            bucket = _Bucket(self._per_source[0], self._per_source[1], now)
            self._sources[ip] = bucket
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(ip)
        if not (bucket.take(now) and self._total.take(now)):
            self.limited += 1
            return []
        ann = decode_announce(data)
        if ann is None:
            self.dropped += 1
            return []
        if ann.cookie == self.cookie:
            self.own += 1
            return []
        out = []
        for h in ann.info_hashes:
            key = (h, (ip, ann.port))
            seen = self._recent.get(key)
            if seen is not None and now - seen < self.repeat:
                continue
            self._recent[key] = now
            self._recent.move_to_end(key)
            if len(self._recent) > self._max_recent:
                self._recent.popitem(last=False)
            out.append(key)
        return out


# -- asyncio driver -------------------------------------------------------------------------


class _Session(Protocol):
    @property
    def torrents(self) -> Mapping[bytes, Any]: ...
    @property
    def listen_port(self) -> int: ...


#: The 20-byte hashes a torrent is announced under (v1, truncated v2); none if private.
lsd_hashes = public_hashes


def _interfaces(host: str) -> list[tuple[str, int]]:
    """(name, index) of the interfaces to announce on: the one holding ``host`` when the
    session listens on one address, else every interface but loopback; none when it
    listens on loopback only (no neighbour could dial that)."""
    names = [(n, i) for i, n in socket.if_nameindex() if n != "lo"]
    if host in ("", "0.0.0.0", "::"):
        return names
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return []
    return [(n, i) for n, i in names if host in _addrs_of(n)] or names


def _addrs_of(ifname: str) -> list[str]:
    """IPv4 address of ``ifname`` (SIOCGIFADDR), [] when it has none."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return []
    return [socket.inet_ntoa(packed[20:24])]


def _mreqn(group: str, ifindex: int) -> bytes:
    return socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("LSD socket: %r", exc)


class LsdSource:
    """Multicast announces for a session's public torrents and feed heard peers to them.

    Looks at ``session.torrents`` once a ``tick``; a torrent added later is announced
    within a tick (budget permitting). Peers go in through ``torrent.add_peers``.
    """

    def __init__(self, session: _Session, *, host: str = "0.0.0.0", group: Addr = GROUP4,
                 state: LsdState | None = None, tick: float = 0.25, ttl: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.host = host
        self.group = group
        self.clock = clock
        self.state = state or LsdState(now=clock())
        self.tick = tick
        self.ttl = ttl
        self.found: dict[bytes, int] = {}
        self.interfaces: list[tuple[str, int]] = []
        #: Hashes of magnet links being resolved (no torrent yet): peers heard for them.
        self._watched: dict[bytes, list[Addr]] = {}
        self._heard = asyncio.Event()
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Open the socket and join the group on our interfaces (OSError when none works)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self.group)  # the group address: only LSD datagrams reach us
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            for name, index in _interfaces(self.host):
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                    _mreqn(self.group[0], index))
                except OSError as exc:
                    log.debug("LSD: cannot join on %s: %s", name, exc)
                    continue
                self.interfaces.append((name, index))
            if not self.interfaces:
                raise OSError("LSD: no interface could join the multicast group")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self._on_datagram), sock=sock)
        self._transport = transport
        log.info("LSD on %s", ", ".join(n for n, _ in self.interfaces))

    def _targets(self) -> dict[bytes, list[Any]]:
        out: dict[bytes, list[Any]] = {}
        for torrent in list(self.session.torrents.values()):
            for h in lsd_hashes(torrent.meta):
                out.setdefault(h, []).append(torrent)
        return out

    def _on_datagram(self, data: bytes, src: Addr) -> None:
        now = self.clock()
        pairs = self.state.received(data, src, now)
        if not pairs:
            return
        targets = self._targets()
        by_torrent: dict[int, tuple[Any, list[Addr]]] = {}
        for h, addr in pairs:
            watched = self._watched.get(h)
            if watched is not None and addr not in watched:
                watched.append(addr)
                self._heard.set()
            if targets.get(h):
                self.state.answer(h, now)
            for torrent in targets.get(h, []):
                addrs = by_torrent.setdefault(id(torrent), (torrent, []))[1]
                if addr not in addrs:  # a hybrid is announced under two hashes
                    addrs.append(addr)
        for torrent, addrs in by_torrent.values():
            key = lsd_hashes(torrent.meta)[0]
            self.found[key] = self.found.get(key, 0) + len(addrs)
            log.info("LSD: %s for %s", addrs, torrent.meta.name)
            torrent.add_peers(addrs)

    async def peers_for(self, hashes: list[bytes], timeout: float) -> list[Addr]:
        """Peers of a magnet link's swarm heard within ``timeout`` s ([] if none): its
        hashes are announced like a torrent's meanwhile (so its peers answer)."""
        for h in hashes:
            self._watched.setdefault(h, [])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                found = list(dict.fromkeys(a for h in hashes for a in self._watched[h]))
                left = deadline - loop.time()
                if found or left <= 0:
                    return found
                self._heard.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._heard.wait(), left)
        finally:
            for h in hashes:
                self._watched.pop(h, None)

    def announce_now(self) -> int:
        """Send what is due; the number of datagrams sent (per interface)."""
        port = self.session.listen_port
        if self._sock is None or not port:
            return 0
        hashes = [*self._targets(), *self._watched]
        datagrams = self.state.due(hashes, port, self.clock(), self.group)
        for name, index in self.interfaces:
            try:
                self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                      _mreqn("0.0.0.0", index))
                for d in datagrams:
                    self._sock.sendto(d, self.group)
            except OSError as exc:
                log.debug("LSD: cannot send on %s: %s", name, exc)
        return len(datagrams)

    async def run(self) -> None:
        while True:
            self.announce_now()
            await asyncio.sleep(self.tick)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        elif self._sock is not None:
            self._sock.close()
        self._transport = None
        self._sock = None


@contextlib.asynccontextmanager
async def lsd_for(session: _Session, settings: Any, *, host: str,
                  no_lsd: bool = False) -> AsyncIterator[LsdSource | None]:
    """The CLI's switch: a running :class:`LsdSource` when ``settings.lsd`` and not
    ``no_lsd``, else None (also None, with a warning, when no interface can multicast)."""
    if no_lsd or not settings.lsd:
        yield None
        return
    source = LsdSource(session, host=host)
    try:
        await source.start()
    except OSError as exc:
        log.warning("local service discovery off: %s", exc)
        yield None
        return
    task = asyncio.create_task(source.run(), name="lsd")
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        source.close()
