"""The session: one listening socket, one disk pool and global limits shared by torrents.

Use it as an async context manager; it stops every torrent (saving resume data) on exit,
whether the block ends normally, by an exception or by cancellation (Ctrl-C)::

    async with Session(settings) as session:
        await session.listen("127.0.0.1", 6881)
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
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from swarmhub.engine import mse_transport
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket
from swarmhub.engine.torrent import Torrent
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

if TYPE_CHECKING:
    import aiohttp

    from swarmhub.discovery.tracker import TrackerTiers

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
        self.reserved = m.make_reserved(extension=True, fast=True)
        self.disk_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.settings.disk_threads), thread_name_prefix="swarmhub-disk")
        self.torrents: dict[bytes, Torrent] = {}
        self._by_hash: dict[bytes, Torrent] = {}
        self._tiers: dict[bytes, TrackerTiers] = {}
        self._server: asyncio.Server | None = None
        self.listen_port = 0
        self.listen_addr: tuple[str, int] = ("", 0)
        self.peer_count = 0
        self._down = TokenBucket(self.settings.download_rate_limit, None)
        self._up = RateLimiter(self.settings.upload_rate_limit)
        self._http: aiohttp.ClientSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._run_tasks: list[asyncio.Task[None]] = []

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

    async def listen(self, host: str = "0.0.0.0", port: int = 6881) -> int:
        """Accept incoming peers; returns the port (useful with ``port=0``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: mse_transport.accept(self), host, port, reuse_address=True)
        sock = self._server.sockets[0]
        self.listen_port = int(sock.getsockname()[1])
        self.listen_addr = (host, self.listen_port)
        log.info("listening on %s:%d", host, self.listen_port)
        return self.listen_port

    async def add(self, meta: Metainfo, save_path: Path, *, seed_mode: bool = False,
                  peers: list[tuple[str, int]] | None = None,
                  trackers: list[list[str]] | None = None) -> Torrent:
        """Add a torrent, check what is on disk, and start its background jobs."""
        if self._tg is None:
            raise SwarmhubError("use the Session as 'async with Session() as s'")
        if meta.info_hash in self.torrents:
            raise SwarmhubError(f"torrent {meta.info_hash.hex()} is already in the session")
        torrent = Torrent(self, meta, save_path, seed_mode=seed_mode, peers=peers,
                          trackers=trackers, rng=random.Random(self.rng.random()))
        await torrent.start()
        self.torrents[meta.info_hash] = torrent
        for h in (meta.info_hash_v1, meta.info_hash_v2[:20] if meta.info_hash_v2 else None):
            if h is not None:
                self._by_hash[h] = torrent
        self._run_tasks.append(self._tg.create_task(torrent.run()))
        return torrent

    def torrent_for_hash(self, info_hash: bytes) -> Torrent | None:
        return self._by_hash.get(info_hash)

    def handshake_for(self, torrent: Torrent) -> m.Handshake:
        return m.Handshake(self.reserved, torrent.meta.info_hash, self.peer_id)

    def charge_download(self, n: int, now: float) -> float:
        """Seconds the connection should stop reading to honour the download limit."""
        if not self.settings.download_rate_limit:
            return 0.0
        return self._down.consume(n, now)

    async def charge_upload(self, n: int) -> None:
        if self.settings.upload_rate_limit:
            await self._up.acquire(n)

    def tracker_tiers(self, torrent: Torrent) -> TrackerTiers:
        from swarmhub.discovery.tracker import TrackerTiers

        tiers = self._tiers.get(torrent.meta.info_hash)
        if tiers is None:
            tiers = TrackerTiers(torrent.tracker_tiers, rng=self.rng)
            self._tiers[torrent.meta.info_hash] = tiers
        return tiers

    async def http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._http is None:
            # No total timeout: a large HTTP download may take hours; a stalled one is
            # caught by the connect and per-read timeouts instead.
            self._http = aiohttp.ClientSession(
                headers={"User-Agent": self.settings.user_agent},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60))
        return self._http

    async def close(self) -> None:
        """Stop accepting, stop every torrent (saving resume data), release resources."""
        if self._server is not None:
            self._server.close()
            self._server = None
        results = await asyncio.gather(*(t.stop() for t in self.torrents.values()),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.warning("error while stopping a torrent: %s", r)
        for task in self._run_tasks:
            task.cancel()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        self.disk_pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {"torrents": len(self.torrents), "peers": self.peer_count,
                "time": time.monotonic()}
