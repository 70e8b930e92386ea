"""One torrent in a session: the asyncio driver around its sans-IO :class:`Swarm`.

Every swarm decision (picking, choking, super-seeding, strikes and bans, dials and
announces) is the core's; this class only carries out its actions — socket writes,
piece reads for uploads, hashing and writing assembled pieces in the thread pools,
tracker and web-seed HTTP — and feeds it events with the loop's clock. Whole pieces are
assembled in memory (bounded by the picker's in-progress pieces and the core's
unverified-bytes limit), then hashed and written off the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, cast

from swarmhub.engine import mse_transport
from swarmhub.engine.actions import (
    Announce,
    Banned,
    Broadcast,
    Close,
    Completed,
    Connect,
    PieceFailed,
    Send,
    Serve,
    Verify,
)
from swarmhub.engine.peer import Peer
from swarmhub.engine.peerstate import RateMeter
from swarmhub.engine.pex import FLAG_REACHABLE, PexPeer
from swarmhub.engine.picker import PiecePicker
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket
from swarmhub.engine.selection import piece_priorities
from swarmhub.engine.services import TorrentServices
from swarmhub.engine.swarm import Swarm, ban_key
from swarmhub.errors import StorageError, SwarmhubError
from swarmhub.metainfo.merkle import hashes_with_proof, next_pow2, tree_layers, zero_root
from swarmhub.metainfo.model import BLOCK_SIZE, Metainfo
from swarmhub.storage.files import PieceBuffer, TorrentStorage, piece_buffer
from swarmhub.storage.resume import (
    load_resume,
    make_resume,
    resume_path,
    save_resume,
    trusted_pieces,
)
from swarmhub.storage.verify import PieceVerifier, recheck
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import PexMessage, encode_pex

__all__ = ["Torrent", "TorrentState", "TorrentStatus"]

log = logging.getLogger(__name__)


class TorrentState(Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    #: every chosen piece verified, some files left out (we upload what we have)
    FINISHED = "finished"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class TorrentStatus:
    """A snapshot for progress displays and tests."""

    state: TorrentState
    progress: float
    pieces_have: int
    num_pieces: int
    bytes_have: int
    total_bytes: int
    download_rate: float
    upload_rate: float
    downloaded: int
    uploaded: int
    peers: int
    error: str | None
    banned: int
    hash_failures: int
    #: Bytes that came from BEP 19 web seeds (the hub) rather than from peers.
    webseed_bytes: int = 0
    #: Why a download is not moving (every peer banned, none unchoked us…), else None.
    stalled: str | None = None
    #: Bytes of the pieces we want (all of them unless files were left out), and of
    #: those, how many we have: what a progress bar for a selective download shows.
    wanted_bytes: int = 0
    wanted_have: int = 0


class Torrent:
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
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.meta = meta
        self.save_path = save_path
        self.seed_mode = seed_mode
        self.rng = rng or random.Random()
        self.clock = clock
        self.storage = TorrentStorage(meta, save_path, direct_writes=self.settings.direct_io)
        self.verifier = PieceVerifier(meta)
        self.tracker_tiers = trackers if trackers is not None else [list(t) for t in meta.trackers]
        pads = _pad_blocks(meta)
        self.swarm = Swarm(
            meta.num_pieces, meta.piece_length, meta.total_length, self.settings,
            rng=self.rng, now=clock(), pad_blocks=pads, peers=peers or (),
            trackers=bool(self.tracker_tiers))
        #: per data file (``meta.data_files`` order): 0 skip, 1 normal, up to 7 sooner
        self.file_priorities = list(file_priorities or [1] * len(meta.data_files))
        #: piece priorities from the files alone (what a reader's boost returns to)
        self._base_priorities = piece_priorities(meta, self.file_priorities)
        self.swarm.picker.set_priorities(self._base_priorities)
        self.swarm.set_sequential(sequential)
        self._piece_waiters: dict[int, list[asyncio.Future[None]]] = {}
        #: Pieces with pad blocks (never received, must read as zeros): always a fresh buffer.
        self._padded = frozenset(i for i, _ in pads)
        #: Verified pieces' buffers, reused: a fresh 1 MiB bytearray is mmap'd, zeroed and
        #: page-faulted in, then unmapped: ~15% of a loopback download's CPU.
        self._spare: list[PieceBuffer] = []
        #: as many as the pieces hashing/writing may hold (else each burst allocates anew)
        self._spare_cap = _SPARE_BUFFERS + self.settings.max_unverified_bytes // meta.piece_length
        self.state = TorrentState.CHECKING
        self.error: str | None = None
        self.complete = asyncio.Event()
        #: Pieces being assembled from peers' blocks (the core decides what is kept).
        self.buffers: dict[int, PieceBuffer] = {}
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._reads: dict[int, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        #: BEP 19 web seeds (the hub's origin in hybrid mode); peers come first.
        self.web_seeds = [u for u in (meta.url_list if web_seeds is None else web_seeds)
                          if u.startswith(("http://", "https://"))]
        self._ws_reserved: set[int] = set()
        self._hash_trees: dict[bytes, list[list[bytes]]] = {}
        # One resume file per (torrent, folder): a seed and a download of the same torrent
        # in two folders must not overwrite each other's state.
        folder = hashlib.sha1(str(save_path.resolve()).encode()).hexdigest()[:12]
        base = resume_path(session.state_dir, meta.info_hash)
        self.resume_file = base.with_name(f"{base.stem}-{folder}{base.suffix}")
        self._down_bucket = TokenBucket(self.settings.torrent_download_rate_limit, None)
        self._up_limiter = RateLimiter(self.settings.torrent_upload_rate_limit)
        #: The task running :meth:`run` (set by the session; stop() cancels it first).
        self.run_task: asyncio.Task[None] | None = None

    # -- the core's state, for callers of the old API ------------------------------------------
    peers = property(lambda self: self.swarm.peers.keys())
    have = property(lambda self: self.swarm.have)
    num_have = property(lambda self: self.swarm.num_have)
    banned = property(lambda self: self.swarm.banned)
    hash_failures = property(lambda self: self.swarm.hash_failures)
    downloaded = property(lambda self: self.swarm.downloaded)
    uploaded = property(lambda self: self.swarm.uploaded)
    webseed_bytes = property(lambda self: self.swarm.webseed_bytes)

    @property
    def down(self) -> RateMeter:
        return self.swarm.down

    @property
    def up(self) -> RateMeter:
        return self.swarm.up

    @property
    def picker(self) -> PiecePicker:
        return self.swarm.picker

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the files and find out which pieces we already have (resume + recheck)."""
        loop = asyncio.get_running_loop()
        pool = self.session.disk_pool
        existed = await loop.run_in_executor(pool, self.storage.exists)
        wanted = [p > 0 for p in self.file_priorities]
        await loop.run_in_executor(pool, self.storage.set_selection, wanted)
        await loop.run_in_executor(pool, self.storage.open, not self.seed_mode)
        n = self.meta.num_pieces
        have = bytearray(b"\x01" * n) if self.seed_mode else bytearray(n)
        if existed and not self.seed_mode:
            resume = load_resume(self.resume_file)
            if resume is not None and resume.info_hash == self.meta.info_hash:
                have = await loop.run_in_executor(
                    pool, trusted_pieces, resume, self.meta, self.storage)
            prio = self.swarm.picker.priority  # skipped pieces: not worth hashing holes
            todo = [i for i in range(n) if not have[i] and prio(i)]
            if todo:
                threads = self.session.hash_threads
                checked = await loop.run_in_executor(
                    None, lambda: recheck(self.meta, self.storage, only=todo, threads=threads))
                for i in todo:
                    if checked[i]:
                        have[i] = 1
        self.swarm.load_have(have)
        self.swarm.dialer.own.add(self.session.listen_addr)
        log.info("%s: %d/%d pieces on disk", self.meta.name, self.num_have, n)
        if self.swarm.finished:
            self._set_complete(first=False)
        else:
            self.state = TorrentState.DOWNLOADING

    async def run(self) -> None:
        """Run the periodic jobs until :meth:`stop`; each job's failure is logged, not fatal."""
        jobs: list[Callable[[], Awaitable[None]]] = [self._tick_loop, self._resume_loop]
        jobs += [functools.partial(self._webseed_loop, url) for url in self.web_seeds]
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(self._guard(job))

    async def _guard(self, job: Callable[[], Awaitable[None]]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await job()
            except Exception:  # a bug in one job must not take the torrent down
                name = getattr(job, "__name__", None) or repr(job)
                log.exception("%s: background job %s failed", self.meta.name, name)

    async def stop(self) -> None:
        """Stop jobs, announce ``stopped``, close peers, save resume data; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.swarm.stop()
        task = self.run_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 10)
        tracker = self.swarm.tracker
        if tracker is not None and tracker.announced:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._announce_once("stopped"), 5)
        for peer in list(self.peers):
            peer.close("torrent stopped")
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(t), 10)
        self._fail_waiters("the torrent stopped")
        await self.save_resume()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.session.disk_pool, self.storage.close)
        if self.state is not TorrentState.ERROR:
            self.state = TorrentState.STOPPED

    async def save_resume(self) -> None:
        loop = asyncio.get_running_loop()

        def work() -> None:
            save_resume(self.resume_file, make_resume(self.meta, self.storage, self.have))

        try:
            await loop.run_in_executor(self.session.disk_pool, work)
        except (OSError, SwarmhubError) as exc:
            log.warning("%s: could not save resume data: %s", self.meta.name, exc)

    def set_rate_limits(self, download: int, upload: int) -> None:
        """Change this torrent's limits (bytes/s, 0 = none) while it runs (the daemon's API)."""
        self.settings = self.settings.replace(torrent_download_rate_limit=download,
                                              torrent_upload_rate_limit=upload)
        self._down_bucket.set_rate(download)
        self._up_limiter.set_rate(upload)

    # -- chosen files, sequential, streaming (the daemon's and --serve's API) ----------------
    async def set_file_priorities(self, priorities: Sequence[int]) -> None:
        """One priority per data file (``meta.data_files`` order, as ``swarmhub info``
        numbers them): 0 skip, 1 normal, up to 7 sooner. A file chosen now that was left
        out before is created with the bytes already held for it; a finished download
        that wants more goes back to downloading."""
        prios = list(priorities)
        pp = piece_priorities(self.meta, prios)  # validates the count
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self.session.disk_pool, self.storage.set_selection, [p > 0 for p in prios])
        self.file_priorities = prios
        self._base_priorities = pp
        was = self.swarm.finished
        self.swarm.set_piece_priorities(pp, self.clock())
        self._reopen_if_unfinished(was)
        self._flush()

    def set_sequential(self, on: bool) -> None:
        """Download in order with a read-ahead window (for streaming), or rarest-first."""
        self.swarm.set_sequential(on)

    def prioritize_range(self, offset: int, length: int, priority: int = 7) -> list[int]:
        """Raise the pieces holding piece-space bytes ``offset..offset+length`` to
        ``priority`` (a player's read or seek); returns the pieces still missing."""
        pl = self.meta.piece_length
        first, last = offset // pl, (offset + max(length, 1) - 1) // pl
        missing = []
        was = self.swarm.finished
        for i in range(first, min(last, self.meta.num_pieces - 1) + 1):
            if self.swarm.have[i]:
                continue
            missing.append(i)
            if self.swarm.picker.priority(i) < priority:
                self.swarm.set_piece_priority(i, priority, self.clock())
        self._reopen_if_unfinished(was)
        self._flush()
        return missing

    def restore_priorities(self, indices: Iterable[int]) -> None:
        """Undo :meth:`prioritize_range` for these pieces (the reader went away or
        seeked elsewhere): back to what their files say."""
        picker, base = self.swarm.picker, self._base_priorities
        was = self.swarm.finished
        for i in indices:
            if picker.priority(i) != base[i]:
                self.swarm.set_piece_priority(i, base[i], self.clock())
        self._reopen_if_unfinished(was)
        self._flush()

    async def wait_pieces(self, indices: Iterable[int]) -> None:
        """Return once every piece in ``indices`` is verified (raises
        :class:`SwarmhubError` if the torrent fails or stops first)."""
        loop = asyncio.get_running_loop()
        futs = []
        for i in indices:
            if not self.swarm.have[i]:
                fut: asyncio.Future[None] = loop.create_future()
                self._piece_waiters.setdefault(i, []).append(fut)
                futs.append(fut)
        if futs:
            await asyncio.gather(*futs)

    def _piece_done(self, index: int) -> None:
        for fut in self._piece_waiters.pop(index, ()):
            if not fut.done():
                fut.set_result(None)

    def _fail_waiters(self, why: str) -> None:
        waiters, self._piece_waiters = self._piece_waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(SwarmhubError(why))

    def _reopen_if_unfinished(self, was_finished: bool) -> None:
        if not was_finished or self.swarm.finished:
            return
        if self.state in (TorrentState.SEEDING, TorrentState.FINISHED):
            self.state = TorrentState.DOWNLOADING
            self.complete.clear()
            for url in self.web_seeds:
                self._spawn(self._webseed_loop(url))

    def status(self) -> TorrentStatus:
        now = self.clock()
        s = self.swarm
        n = self.meta.num_pieces
        prio, size = s.picker.priority, s.piece_size
        wanted = [i for i in range(n) if prio(i)]
        wanted_bytes = sum(map(size, wanted))
        wanted_have = sum(size(i) for i in wanted if s.have[i])
        return TorrentStatus(
            wanted_bytes=wanted_bytes, wanted_have=wanted_have,
            state=self.state, pieces_have=s.num_have,
            progress=wanted_have / wanted_bytes if wanted_bytes else 1.0,
            num_pieces=n, bytes_have=s.bytes_have(), total_bytes=self.meta.total_length,
            download_rate=s.down.rate(now), upload_rate=s.up.rate(now),
            downloaded=s.downloaded, uploaded=s.uploaded, peers=len(s.peers),
            error=self.error, banned=len(s.banned), hash_failures=s.hash_failures,
            webseed_bytes=s.webseed_bytes,
            stalled=s.stall_reason() if self.state is TorrentState.DOWNLOADING else None,
        )

    # -- carrying out the core's actions ---------------------------------------------------------
    def _flush(self) -> None:
        """Carry out the core's queued actions (re-entrant: closing a peer reports back).
        Peer handles are our :class:`Peer` objects."""
        swarm = self.swarm
        while actions := swarm.take():
            for action in actions:
                match action:
                    case Send(peer=peer, messages=msgs):
                        cast(Peer, peer).send_many(msgs)
                    case Broadcast(peers=peers, messages=msgs):
                        for peer in peers:
                            cast(Peer, peer).send_many(msgs)
                    case Close(peer=peer, reason=reason):
                        cast(Peer, peer).close(reason)
                    case Serve(peer=peer):
                        cast(Peer, peer).upload_wakeup.set()
                    case Verify(index=index, want_digests=want):
                        self._spawn(self._verify(index, want))
                    case Connect(addr=addr):
                        self._spawn(self._dial(addr))
                    case Announce(event=event):
                        self._spawn(self._announce(event))
                    case Banned(key=key, reason=reason):
                        log.warning("%s: banning %s: %s", self.meta.name, key, reason)
                    case PieceFailed(index=index, sources=sources):
                        log.warning("%s: piece %d failed its hash check (sources: %d)",
                                    self.meta.name, index, sources)
                    case Completed():
                        self._set_complete(first=True)

    # -- peers come and go -------------------------------------------------------------------
    def ban_key(self, addr: tuple[str, int], peer_id: bytes) -> Hashable:
        return ban_key(addr, peer_id)

    def can_accept(self, addr: tuple[str, int], peer_id: bytes,
                   outgoing: bool = False) -> str | None:
        """Why a peer that finished its handshake may not join (None: it may): the
        session's limits, its embedder's ``peer_filter``, then the swarm's rules (bans,
        duplicates, the per-torrent cap — which may evict an idle peer to make room)."""
        if self._stopping or self.state is TorrentState.ERROR:
            return "torrent is not active"
        if self.session.peer_count >= self.settings.max_connections:
            return "too many connections in this session"
        admit = self.session.peer_filter
        if admit is not None:
            reason = admit(self.meta.info_hash, addr, peer_id, outgoing)
            if reason:
                return reason
        self._resolve_duplicate(peer_id, outgoing)
        reason = self.swarm.can_accept(addr, peer_id, self.clock())
        self._flush()
        return reason

    def _resolve_duplicate(self, peer_id: bytes, outgoing: bool) -> None:
        """Two peers that dialled each other at once (PEX makes that common) would each
        drop the other's second connection and end with none: both ends keep the one the
        lower peer id opened (as libtorrent does) by closing the other before the swarm
        sees the duplicate."""
        if (self.session.peer_id < peer_id) != outgoing:
            return  # the new connection is the one to drop: the swarm refuses it
        for other in cast("list[Peer]", list(self.swarm.peers)):
            if other.remote_id == peer_id and other.outgoing != outgoing:
                other.close("duplicate connection: keeping the one the lower peer id opened")

    def add_peers(self, addrs: list[tuple[str, int]]) -> None:
        """Queue addresses to dial that an embedder found itself (the hub's own tracker)."""
        self.swarm.add_peers(addrs, self.clock())
        self._flush()

    def on_peer_connected(self, peer: Peer) -> None:
        self.session.peer_count += 1
        log.debug("%s: connected %s", self.meta.name, peer)
        if peer.conn.extension:
            peer.send_ext_handshake(self.session.listen_port)
        self.swarm.connected(peer, peer.addr, peer.remote_id, fast=peer.fast, now=self.clock())
        self._spawn(self._upload_loop(peer))
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

    def _own_addrs(self) -> set[tuple[str, int]]:
        """Addresses that are us (never dialled, never taken from PEX)."""
        own = set(self.swarm.dialer.own)
        host, port = self.session.listen_addr
        if port and host in ("", "0.0.0.0", "::"):
            own |= {("127.0.0.1", port), ("::1", port)}
        return own

    def on_pex(self, peer: Peer, msg: PexMessage) -> None:
        """A peer's ut_pex message: its new peers go to the core like a tracker's."""
        now = self.clock()
        if peer.pex is None:
            peer.pex = PexPeer(now)
        addrs = peer.pex.received(now, msg, own=self._own_addrs())
        if addrs:
            log.debug("%s: %d peers from PEX of %s", self.meta.name, len(addrs), peer)
            self.swarm.add_peers(addrs, now)
            self._flush()

    def _pex_tick(self, now: float) -> None:
        """Send each ut_pex peer the changes in our peer list, about once a minute."""
        current: dict[tuple[str, int], int] = {}
        peers = cast("list[Peer]", list(self.swarm.peers))
        for peer in peers:
            if peer.outgoing:
                current[peer.addr] = FLAG_REACHABLE
            elif peer.listen_port:
                current[(peer.addr[0], peer.listen_port)] = 0
        for peer in peers:
            their_id = peer.ext_ids.get("ut_pex")
            if not their_id:
                continue
            if peer.pex is None:
                peer.pex = PexPeer(now)
            them = {peer.addr} if peer.outgoing else {(peer.addr[0], peer.listen_port or 0)}
            msg = peer.pex.poll(now, current, exclude=them)
            if msg is not None:
                peer.send(m.Extended(their_id, encode_pex(msg)))

    def on_message(self, peer: Hashable, msg: m.Message) -> None:
        self.swarm.message(peer, msg, self.clock())
        self._flush()

    def on_reqq(self, peer: Hashable, reqq: int) -> None:
        self.swarm.set_reqq(peer, reqq)

    def on_block(self, peer: Hashable, msg: m.Piece) -> None:
        """The hot path: store the block if the core wants it, then act."""
        now = self.clock()
        data = msg.data
        n = len(data)
        index = msg.index
        if self.swarm.block(peer, index, msg.begin, n, now):
            buf = self.buffers.get(index)
            if buf is None:
                buf = self.buffers[index] = self._new_buffer(index)
            buf[msg.begin:msg.begin + n] = data
        if self.settings.download_rate_limit or self.settings.torrent_download_rate_limit:
            delay = self.session.charge_download(n, now)
            if self.settings.torrent_download_rate_limit:
                delay = max(delay, self._down_bucket.consume(n, now))
            if delay > 0:
                peer.proto.pause_reading(delay)  # type: ignore[attr-defined]
        self._flush()

    async def _dial(self, addr: tuple[str, int]) -> None:
        try:
            await mse_transport.dial(self.session, self, addr, self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:
            log.debug("%s: could not connect to %s: %s", self.meta.name, addr, exc)
        finally:
            self.swarm.connect_done(addr)

    # -- pieces: verify, write, finish -----------------------------------------------------------
    async def _verify(self, index: int, want_digests: bool) -> None:
        buf = self.buffers.pop(index, None)
        if buf is None:
            buf = bytearray(self.meta.piece_size(index))  # nothing kept: fails, blames none
        try:
            ok, digests = await self._check_and_write(index, buf, want_digests)
        except StorageError as exc:
            self._fail(str(exc))
            return
        if len(buf) == self.meta.piece_length and len(self._spare) < self._spare_cap:
            self._spare.append(buf)  # hashed and written: nothing holds it any more
        self.swarm.piece_verified(index, ok, self.clock(), digests)
        if ok:
            self._piece_done(index)
        self._flush()

    def _new_buffer(self, index: int) -> PieceBuffer:
        """A buffer for piece ``index``: a spare one when it fits (every byte of it will be
        overwritten by a block), else a fresh, zeroed one."""
        size = self.meta.piece_size(index)
        if self._spare and size == self.meta.piece_length and index not in self._padded:
            return self._spare.pop()
        return piece_buffer(size)  # page-aligned: written with O_DIRECT as it is

    async def _check_and_write(
        self, index: int, buf: PieceBuffer, want_digests: bool
    ) -> tuple[bool, dict[int, bytes] | None]:
        """Hash on the hash pool (all cores), then write on the disk pool. Block digests
        come back when asked for, and always for a failed piece (they catch the liar)."""
        loop = asyncio.get_running_loop()
        session = self.session
        view = memoryview(buf)

        def check() -> tuple[bool, dict[int, bytes] | None]:
            ok = self.verifier.check(index, view)
            return ok, _block_digests(buf) if want_digests or not ok else None

        ok, digests = await loop.run_in_executor(session.hash_pool, check)
        if ok:
            await loop.run_in_executor(
                session.disk_pool, self.storage.write, index * self.meta.piece_length, view)
        return ok, digests

    def _set_complete(self, *, first: bool) -> None:
        was = self.state
        self.state = TorrentState.SEEDING if self.swarm.complete else TorrentState.FINISHED
        self.complete.set()
        self.buffers.clear()
        self._spare.clear()
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
        self._fail_waiters(message)
        for peer in list(self.peers):
            peer.close("torrent error")

    def hashes_for(self, req: m.HashRequest) -> bytes | None:
        """Answer a BEP 52 hash request from the piece layers (base layer = piece layer)."""
        meta = self.meta
        layer_hashes = meta.piece_layers.get(req.pieces_root)
        leaves_per_piece = meta.piece_length // BLOCK_SIZE
        if layer_hashes is None or req.base_layer != leaves_per_piece.bit_length() - 1:
            return None
        tree = self._hash_trees.get(req.pieces_root)
        if tree is None:
            entry = next((f for f in meta.files if f.pieces_root == req.pieces_root), None)
            if entry is None:
                return None
            hashes = [layer_hashes[i:i + 32] for i in range(0, len(layer_hashes), 32)]
            width = max(1, next_pow2(-(-entry.length // BLOCK_SIZE)) // leaves_per_piece)
            tree = tree_layers(hashes, max(width, len(hashes)), zero_root(leaves_per_piece))
            self._hash_trees[req.pieces_root] = tree
        return hashes_with_proof(tree, req.index, req.length, req.proof_layers)

    # -- uploading ------------------------------------------------------------------------------
    async def _read_piece(self, index: int) -> bytes:
        """A piece for uploading, from the read cache or one shared disk read."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        fut = self._reads.get(index)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.session.disk_pool, self.storage.read_piece, index)
            self._reads[index] = fut
            # Cache before any waiter resumes: the callback is scheduled first.
            fut.add_done_callback(functools.partial(self._read_done, index))
        return await asyncio.shield(fut)

    def _read_done(self, index: int, fut: asyncio.Future[bytes]) -> None:
        self._reads.pop(index, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        self._cache[index] = fut.result()
        while len(self._cache) * self.meta.piece_length > self.settings.read_cache_bytes \
                and len(self._cache) > 2:
            self._cache.popitem(last=False)

    async def _upload_loop(self, peer: Peer) -> None:
        """Serve the requests the core accepted, within rate limits and send-buffer space.

        Requests whose piece is cached go out in batches of up to 1 MiB with one
        ``writelines`` (one writev) of header + memoryview pairs from the wire core.
        """
        ps = self.swarm.peers.get(peer)
        if ps is None:
            return  # it left before this task ran
        incoming = ps.incoming
        send_piece = peer.conn.send_piece
        while not peer.closed:
            if not incoming:
                peer.upload_wakeup.clear()
                await peer.upload_wakeup.wait()
                continue
            req = incoming[0]
            # Read each round: limits may change while the torrent runs (set_rate_limits).
            limited = bool(self.settings.upload_rate_limit) or not self._up_limiter.unlimited
            if req.index not in self._cache:
                try:
                    await self._read_piece(req.index)
                except StorageError as exc:
                    self._fail(str(exc))
                    return
            if limited:
                await self.session.charge_upload(req.length)
                if not self._up_limiter.unlimited:
                    await self._up_limiter.acquire(req.length)
            await peer.proto.wait_writable()
            if peer.closed:
                return
            parts: list[bytes | memoryview | bytearray] = []
            served: list[m.Request] = []
            size = 0
            cache = self._cache
            while incoming and size < (1 << 20):
                req = incoming[0]
                data = cache.get(req.index)
                if data is None:
                    break  # read it on the next round
                incoming.popleft()
                head, body = send_piece(req.index, req.begin,
                                        memoryview(data)[req.begin:req.begin + req.length])
                parts += (head, body)
                served.append(req)
                size += req.length
                if limited:
                    break  # one block per token-bucket charge
            if not parts:
                await asyncio.sleep(0)  # never spin without yielding
                continue
            peer.proto.writelines(parts)
            self.swarm.blocks_sent(peer, served, size, self.clock())
            self._flush()
            await asyncio.sleep(0)  # let other peers and the network in

    # -- time, trackers, resume ------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while not self._stopping:
            now = self.clock()
            self.swarm.tick(now)
            self._flush()
            if self.pex_enabled:
                self._pex_tick(now)
            await asyncio.sleep(1.0)

    async def _resume_loop(self) -> None:
        last = self.num_have
        while not self._stopping:
            await asyncio.sleep(self.settings.resume_save_interval)
            if self.num_have != last and self.state is TorrentState.DOWNLOADING:
                last = self.num_have
                await self.save_resume()

    async def _announce_once(self, event: str | None) -> Any:
        from swarmhub.discovery.tracker import AnnounceRequest

        tiers = self.session.tracker_tiers(self.meta.info_hash, self.tracker_tiers)
        left = self.meta.total_length - self.swarm.bytes_have()
        req = AnnounceRequest(
            info_hash=self.meta.info_hash, peer_id=self.session.peer_id,
            port=self.session.listen_port, uploaded=self.uploaded, downloaded=self.downloaded,
            left=max(0, left), event=event, numwant=50, compact=True, key=None,
            tracker_id=None, ip=None,
        )
        return await tiers.announce(await self.session.http(), req)

    async def _announce(self, event: str | None) -> None:
        """One announce the core asked for; its answer (or failure) goes back to the core."""
        try:
            resp = await self._announce_once(event)
        except SwarmhubError as exc:  # TrackerError, or the session closing under us
            log.warning("%s: tracker: %s", self.meta.name, exc)
            self.swarm.tracker_failed(self.clock(), str(exc))
            return
        self.swarm.tracker_response(
            self.clock(), interval=max(resp.min_interval or 0, resp.interval),
            peers=resp.peers, seeds=resp.complete)
        self._flush()

    # -- web seeds (BEP 19) ---------------------------------------------------------------------
    def webseed_rate(self) -> float:
        """Recent web-seed bytes/s (kept apart so peers' share can be told from the hub's)."""
        return self.swarm.webseed_meter.rate(self.clock())

    async def _webseed_loop(self, url: str) -> None:
        """Fetch what the core picks from one web seed while downloading; peers first."""
        from swarmhub.engine.webseed import WebSeed, WebSeedBusy, WebSeedError

        ws = WebSeed(url, self.meta, await self.session.http(),
                     max_request=self.settings.web_seed_request_size)
        await self._sleep(self.settings.web_seed_grace)
        failures, backoff = 0, 5.0
        # With no leecher among the connected peers there is nobody to trade with, and
        # nothing the peers could later spare the web seed: it takes any missing piece
        # then, not only what the swarm lacks (a web seed that sat unused while the hub's
        # slow seed trickled made hybrid the slow choice). A super-seeding seed hides its
        # pieces, so peers count as seeds too while the tracker counts as many seeds as
        # we have peers. With leechers around, peers come first and the web seed fills
        # what the swarm lacks.
        while self.state is TorrentState.DOWNLOADING and not self._stopping and not ws.banned:
            sw = self.swarm
            alone = (sw.tracker_seeds >= len(sw.peers)
                     or all(ps.is_seed for ps in sw.peers.values()))
            batch = sw.webseed_batch(self.clock(), self._ws_reserved, anything=alone)
            if not batch:
                await self._sleep(0.5)
                continue
            self._ws_reserved.update(batch)
            try:
                async with contextlib.aclosing(ws.fetch(batch)) as pieces:
                    async for index, buf in pieces:
                        if self.have[index]:
                            continue
                        ok, _ = await self._check_and_write(index, buf, False)
                        if ok:
                            self.buffers.pop(index, None)
                            self.swarm.webseed_piece(index, len(buf), self.clock())
                            self._piece_done(index)
                            self._flush()
                        else:
                            self.swarm.hash_failures += 1
                            if ws.strike(index):
                                break
                failures, backoff = 0, 5.0
            except WebSeedBusy as exc:
                log.info("%s: web seed busy, retrying in %.0f s", self.meta.name, exc.retry_after)
                await self._sleep(min(exc.retry_after, 60.0))
            except WebSeedError as exc:
                failures += 1
                log.warning("%s: %s", self.meta.name, exc)
                if failures >= 10:
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, 300.0)
            except StorageError as exc:
                self._fail(str(exc))
                return
            finally:
                self._ws_reserved.difference_update(batch)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the torrent stops or completes."""
        end = self.clock() + seconds
        while not self._stopping and self.state is TorrentState.DOWNLOADING:
            left = end - self.clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))

    # -- tasks -----------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(self._guard(lambda: coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


#: Spare piece buffers kept per torrent (each one piece long).
_SPARE_BUFFERS = 8


def _pad_blocks(meta: Metainfo) -> list[tuple[int, int]]:
    """Blocks lying wholly inside pad files: never requested, always zeros."""
    out: list[tuple[int, int]] = []
    pl = meta.piece_length
    for f in meta.files:
        if not f.pad or not f.length:
            continue
        first = -(-f.offset // BLOCK_SIZE) * BLOCK_SIZE
        start = first
        while start + BLOCK_SIZE <= f.end or (start < f.end and f.end == meta.total_length):
            out.append((start // pl, start % pl))
            start += BLOCK_SIZE
    return out


def _block_digests(buf: PieceBuffer) -> dict[int, bytes]:
    view = memoryview(buf)
    return {b: hashlib.sha1(view[b:b + BLOCK_SIZE]).digest()
            for b in range(0, len(buf), BLOCK_SIZE)}
