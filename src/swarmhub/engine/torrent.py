"""One torrent in a session: the asyncio driver around its sans-IO :class:`Swarm`.

Every swarm decision (picking, choking, super-seeding, strikes and bans, dials and announces) is
the core's; this class feeds it events with the loop's clock and carries out its actions. The
I/O behind the actions lives in one module each, every one seeing the torrent only as a
:class:`~swarmhub.engine.services.DriverHost`: piece assembly, hashing and writing
(:mod:`.pieces`), uploads (:mod:`.uploads`), web seeds (:mod:`.webseed_driver`), announces
(:mod:`.tracker_driver`), peer exchange (:mod:`.pex_driver`), admission (:mod:`.admission`),
files and resume data (:mod:`.ondisk`), chosen files and streaming (:mod:`.wanted`), background
tasks (:mod:`.jobs`), and what the torrent reports (:mod:`.status`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from swarmhub.aio import settle
from swarmhub.engine import actions as act
from swarmhub.engine import admission
from swarmhub.engine.jobs import Jobs
from swarmhub.engine.ondisk import OnDisk
from swarmhub.engine.outbox import other_actions
from swarmhub.engine.peer import Peer
from swarmhub.engine.pex_driver import PexDriver
from swarmhub.engine.picker import Block
from swarmhub.engine.pieces import Pieces, Verdict
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket
from swarmhub.engine.services import TorrentServices
from swarmhub.engine.status import TorrentState, TorrentStatus, TorrentViews
from swarmhub.engine.swarm import Swarm
from swarmhub.engine.tracker_driver import TrackerDriver
from swarmhub.engine.uploads import Uploader
from swarmhub.engine.wanted import Wanted
from swarmhub.engine.webseed_driver import WebSeedDriver
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo
from swarmhub.storage.files import TorrentStorage
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import ExtensionHandshake, PexMessage

__all__ = ["Torrent", "TorrentState", "TorrentStatus"]

log = logging.getLogger(__name__)


class Torrent(TorrentViews):
    """State and behaviour of one torrent inside a session (see the module docstring)."""

    def __init__(
        self,
        session: TorrentServices,
        meta: Metainfo,
        save_path: Path,
        *,
        seed_mode: bool = False,
        peers: list[tuple[str, int]] | None = None,
        trackers: list[list[str]] | None = None,
        web_seeds: list[str] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        storage: TorrentStorage | None = None,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.meta = meta
        self.save_path = save_path
        self.seed_mode = seed_mode
        self.rng = rng or random.Random()
        self.clock = clock
        #: ``storage``: another source of the bytes (the hub's seeder reads S3 blobs).
        self.storage = (storage if storage is not None else
                        TorrentStorage(meta, save_path, direct_writes=self.settings.direct_io))
        self.pieces = Pieces(meta, self.storage, session)
        self.tracker_tiers = trackers if trackers is not None else [list(t) for t in meta.trackers]
        pads = self.pieces.pad_blocks
        self.swarm = Swarm(
            meta.num_pieces, meta.piece_length, meta.total_length, self.settings,
            rng=self.rng, now=clock(), pad_blocks=pads, peers=peers or (),
            trackers=bool(self.tracker_tiers), info_hash=meta.info_hash)
        self.wanted = Wanted(self, file_priorities, sequential)
        self.state = TorrentState.CHECKING
        self.error: str | None = None
        self.complete = asyncio.Event()
        self.buffers = self.pieces.buffers
        self.jobs = Jobs(meta.name)
        self._stopping = False
        #: BEP 19 web seeds (the hub's origin in hybrid mode); peers come first.
        self.web_seeds = [u for u in (meta.url_list if web_seeds is None else web_seeds)
                          if u.startswith(("http://", "https://"))]
        self.web_seed_driver = WebSeedDriver(self, self.pieces)
        self.disk = OnDisk(session, meta, self.storage, save_path)
        self.resume_file = self.disk.resume_file
        self._down_bucket = TokenBucket(self.settings.torrent_download_rate_limit, None)
        self._up_limiter = RateLimiter(self.settings.torrent_upload_rate_limit)
        self.uploads = Uploader(self, self._up_limiter, None if seed_mode else self.pieces.verifier)
        self.pieces.on_written = self.uploads.keep_written
        self.pex = PexDriver(self)
        self.tracker = TrackerDriver(self)
        #: The task running :meth:`run` (set by the session; stop() cancels it first).
        self.run_task: asyncio.Task[None] | None = None

    file_priorities = property(lambda self: self.wanted.file_priorities)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the files and find out which pieces we already have (resume + recheck)."""
        wanted = [p > 0 for p in self.file_priorities]
        have = await self.disk.open(self.seed_mode, wanted, self.swarm.picker.priority)
        self.swarm.load_have(have)
        self.swarm.dialer.own.add(self.session.listen_addr)
        log.info("%s: %d/%d pieces on disk", self.meta.name, self.num_have, len(have))
        if self.swarm.finished:
            self._set_complete(first=False)
        else:
            self.state = TorrentState.DOWNLOADING

    async def run(self) -> None:
        """Run the periodic jobs until :meth:`stop`; each job's failure is logged, not fatal."""
        jobs: list[Callable[[], Awaitable[None]]] = [self._tick_loop, self._resume_loop]
        jobs += [functools.partial(self.web_seed_driver.loop, url) for url in self.web_seeds]
        await self.jobs.run(jobs)

    async def stop(self) -> None:
        """Stop jobs, announce ``stopped``, close peers, save resume data; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.swarm.stop()
        task = self.run_task
        if task is not None and not task.done():
            task.cancel()
            await settle(asyncio.shield(task), 10)
        # "stopped"'s reply is awaited last: nothing below needs it (shorter `get` exits).
        stopped = asyncio.ensure_future(self.tracker.stopped())
        try:
            for peer in list(self.peers):
                peer.close("torrent stopped")
            await self.jobs.drain(10)
            self.wanted.fail_waiters("the torrent stopped")
            await self.save_resume()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.session.disk_pool, self.storage.close)
        finally:
            await stopped
        if self.state is not TorrentState.ERROR:
            self.state = TorrentState.STOPPED

    async def save_resume(self) -> None:
        await self.disk.save(self.have)

    def set_rate_limits(self, download: int, upload: int) -> None:
        """Change this torrent's limits (bytes/s, 0 = none) while it runs (the daemon's API)."""
        self.settings = self.settings.replace(torrent_download_rate_limit=download,
                                              torrent_upload_rate_limit=upload)
        self._down_bucket.set_rate(download)
        self._up_limiter.set_rate(upload)

    # -- chosen files, sequential, streaming (the daemon's and --serve's API) ----------------
    async def set_file_priorities(self, priorities: Sequence[int]) -> None:
        await self.wanted.set_file_priorities(priorities)

    def set_sequential(self, on: bool) -> None:
        """Download in order with a read-ahead window (for streaming), or rarest-first."""
        self.swarm.set_sequential(on)

    def prioritize_range(self, offset: int, length: int, priority: int = 7) -> list[int]:
        return self.wanted.prioritize_range(offset, length, priority)

    def restore_priorities(self, indices: Iterable[int]) -> None:
        self.wanted.restore_priorities(indices)

    async def wait_pieces(self, indices: Iterable[int]) -> None:
        await self.wanted.wait_pieces(indices)

    def _piece_done(self, index: int) -> None:
        self.wanted.piece_done(index)

    def _reopen_if_unfinished(self, was_finished: bool) -> None:
        if not was_finished or self.swarm.finished:
            return
        if self.state in (TorrentState.SEEDING, TorrentState.FINISHED):
            self.state = TorrentState.DOWNLOADING
            self.complete.clear()
            for url in self.web_seeds:
                self._spawn(self.web_seed_driver.loop(url))

    # -- carrying out the core's actions ---------------------------------------------------------
    def _flush(self) -> None:
        """Carry out the core's queued actions (re-entrant: closing a peer reports back).
        Peer handles are our :class:`Peer` objects."""
        swarm = self.swarm
        while actions := swarm.take():
            for action in other_actions(actions, swarm.peers):  # one write per peer
                match action:
                    case act.Close(peer=peer, reason=reason):
                        peer.close(reason)  # type: ignore[attr-defined]  # (a Peer)
                    case act.Serve(peer=peer):
                        self.uploads.wake(peer)  # type: ignore[arg-type]  # no cast(): a call
                    case act.Verify(index=index, want_digests=want):  # small: _verified now
                        self.pieces.start_verify(index, want, self.uploads.wants_v1(index),
                                                 self._verified, self._spawn)
                    case act.Connect(addr=addr):
                        self._spawn(admission.dial(self, addr))
                    case act.Announce(event=event):
                        self._spawn(self.tracker.announce(event))
                    case act.Banned(key=key, reason=reason):
                        log.warning("%s: banning %s: %s", self.meta.name, key, reason)
                    case act.PieceFailed(index=index, sources=sources):
                        log.warning("%s: piece %d failed its hash check (sources: %d)",
                                    self.meta.name, index, sources)
                    case act.Completed():
                        self._set_complete(first=True)

    # -- peers come and go -------------------------------------------------------------------
    def can_accept(self, addr: tuple[str, int], peer_id: bytes,
                   outgoing: bool = False) -> str | None:
        """See :func:`admission.can_accept`."""
        return admission.can_accept(self, addr, peer_id, outgoing)

    def add_peers(self, addrs: list[tuple[str, int]]) -> None:
        """Queue addresses to dial that an embedder found itself (the hub's own tracker)."""
        self.swarm.add_peers(addrs, self.clock())
        self._flush()

    def on_peer_connected(self, peer: Peer) -> None:
        self.session.peer_count += 1
        log.debug("%s: connected %s", self.meta.name, peer)
        if peer.conn.extension:
            peer.send_ext_handshake(self.session.listen_port)
        self.swarm.connected(peer, peer.addr, peer.remote_id, fast=peer.fast, now=self.clock(),
                             outgoing=peer.outgoing)
        self._spawn(self.uploads.serve(peer))
        self._flush()

    def on_peer_disconnected(self, peer: Peer, reason: str) -> None:
        if peer not in self.swarm.peers:
            return
        self.session.peer_count -= 1
        log.debug("%s: disconnected %s: %s", self.meta.name, peer, reason)
        self.swarm.disconnected(peer, self.clock())
        self._flush()

    # -- BEP 11 peer exchange --------------------------------------------------------------
    @property
    def pex_enabled(self) -> bool:
        return self.settings.pex and not self.meta.private

    def on_pex(self, peer: Peer, msg: PexMessage) -> None:
        self.pex.received(peer, msg)

    def on_message(self, peer: Hashable, msg: m.Message) -> None:
        self.swarm.message(peer, msg, self.clock())
        self._flush()

    def on_haves(self, peer: Hashable, indices: list[int]) -> None:
        self.swarm.haves(peer, indices, self.clock())
        self._flush()

    def on_requests(self, peer: Hashable, reqs: list[m.Request]) -> None:
        self.swarm.requests(peer, reqs, self.clock())
        self._flush()

    def on_ext_handshake(self, peer: Hashable, hs: ExtensionHandshake) -> None:
        self.swarm.extension_handshake(peer, reqq=hs.reqq, listen_port=hs.p,
                                       upload_only=hs.upload_only)

    def on_block(self, peer: Hashable, msg: m.Piece) -> None:
        """A block that came the wire core's way (a frame a read cut in two)."""
        data = memoryview(msg.data)
        self.on_blocks(peer, data, [Block(msg.index, msg.begin, len(data))], [0])

    def on_blocks(self, peer: Hashable, view: memoryview, blocks: list[Block],
                  starts: list[int]) -> None:
        """The hot path: the blocks of one read; store those the core wants, then act."""
        now = self.clock()
        kept = self.swarm.blocks_received(peer, blocks, now)
        nbytes = self.pieces.store(view, blocks, starts, kept)
        if self.settings.download_rate_limit or self.settings.torrent_download_rate_limit:
            delay = self.session.charge_download(nbytes, now)
            if self.settings.torrent_download_rate_limit:
                delay = max(delay, self._down_bucket.consume(nbytes, now))
            if delay > 0:
                peer.proto.pause_reading(delay)  # type: ignore[attr-defined]
        self._flush()

    # -- pieces: verify, write, finish -----------------------------------------------------------
    def _verified(self, index: int, verdict: Verdict | SwarmhubError, later: bool) -> None:
        if isinstance(verdict, SwarmhubError):
            self._fail(str(verdict))
            return
        self.swarm.piece_verified(index, verdict[0], self.clock(), verdict[1])
        if verdict[0]:
            self._piece_done(index)
        if later:  # (else the flush that asked carries out what the core says now)
            self._flush()

    def _set_complete(self, *, first: bool) -> None:
        was = self.state
        self.state = TorrentState.SEEDING if self.swarm.complete else TorrentState.FINISHED
        self.complete.set()
        self.pieces.clear()
        if first and was is not self.state:
            log.info("%s: %s", self.meta.name, "complete, seeding" if self.swarm.complete
                     else "every chosen file verified")
            self._spawn(self.save_resume())

    def _fail(self, message: str) -> None:
        log.error("%s: %s", self.meta.name, message)
        self.error = message
        self.state = TorrentState.ERROR
        self.swarm.stop()
        self.complete.set()  # wake waiters; they look at .error
        self.wanted.fail_waiters(message)
        for peer in list(self.peers):
            peer.close("torrent error")

    def hashes_for(self, req: m.HashRequest) -> bytes | None:
        return self.pieces.hashes_for(req, self.have)

    # -- time, trackers, resume ------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while not self._stopping:
            now = self.clock()
            self.swarm.tick(now)
            self._flush()
            if self.pex_enabled:
                self.pex.tick(now)
            await self.uploads.sleep_noting_late(1.0)  # a host short of CPU: see _late

    async def _resume_loop(self) -> None:
        last = self.num_have
        while not self._stopping:
            await asyncio.sleep(self.settings.resume_save_interval)
            if self.num_have != last and self.state is TorrentState.DOWNLOADING:
                last = self.num_have
                await self.save_resume()

    # -- tasks -----------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> None:
        self.jobs.spawn(coro)

