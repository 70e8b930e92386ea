"""UDP tracker server (BEP 15, BEP 41 URL data) over the same swarms as the HTTP tracker.

Three layers, like the HTTP tracker:

- :class:`ConnectionIds` mints connection ids without per-client state: an id is a keyed
  BLAKE2b MAC of (source IP, 60-second window) under a secret (the hub derives it from
  its data folder's secret, so ids survive a restart; the standalone tracker makes one). An id is
  accepted in its window and the two after it, so it lives 2-3 minutes (BEP 15: clients
  use an id for one minute, trackers accept it for two). A client that spoofs its source
  never sees the id for that address, so it cannot announce in another host's name.
- :class:`UdpTrackerCore` is sans-IO: ``handle(datagram, source ip, now)`` returns the
  reply bytes or ``None`` (drop). It enforces the anti-amplification rule: before a
  source proved its address (a valid connection id) nothing sent to it is larger than
  what it sent — a connect reply is 16 bytes for a 16-byte request and error replies are
  cut to the request's length. Scrapes are capped at :data:`MAX_SCRAPE` hashes (their
  reply is always smaller than the request). Every datagram from an address spends one
  token of the per-address :class:`~swarmhub.hub.limits.AnnounceRate`; past it the
  datagram is dropped without an answer, so a flood costs a dict lookup.
- :class:`UdpTrackerServer` / :func:`start_udp_tracker` only move datagrams.

With a shared swarm state (``--swarm-state redis://``) an announce or a scrape is a
network hop away: :class:`SharedUdpTrackerCore` answers them with a coroutine that the
server runs as a task (at most :data:`MAX_PENDING` at once; past that a datagram is
dropped, as UDP allows: the client asks again), replying when the store answered.
Connects, errors and the rate limit stay synchronous, so a flood still costs a dict
lookup and no task.

A :class:`UdpPolicy` adds the hub's rules (catalog whitelist, passkeys for private
torrents via BEP 41 ``/announce?passkey=...``, access proofs for the embedded seeder):
:class:`HubUdpPolicy`. The standalone tracker (``python -m swarmhub.hub.tracker --udp
HOST:PORT``) runs without one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import urllib.parse
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from swarmhub.discovery.udp_codec import (
    EVENTS,
    MAX_SCRAPE,
    Announce,
    Connect,
    ConnectReply,
    ErrorReply,
    ScrapeReply,
    UdpPacketError,
    encode,
    encode_announce_reply,
    parse_request,
)
from swarmhub.hub.access import normalize_ip
from swarmhub.hub.catalog import SECRET_FILE, load_or_create_secret
from swarmhub.hub.limits import AnnounceRate
from swarmhub.hub.metrics import MetricFamily
from swarmhub.hub.tracker import AnnounceParams, TrackerState

if TYPE_CHECKING:
    from swarmhub.hub.api import Hub
    from swarmhub.hub.swarmstate import SwarmState

__all__ = [
    "MAX_DATAGRAM",
    "MAX_SCRAPE",
    "ConnectionIds",
    "HubUdpPolicy",
    "SharedUdpTrackerCore",
    "UdpPolicy",
    "UdpTrackerCore",
    "UdpTrackerServer",
    "hub_connection_ids",
    "passkey_of",
    "start_hub_udp_tracker",
    "start_udp_tracker",
]

log = logging.getLogger(__name__)

#: Largest datagram looked at: an announce with a long BEP 41 URL fits well within it.
MAX_DATAGRAM = 2048
#: Datagrams answered per wake-up of the event loop before other callbacks run.
BATCH = 64
#: Peers in one IPv6 answer: 80 x 18 bytes keeps it within one 1500-byte packet.
MAX_PEERS_V6 = 80
#: Peers handed out when the client leaves num_want at -1 (as the HTTP default).
DEFAULT_NUMWANT = 50
#: Announces/scrapes waiting on a shared swarm state at once (SharedUdpTrackerCore).
MAX_PENDING = 256
#: Seconds a reply may wait on the shared swarm state before it is given up.
PENDING_TIMEOUT = 5.0

#: What the core gives for one datagram: reply bytes, nothing, or (shared swarm state) a
#: coroutine that produces one of those.
Reply = bytes | None | Coroutine[Any, Any, bytes | None]


class ConnectionIds:
    """Stateless BEP 15 connection ids bound to a source IP and a time window."""

    __slots__ = ("_key", "window", "windows")

    def __init__(self, secret: bytes | None = None, *, window: float = 60.0, windows: int = 3):
        if window <= 0 or windows < 2:
            raise ValueError("window must be positive and windows >= 2")
        self._key = secret if secret is not None else os.urandom(32)
        self.window = window
        #: How many windows (the current one included) an id is accepted in.
        self.windows = windows

    def _mac(self, epoch: int, ip: str) -> int:
        digest = hashlib.blake2b(
            epoch.to_bytes(8, "big", signed=True) + ip.encode(), key=self._key, digest_size=8
        ).digest()
        return int.from_bytes(digest, "big")

    def issue(self, ip: str, now: float) -> int:
        """The connection id for ``ip`` now."""
        return self._mac(int(now // self.window), ip)

    def check(self, connection_id: int, ip: str, now: float) -> bool:
        """Whether ``connection_id`` was issued to ``ip`` within the last windows."""
        epoch = int(now // self.window)
        return any(self._mac(epoch - age, ip) == connection_id for age in range(self.windows))


class UdpPolicy(Protocol):
    """The hub's rules on top of the swarms (the standalone tracker has none)."""

    def admit(self, params: AnnounceParams, url_data: bytes | None, now: float) -> str | None:
        """``None`` to record the announce, else the error message to answer with."""

    def announced(self, params: AnnounceParams, url_data: bytes | None, now: float) -> int:
        """After an admitted announce was recorded (counters, access proofs): how many
        leechers to add to the answer's count (peers on their way, not announced yet)."""

    def scrape_visible(self, info_hash: bytes) -> bool:
        """Whether a scrape may show this torrent's counts (zeros otherwise)."""


class UdpTrackerCore:
    """Datagrams in, reply bytes out; no sockets, no clock (``now`` is passed in).

    ``counts`` tallies what happened (``connect``, ``announce``, ``scrape``, ``refused``,
    ``bad_connection_id``, ``malformed``, ``rate_limited``, ``oversized``) for metrics and
    tests.
    """

    def __init__(
        self,
        state: TrackerState,
        *,
        ids: ConnectionIds | None = None,
        rate: AnnounceRate | None = None,
        policy: UdpPolicy | None = None,
    ) -> None:
        self.state = state
        self.ids = ids or ConnectionIds()
        self.rate = rate
        self.policy = policy
        self.counts: Counter[str] = Counter()

    def handle(self, data: bytes, ip: str, now: float) -> Reply:
        """The reply to one datagram from ``ip``, or ``None`` to send nothing."""
        size = len(data)
        if size > MAX_DATAGRAM:
            self.counts["oversized"] += 1
            return None
        if self.rate is not None and self.rate.take(ip, now) > 0:
            self.counts["rate_limited"] += 1
            return None
        try:
            req = parse_request(data)
        except UdpPacketError as exc:
            self.counts["malformed"] += 1
            if size < 16:
                return None
            return self._error(int.from_bytes(data[12:16], "big"), str(exc), size)
        if isinstance(req, Connect):
            self.counts["connect"] += 1
            return encode(ConnectReply(req.transaction_id, self.ids.issue(ip, now)))
        if not self.ids.check(req.connection_id, ip, now):
            self.counts["bad_connection_id"] += 1
            return self._error(req.transaction_id, "connection id expired: connect again", size)
        if isinstance(req, Announce):
            return self._announce(req, ip, now, size)
        self.counts["scrape"] += 1
        return self._scrape(req.transaction_id, req.info_hashes)

    def _scrape(self, tid: int, info_hashes: tuple[bytes, ...]) -> Reply:
        policy, stats = self.policy, self.state.stats
        rows = tuple(
            (c, d, i) if policy is None or policy.scrape_visible(ih) else (0, 0, 0)
            for ih in info_hashes
            for c, d, i in (stats(ih),)
        )
        return encode(ScrapeReply(tid, rows))

    def _announce(self, req: Announce, ip: str, now: float, size: int) -> Reply:
        tid = req.transaction_id
        width = 6
        if ":" in ip:  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
            ip = normalize_ip(ip)
            width = 18 if ":" in ip else 6
        if not req.port:
            self.counts["refused"] += 1
            return self._error(tid, "invalid port: must be 1..65535", size)
        numwant = DEFAULT_NUMWANT if req.num_want < 0 else req.num_want
        params = AnnounceParams(
            req.info_hash, req.peer_id, ip, req.port, req.uploaded, req.downloaded, req.left,
            EVENTS[req.event], min(numwant, MAX_PEERS_V6) if width == 18 else numwant,
        )
        policy = self.policy
        if policy is not None:
            refusal = policy.admit(params, req.url_data, now)
            if refusal is not None:
                self.counts["refused"] += 1
                return self._error(tid, refusal, size)
        return self._record(req, params, now, width, size)

    def _record(self, req: Announce, params: AnnounceParams, now: float, width: int,
                size: int) -> Reply:
        """Enter an admitted announce in the swarms and answer it."""
        tid, policy = req.transaction_id, self.policy
        result = self.state.announce_compact(params, now, width)
        if result is None:
            self.counts["refused"] += 1
            return self._error(tid, "unregistered torrent", size)
        pending = 0 if policy is None else policy.announced(params, req.url_data, now)
        self.counts["announce"] += 1
        peers, seeders, leechers = result
        return encode_announce_reply(tid, self.state.interval, leechers + pending, seeders,
                                     peers)

    def _error(self, transaction_id: int, message: str, request_size: int) -> bytes:
        # Never larger than the request: an error can go to a spoofed source.
        return encode(ErrorReply(transaction_id, message))[:request_size]


class SharedUdpTrackerCore(UdpTrackerCore):
    """The core over a shared, asynchronous swarm state (Redis): announces and scrapes
    answer with a coroutine; everything else (connects, ids, limits, errors) as above.

    The swarms answer as the HTTP tracker's do (a bencoded body), so both protocols see
    one swarm in every hub process; the UDP reply is built from that body.
    """

    def __init__(self, swarms: SwarmState, *, ids: ConnectionIds | None = None,
                 rate: AnnounceRate | None = None, policy: UdpPolicy | None = None) -> None:
        super().__init__(TrackerState(interval=swarms.interval,
                                      min_interval=swarms.min_interval),
                         ids=ids, rate=rate, policy=policy)
        self.swarms = swarms

    def _scrape(self, tid: int, info_hashes: tuple[bytes, ...]) -> Reply:
        return self._scrape_shared(tid, info_hashes)

    async def _scrape_shared(self, tid: int, info_hashes: tuple[bytes, ...]) -> bytes | None:
        stats = await self.swarms.stats_many(list(info_hashes))
        policy = self.policy
        rows = tuple(
            row if policy is None or policy.scrape_visible(ih) else (0, 0, 0)
            for ih, row in zip(info_hashes, stats, strict=True)
        )
        return encode(ScrapeReply(tid, rows))

    def _record(self, req: Announce, params: AnnounceParams, now: float, width: int,
                size: int) -> Reply:
        return self._record_shared(req, params, now, width, size)

    async def _record_shared(self, req: Announce, params: AnnounceParams, now: float,
                             width: int, size: int) -> bytes | None:
        from swarmhub.bencode import bdecode

        tid = req.transaction_id
        body = bdecode(await self.swarms.announce(params, now))
        if not isinstance(body, dict) or b"failure reason" in body:
            self.counts["refused"] += 1
            why = body.get(b"failure reason", b"refused") if isinstance(body, dict) else b""
            return self._error(tid, bytes(why).decode("utf-8", "replace"), size)
        pending = 0 if self.policy is None else self.policy.announced(params, req.url_data, now)
        self.counts["announce"] += 1
        peers = body.get(b"peers6" if width == 18 else b"peers", b"")
        if not isinstance(peers, bytes):
            peers = b""
        peers = peers[: len(peers) - len(peers) % width]
        return encode_announce_reply(tid, self.swarms.interval,
                                     int(body.get(b"incomplete", 0)) + pending,
                                     int(body.get(b"complete", 0)), peers)


class UdpTrackerServer:
    """A listening UDP tracker: drains its socket when it is readable; :meth:`close` stops it.

    Not a ``DatagramProtocol``: asyncio's datagram transport reads one datagram per
    readiness event, and that loop overhead cost more than answering the announce. Here
    one wake-up reads and answers up to :data:`BATCH` datagrams (bounded, so the hub's
    HTTP side keeps its turn) with plain non-blocking ``recvfrom``/``sendto``. A reply
    the kernel cannot queue is dropped, as UDP allows; the client asks again.
    """

    def __init__(self, sock: socket.socket, core: UdpTrackerCore) -> None:
        self.sock = sock
        self.core = core
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        self._loop.add_reader(sock.fileno(), self._drain)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _drain(self) -> None:
        sock, handle, clock, counts = self.sock, self.core.handle, self._loop.time, self.core.counts
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error about an earlier reply: nothing to do
                log.debug("UDP tracker socket error: %s", exc)
                continue
            try:
                reply = handle(data, addr[0], clock())
            except Exception:  # a bug must cost one datagram, never the tracker
                counts["internal_error"] += 1
                log.exception("UDP tracker: cannot handle a datagram from %s", addr[0])
                continue
            if isinstance(reply, bytes):
                self._send(reply, addr)
            elif reply is not None:
                self._later(reply, addr)

    def _send(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.core.counts["reply_dropped"] += 1
        except OSError as exc:
            log.debug("UDP tracker cannot answer %s: %s", addr[0], exc)

    def _later(self, reply: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        """Answer once the shared swarm state did (bounded: past MAX_PENDING, drop)."""
        if len(self._pending) >= MAX_PENDING:
            reply.close()
            self.core.counts["overloaded"] += 1
            return
        task = self._loop.create_task(self._answer(reply, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(self, reply: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        try:
            data = await asyncio.wait_for(reply, PENDING_TIMEOUT)
        except Exception:  # the store is down or slow: no answer, the client retries
            self.core.counts["internal_error"] += 1
            log.exception("UDP tracker: the swarm state failed for %s", addr[0])
            return
        if data is not None and self.sock.fileno() >= 0:
            self._send(data, addr)

    def metrics(self) -> MetricFamily:
        """Datagrams by outcome, for the hub's ``/metrics``."""
        fam = MetricFamily(
            "swarmhub_udp_tracker_datagrams_total",
            "counter",
            "UDP tracker datagrams by outcome (answered, refused, dropped).",
        )
        for outcome, n in sorted(self.core.counts.items()):
            fam.add(n, {"outcome": outcome})
        return fam

    def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def start_udp_tracker(core: UdpTrackerCore, host: str, port: int) -> UdpTrackerServer:
    """Listen on ``host:port`` (port 0: any free one); ``OSError`` if it cannot bind."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host}")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return UdpTrackerServer(sock, core)


# --------------------------------------------------------------------------- the hub


def passkey_of(url_data: bytes | None) -> str | None:
    """The ``passkey`` query parameter of BEP 41 URL data (``/announce?passkey=...``)."""
    if not url_data:
        return None
    query = url_data.decode("latin-1").partition("?")[2]
    for key, value in urllib.parse.parse_qsl(query, errors="replace"):
        if key == "passkey":
            return value
    return None


class HubUdpPolicy:
    """The HTTP ``/announce`` handler's rules (``hub.app.announce``), for UDP announces.

    The catalog is the whitelist; a private torrent needs a live passkey, which UDP
    carries as BEP 41 URL data; an admitted private announce is recorded as the proof the
    embedded seeder admits that peer by, and the seeder dials it.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def admit(self, params: AnnounceParams, url_data: bytes | None, now: float) -> str | None:
        hub = self.hub
        entry = hub.catalog.lookup_info_hash(params.info_hash)
        refusal = None
        if entry is None:
            refusal = "unregistered torrent: this hub does not track it"
        elif entry[1]:
            passkey = passkey_of(url_data)
            if not passkey:
                refusal = "private torrent: announce with your passkey (use the hub's .torrent)"
            elif hub.catalog.passkey_owner(passkey) is None:
                refusal = "unknown or revoked passkey"
        if refusal is not None:
            hub.announce_failures += 1
        return refusal

    def announced(self, params: AnnounceParams, url_data: bytes | None, now: float) -> int:
        """As the HTTP handler: the announce ends the peer's pending get (hub.pending),
        and the gets still on their way count as leechers in the answer."""
        hub = self.hub
        hub.announces += 1
        entry = hub.catalog.lookup_info_hash(params.info_hash)
        if entry is None:
            return 0
        pending = 0 if params.event == "stopped" else hub.pending_gets.others(
            entry[0], params.peer_id, now)
        hub.pending_gets.announced(entry[0], params.peer_id)
        if not entry[1] or params.event == "stopped":
            return pending
        passkey = passkey_of(url_data)
        owner = None if passkey is None else hub.catalog.passkey_owner(passkey)
        if owner is None:
            return pending
        hub.access.record(
            file_id=entry[0], ip=params.ip, port=params.port, peer_id=params.peer_id,
            token_id=owner, entry=(params.info_hash, params.ip, params.port, params.peer_id),
            now=now,
        )
        dial = getattr(hub.seeder, "dial", None)
        if dial is not None:
            dial(params.info_hash, (params.ip, params.port))
        return pending

    def scrape_visible(self, info_hash: bytes) -> bool:
        entry = self.hub.catalog.lookup_info_hash(info_hash)
        return entry is not None and not entry[1]


def hub_connection_ids(data_dir: Path) -> ConnectionIds:
    """Connection ids keyed from the hub's data-folder secret, so a restarted hub accepts
    the ids it gave out before (the event loop's clock is the system's monotonic one,
    shared by every process since boot): clients do not notice a restart."""
    secret = load_or_create_secret(data_dir / SECRET_FILE)
    return ConnectionIds(hmac.digest(secret, b"swarmhub udp connection id", "sha256"))


async def start_hub_udp_tracker(
    hub: Hub, rate: AnnounceRate, host: str, port: int
) -> UdpTrackerServer:
    """The hub's UDP tracker: its swarms, its per-address announce limit, its rules."""
    from swarmhub.hub.swarmstate import LocalSwarmState

    ids, policy = hub_connection_ids(hub.config.data_dir), HubUdpPolicy(hub)
    core: UdpTrackerCore
    if isinstance(hub.tracker, LocalSwarmState):  # in memory: answered in place
        core = UdpTrackerCore(hub.tracker.state, ids=ids, rate=rate, policy=policy)
    else:
        core = SharedUdpTrackerCore(hub.tracker, ids=ids, rate=rate, policy=policy)
    return await start_udp_tracker(core, host, port)
