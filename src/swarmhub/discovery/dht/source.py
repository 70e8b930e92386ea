"""The DHT as a peer source for a session's torrents: the only glue between DHT and engine.

:class:`DhtSource` looks at a Session-like object once a second and, for every torrent
that is not private (BEP 27: private torrents never use the DHT), runs a get_peers lookup
that also announces our listening port, then hands what it found to the torrent through
its one peer-adding call, ``torrent.add_peers(addrs)``. A hybrid torrent is looked up and
announced under both its v1 hash and its truncated v2 hash (BEP 52), as libtorrent does.

It needs nothing else from the engine (``session.torrents``, ``session.listen_port``,
``torrent.meta``, ``torrent.add_peers``), so the engine can be refactored under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from swarmhub.discovery import dht_wanted
from swarmhub.discovery.dht.core import Config
from swarmhub.discovery.dht.node import DhtNode, parse_bootstrap
from swarmhub.discovery.keys import HashedMeta, public_hashes

__all__ = ["DhtSource", "dht_for", "dht_hashes", "magnet_peers", "run_dht"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class _Torrent(Protocol):
    @property
    def meta(self) -> HashedMeta: ...
    def add_peers(self, addrs: list[Addr]) -> None: ...


class _Session(Protocol):
    @property
    def torrents(self) -> Mapping[bytes, Any]: ...
    @property
    def listen_port(self) -> int: ...


#: The 20-byte keys a torrent lives under in the DHT (none when private).
dht_hashes = public_hashes


class DhtSource:
    """Announce and find peers for each public torrent of ``session``.

    A seed announces every ``seed_interval`` seconds (libtorrent: 15 min), a download
    every ``interval``; a download whose lookups found nobody tries again after ``retry``
    seconds, doubling up to ``interval``, so a leecher that came before its seeder is not
    stuck and a lone one does not hammer the network. A seed whose announce reached no
    node (its DHT was still empty: the first node of a network, or a restart before the
    bootstrap answered) backs off the same way instead of staying unknown for 15 min.
    "Seed" is read from the torrent's ``complete`` event when it has one.
    """

    def __init__(self, session: _Session, node: DhtNode, *, interval: float = 300.0,
                 seed_interval: float = 900.0, retry: float = 15.0,
                 lookup_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.node = node
        self.interval = interval
        self.seed_interval = seed_interval
        self.retry = retry
        self._backoff: dict[bytes, float] = {}
        self.lookup_timeout = lookup_timeout
        self.clock = clock
        self._due: dict[bytes, float] = {}
        self.found: dict[bytes, int] = {}

    async def run(self) -> None:
        while True:
            now = self.clock()
            due = [(h, t) for h, t in list(self.session.torrents.items())
                   if self._due.get(h, 0.0) <= now and dht_hashes(t.meta)]
            if due:
                results = await asyncio.gather(*(self._one(h, t) for h, t in due[:8]),
                                               return_exceptions=True)
                for (h, _), r in zip(due, results, strict=False):
                    if isinstance(r, Exception):  # a bug must not end the DHT for all
                        log.error("DHT announce for %s failed: %r", h.hex(), r)
                        self._due[h] = self.clock() + self.retry
            await asyncio.sleep(1.0)

    async def _one(self, key: bytes, torrent: _Torrent) -> None:
        peers: dict[Addr, None] = {}
        port = self.session.listen_port or None
        announced = 0
        for h in dht_hashes(torrent.meta):
            try:
                done = await self.node.get_peers(h, announce_port=port,
                                                 timeout=self.lookup_timeout)
            except TimeoutError:
                log.debug("DHT lookup for %s timed out", h.hex())
                continue
            peers.update(dict.fromkeys(done.peers))
            announced += done.announced
        own = {("127.0.0.1", port), (self.node.addr[0], port)}
        found = [p for p in peers if p not in own]
        self.found[key] = len(found)
        if found:
            log.info("DHT: %d peers for %s", len(found), key.hex())
            torrent.add_peers(found)
        complete = getattr(torrent, "complete", None)
        if isinstance(complete, asyncio.Event) and complete.is_set() and announced:
            wait = self.seed_interval
            self._backoff.pop(key, None)
        elif found:
            wait = self.interval
            self._backoff.pop(key, None)
        else:
            wait = self._backoff.get(key, self.retry)
            self._backoff[key] = min(2 * wait, self.interval)
        self._due[key] = self.clock() + wait


@contextlib.asynccontextmanager
async def dht_for(session: _Session, settings: Any, *, host: str, listen_port: int,
                  no_dht: bool = False, bootstrap: str | None = None,
                  dht_port: int | None = None, state_file: Path | None = None
                  ) -> AsyncIterator[DhtNode | None]:
    """The CLI's switch: a running DHT (:func:`run_dht`) or None. On when
    ``settings.dht`` (``SWARMHUB_DHT``) or an explicit ``bootstrap`` says so, off with
    ``no_dht``; the UDP port defaults to the listening TCP port, as in libtorrent."""
    if not dht_wanted(settings, no_dht=no_dht, bootstrap=bootstrap):
        yield None
        return
    port = listen_port if dht_port is None else dht_port
    with contextlib.ExitStack() as locks:
        load_from = None
        if state_file is not None and not _lock(state_file, locks):
            # another get/seed owns the state folder's table: read it, keep our own id
            load_from, state_file = state_file, state_file.with_name(
                f"{state_file.stem}-{os.getpid()}.json")
        async with run_dht(session, host=host, port=port,
                           bootstrap=settings.dht_bootstrap if bootstrap is None else bootstrap,
                           state_file=state_file, load_from=load_from) as node:
            yield node


def _lock(state_file: Path, stack: contextlib.ExitStack) -> bool:
    """Hold ``<state>.lock`` for this process's lifetime; False when another process does."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    fh = stack.enter_context(open(state_file.with_suffix(".lock"), "a+b"))  # noqa: SIM115
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def run_dht(session: _Session, *, host: str, port: int, bootstrap: str,
                  state_file: Path | None, config: Config | None = None,
                  load_from: Path | None = None) -> AsyncIterator[DhtNode]:
    """Start a DHT node on ``host:port`` (falling back to any port when taken) and a
    :class:`DhtSource` for ``session``; both stop, and the table is saved, on exit."""
    routers = parse_bootstrap(bootstrap)
    node = DhtNode(host, port, bootstrap=routers, state_file=state_file, config=config,
                   load_from=load_from)
    try:
        await node.start()
    except OSError as exc:
        if not port:
            raise
        log.warning("DHT port %d: %s; using any free port", port, exc)
        node = DhtNode(host, 0, bootstrap=routers, state_file=state_file, config=config,
                       load_from=load_from)
        await node.start()
    source = DhtSource(session, node)
    task = asyncio.create_task(source.run(), name="dht-source")
    try:
        yield node
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await node.close()


async def magnet_peers(node: DhtNode, hashes: list[bytes], *, timeout: float | None,
                       retry: float = 3.0) -> list[Addr]:
    """Peers for a magnet link from the DHT alone: look up every hash, again every
    ``retry`` seconds while nobody is found, for at most ``timeout`` (None: 60 s)."""
    deadline = time.monotonic() + (60.0 if timeout is None else timeout)
    while True:
        peers: dict[Addr, None] = {}
        left = deadline - time.monotonic()
        if left > 0:
            # both hashes of a hybrid at once: a lookup that waits out a dead node's query
            # timeout should not make the other one wait too
            found = await asyncio.gather(
                *(node.get_peers(h, timeout=min(left, 30.0)) for h in hashes),
                return_exceptions=True)
            for done in found:
                if isinstance(done, TimeoutError):
                    continue
                if isinstance(done, BaseException):
                    raise done
                peers.update(dict.fromkeys(done.peers))
        if peers or time.monotonic() + retry >= deadline:
            return list(peers)
        await asyncio.sleep(retry)
