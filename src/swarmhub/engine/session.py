"""The session: one listening socket, one disk pool and global limits shared by torrents.

Use it as an async context manager; it stops every torrent (saving resume data) on exit,
whether the block ends normally, by an exception or by cancellation (Ctrl-C)::

    async with Session(settings) as session:
        await session.listen("127.0.0.1", 6881)   # or listen(): settings.listen_interfaces
        torrent = await session.add(meta, Path("downloads"), peers=[("127.0.0.1", 6882)])
        await torrent.complete.wait()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from swarmhub.engine import mse_transport
from swarmhub.engine.peer import PeerProtocol
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket
from swarmhub.engine.services import PeerHost
from swarmhub.engine.torrent import Torrent
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

if TYPE_CHECKING:
    from swarmhub.discovery.httpget import HttpClient
    from swarmhub.discovery.tracker import TrackerTiers
    from swarmhub.storage.files import TorrentStorage

__all__ = ["PeerFilter", "Session", "default_state_dir", "make_peer_id"]

log = logging.getLogger(__name__)

#: ``(info_hash, address, peer_id, outgoing) -> refusal reason or None``: an embedder's
#: admission rule, consulted for every connection after the handshake. ``outgoing`` says we
#: dialed ``address`` (so it is the peer's listening address, not an ephemeral port).
PeerFilter = Callable[[bytes, tuple[str, int], bytes, bool], str | None]


def make_peer_id(prefix: str, rng: random.Random | None = None) -> bytes:
    """Azureus-style peer id: ``-SH0100-`` and twelve random printable characters."""
    rng = rng or random.SystemRandom()
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    tail = "".join(rng.choice(alphabet) for _ in range(20 - len(prefix)))
    return (prefix + tail).encode()[:20]


def _wire_hashes(meta: Metainfo) -> list[bytes]:
    """The 20-byte hashes peers may use for ``meta`` in handshakes (v1, truncated v2)."""
    hashes = (meta.info_hash_v1, meta.info_hash_v2[:20] if meta.info_hash_v2 else None)
    return [h for h in hashes if h is not None]


def default_state_dir() -> Path:
    """Where resume data lives: ``$XDG_STATE_HOME/swarmhub`` (``~/.local/state/swarmhub``)."""
    env = os.environ.get("SWARMHUB_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "swarmhub"


class Session:
    """Shared resources of all torrents of one process."""

    def __init__(self, settings: Settings | None = None, *, state_dir: Path | None = None,
                 rng: random.Random | None = None, peer_filter: PeerFilter | None = None) -> None:
        self.settings = settings or Settings()
        #: Who may connect at all (the hub admits private-torrent peers only after a live
        #: passkey announce); None admits everyone the torrent's own limits allow.
        self.peer_filter = peer_filter
        self.rng = rng or random.Random()
        self.state_dir = state_dir or default_state_dir()
        self.peer_id = make_peer_id(self.settings.peer_id_prefix)
        #: our handshake's reserved bytes before its torrent is known (see handshake_for)
        self.reserved = m.make_reserved(extension=True, fast=True)
        self._reserved_v2 = m.make_reserved(extension=True, fast=True, v2=True)
        self.disk_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.settings.disk_threads), thread_name_prefix="swarmhub-disk")
        #: Hashing (piece checks, rechecks) runs apart from disk I/O, on every core by default.
        self.hash_threads = self.settings.hash_threads or os.cpu_count() or 1
        self.hash_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.hash_threads, thread_name_prefix="swarmhub-hash")
        self.torrents: dict[bytes, Torrent] = {}
        self._by_hash: dict[bytes, Torrent] = {}
        #: swarm counts given before a torrent is added (see expect_swarm)
        self._expected: dict[bytes, tuple[int, int]] = {}
        self._tiers: dict[bytes, TrackerTiers] = {}
        self._servers: list[asyncio.Server] = []
        #: Connections still in their handshake (closed on shutdown; torrents own the rest).
        self.pending: set[PeerProtocol] = set()
        self._closed = False
        self.listen_port = 0
        self.listen_addr: tuple[str, int] = ("", 0)
        self.peer_count = 0
        self._down = TokenBucket(self.settings.download_rate_limit, None)
        self._up = RateLimiter(self.settings.upload_rate_limit)
        self._http: HttpClient | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Session:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await asyncio.shield(self.close())
        finally:
            assert self._tg is not None
            await self._tg.__aexit__(et, exc, tb)

    async def listen(self, host: str | None = None, port: int | None = None) -> int:
        """Accept incoming peers; returns the (first) port, useful with ``port=0``.

        Without arguments, listens on every ``host:port`` of ``settings.listen_interfaces``;
        a port 0 there picks a free port once and reuses it on the later interfaces, so
        peers learn one port (the one announced to trackers).
        """
        if self._closed:
            raise SwarmhubError("the session is closed")
        if host is None:
            addrs = self.settings.listen_addresses()
            if port is not None:
                addrs = [(h, port) for h, _ in addrs]
        else:
            addrs = [(host, 6881 if port is None else port)]
        loop = asyncio.get_running_loop()
        for h, p in addrs:
            if p == 0 and self.listen_port:
                p = self.listen_port
            server = await loop.create_server(
                lambda: mse_transport.accept(self), h, p, reuse_address=True)
            self._servers.append(server)
            actual = int(server.sockets[0].getsockname()[1])
            if not self.listen_port:
                self.listen_port = actual
                self.listen_addr = (h, actual)
            log.info("listening on %s:%d", h, actual)
        return self.listen_port

    async def add(self, meta: Metainfo, save_path: Path, *, seed_mode: bool = False,
                  peers: list[tuple[str, int]] | None = None,
                  trackers: list[list[str]] | None = None,
                  file_priorities: Sequence[int] | None = None,
                  sequential: bool = False,
                  storage: TorrentStorage | None = None,
                  clock: Callable[[], float] = time.monotonic) -> Torrent:
        """Add a torrent, check what is on disk, and start its background jobs.

        ``file_priorities``: one per data file (0 skip, 1 normal, up to 7 sooner; see
        :meth:`Torrent.set_file_priorities`); ``sequential``: in order with a read-ahead
        window (:meth:`Torrent.set_sequential`); ``storage``: where the bytes live, when
        not in files under ``save_path`` (a :class:`TorrentStorage` subclass); ``clock``:
        the torrent's time (tests step it to make peers idle without waiting)."""
        if self._tg is None or self._closed:
            raise SwarmhubError("use the Session as 'async with Session() as s'")
        if meta.info_hash in self.torrents:
            raise SwarmhubError(f"torrent {meta.info_hash.hex()} is already in the session")
        torrent = Torrent(self, meta, save_path, seed_mode=seed_mode, peers=peers,
                          trackers=trackers, rng=random.Random(self.rng.random()),
                          file_priorities=file_priorities, sequential=sequential,
                          storage=storage, clock=clock)
        await torrent.start()
        counts = self._expected.pop(meta.info_hash, None)
        if counts is not None:
            torrent.swarm.tracker_counts(*counts)
        self.torrents[meta.info_hash] = torrent
        for h in _wire_hashes(meta):
            self._by_hash[h] = torrent
        torrent.run_task = self._tg.create_task(torrent.run())
        return torrent

    def expect_swarm(self, info_hash: bytes, seeds: int, leechers: int) -> None:
        """The swarm of a torrent about to be added, as its tracker's host counted it
        (a hub's file info): see :meth:`Swarm.tracker_counts`."""
        self._expected[info_hash] = (seeds, leechers)

    async def remove(self, info_hash: bytes) -> bool:
        """Stop a torrent (peers closed, resume data saved, ``stopped`` announced) and
        forget it, so the same torrent can be added again; False if it was not here."""
        torrent = self.torrents.pop(info_hash, None)
        if torrent is None:
            return False
        for h in _wire_hashes(torrent.meta):
            if self._by_hash.get(h) is torrent:
                del self._by_hash[h]
        self._tiers.pop(info_hash, None)
        await torrent.stop()
        return True

    def set_rate_limits(self, download: int, upload: int) -> None:
        """Change the session's limits (bytes/s, 0 = none) while torrents run; each torrent
        keeps its own per-torrent limits."""
        changes = {"download_rate_limit": download, "upload_rate_limit": upload}
        self.settings = self.settings.replace(**changes)
        self._down.set_rate(download)
        self._up.set_rate(upload)
        for torrent in self.torrents.values():
            torrent.settings = torrent.settings.replace(**changes)

    def torrent_for_hash(self, info_hash: bytes) -> Torrent | None:
        return self._by_hash.get(info_hash)

    def handshake_for(self, torrent: PeerHost, theirs: m.Handshake | None = None) -> m.Handshake:
        """Our handshake for ``torrent``: to open a connection, or to answer ``theirs``.

        A torrent with a v2 info hash (hybrid, v2-only) sets the BEP 52 upgrade bit: we
        check pieces by SHA-256, so a peer that sets it too needs no SHA-1 check of what
        we upload (see Uploader). A peer that sets it on the v1 hash of a hybrid torrent
        gets the truncated v2 hash back: the upgrade BEP 52 describes, and libtorrent's
        answer (it then counts the connection as v2 on its side too).
        """
        meta = torrent.meta
        info_hash = meta.info_hash if theirs is None else theirs.info_hash
        v2 = meta.info_hash_v2
        if v2 is None:
            return m.Handshake(self.reserved, info_hash, self.peer_id)
        if theirs is not None and m.has_bit(theirs.reserved, m.RESERVED_V2_UPGRADE):
            info_hash = v2[:20]
        return m.Handshake(self._reserved_v2, info_hash, self.peer_id)

    def charge_download(self, n: int, now: float) -> float:
        """Seconds the connection should stop reading to honour the download limit."""
        if not self.settings.download_rate_limit:
            return 0.0
        return self._down.consume(n, now)

    async def charge_upload(self, n: int) -> None:
        if self.settings.upload_rate_limit:
            await self._up.acquire(n)

    def tracker_tiers(self, info_hash: bytes, urls: list[list[str]]) -> TrackerTiers:
        """The torrent's tracker tiers, kept across announces (BEP 12 reorders them)."""
        from swarmhub.discovery.tracker import TrackerTiers

        tiers = self._tiers.get(info_hash)
        if tiers is None:
            tiers = TrackerTiers(urls, rng=self.rng, user_agent=self.settings.user_agent)
            self._tiers[info_hash] = tiers
        return tiers

    async def http(self) -> HttpClient:
        """The shared HTTP client (hub API, HTTP downloads, web seeds); refused once the
        session closes, so a task cancelled during shutdown cannot leave an unclosed client
        behind."""
        from swarmhub.discovery.httpget import HttpClient

        if self._closed:
            raise SwarmhubError("the session is closed")
        if self._http is None:
            # No total timeout: a large HTTP download may take hours; a stalled one is
            # caught by the connect and per-read timeouts instead.
            self._http = HttpClient(headers={"User-Agent": self.settings.user_agent},
                                    connect_timeout=15, read_timeout=60)
        return self._http

    async def close(self) -> None:
        """Shut down in order: stop accepting, drop half-open connections, stop every
        torrent (``stopped`` announces, peers closed, resume data saved), then close the
        HTTP client and the thread pools. Safe to call twice."""
        if self._closed:
            return
        for server in self._servers:
            server.close()
        self._servers.clear()
        for proto in list(self.pending):
            proto.close("session closing")
        results = await asyncio.gather(*(t.stop() for t in self.torrents.values()),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.warning("error while stopping a torrent: %s", r)
        self._closed = True
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        self.disk_pool.shutdown(wait=False, cancel_futures=True)
        self.hash_pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {"torrents": len(self.torrents), "peers": self.peer_count,
                "time": time.monotonic()}
