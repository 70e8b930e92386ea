"""One torrent being downloaded or seeded: the glue between peers, picker, choker and disk.

Decisions live in the pure modules (:mod:`picker`, :mod:`choker`, :mod:`ratelimit`);
this class wires their answers to sockets and the thread pool. Whole pieces are assembled
in memory (bounded by the picker's in-progress pieces), then hashed and written in one
executor call, so the event loop never hashes or touches the disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmhub.engine import mse_transport
from swarmhub.engine.choker import ChokeDecision, ChokerSettings, PeerStats, choose_unchoked
from swarmhub.engine.peer import Peer, RateMeter
from swarmhub.engine.picker import Block, PiecePicker
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket
from swarmhub.engine.superseed import SuperSeeder
from swarmhub.errors import StorageError, SwarmhubError, TrackerError
from swarmhub.metainfo.merkle import hashes_with_proof, next_pow2, tree_layers, zero_root
from swarmhub.metainfo.model import BLOCK_SIZE, Metainfo
from swarmhub.storage.files import TorrentStorage
from swarmhub.storage.resume import (
    load_resume,
    make_resume,
    resume_path,
    save_resume,
    trusted_pieces,
)
from swarmhub.storage.verify import PieceVerifier, recheck
from swarmhub.wire import messages as m

if TYPE_CHECKING:
    from swarmhub.engine.session import Session

__all__ = ["Torrent", "TorrentState", "TorrentStatus"]

log = logging.getLogger(__name__)

MAX_BLOCK = 128 * 1024
_PIECE_HEADER = struct.Struct(">IBII")


class TorrentState(Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
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


class Torrent:
    """State and behaviour of one torrent inside a :class:`Session`."""

    def __init__(
        self,
        session: Session,
        meta: Metainfo,
        save_path: Path,
        *,
        seed_mode: bool = False,
        peers: list[tuple[str, int]] | None = None,
        trackers: list[list[str]] | None = None,
        web_seeds: list[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.meta = meta
        self.save_path = save_path
        self.seed_mode = seed_mode
        self.rng = rng or random.Random()
        self.storage = TorrentStorage(meta, save_path)
        self.verifier = PieceVerifier(meta)
        self.picker = PiecePicker(
            meta.num_pieces, meta.piece_length, meta.total_length,
            rng=self.rng, pad_blocks=_pad_blocks(meta),
        )
        self.have = bytearray(meta.num_pieces)
        self.num_have = 0
        self.state = TorrentState.CHECKING
        self.error: str | None = None
        self.peers: set[Peer] = set()
        self.buffers: dict[int, bytearray] = {}
        self.block_src: dict[int, dict[int, Any]] = {}
        self.failed_blocks: dict[int, dict[int, tuple[Any, bytes]]] = {}
        self.strikes: collections.Counter[Any] = collections.Counter()
        self.banned: set[Any] = set()
        self.hash_failures = 0
        self.down = RateMeter()
        self.up = RateMeter()
        self.downloaded = 0
        self.uploaded = 0
        self.complete = asyncio.Event()
        self.direct_peers = list(peers or [])
        self.candidates: collections.deque[tuple[str, int]] = collections.deque(self.direct_peers)
        self.connecting: set[tuple[str, int]] = set()
        self.tracker_tiers = trackers if trackers is not None else [list(t) for t in meta.trackers]
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._reads: dict[int, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._choke = ChokeDecision(frozenset(), None, 0.0)
        self._stopping = False
        #: BEP 19 web seeds (the hub's origin in hybrid mode); peers come first.
        self.web_seeds = [u for u in (meta.url_list if web_seeds is None else web_seeds)
                          if u.startswith(("http://", "https://"))]
        self.webseed_bytes = 0
        self._ws_meter = RateMeter()
        self._ws_reserved: set[int] = set()
        self._hash_trees: dict[bytes, list[list[bytes]]] = {}
        #: Bytes of complete pieces queued for hashing and writing.
        self._unverified = 0
        # One resume file per (torrent, folder): a seed and a download of the same torrent
        # in two folders must not overwrite each other's state.
        folder = hashlib.sha1(str(save_path.resolve()).encode()).hexdigest()[:12]
        base = resume_path(session.state_dir, meta.info_hash)
        self.resume_file = base.with_name(f"{base.stem}-{folder}{base.suffix}")
        self._down_bucket = TokenBucket(self.settings.torrent_download_rate_limit, None)
        #: Super-seeding state (``settings.super_seeding``), made when we first seed.
        self._ss: SuperSeeder | None = None
        #: Seeds the tracker counts (a super-seeding seed shows us only part of what it has).
        self._tracker_seeds = 0
        self._up_limiter = RateLimiter(self.settings.torrent_upload_rate_limit)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the files and find out which pieces we already have (resume + recheck)."""
        loop = asyncio.get_running_loop()
        pool = self.session.disk_pool
        existed = await loop.run_in_executor(pool, self.storage.exists)
        await loop.run_in_executor(pool, self.storage.open, not self.seed_mode)
        n = self.meta.num_pieces
        if self.seed_mode:
            have = bytearray(b"\x01" * n)
        elif existed:
            have = bytearray(n)
            resume = load_resume(self.resume_file)
            if resume is not None and resume.info_hash == self.meta.info_hash:
                have = await loop.run_in_executor(
                    pool, trusted_pieces, resume, self.meta, self.storage)
            todo = [i for i in range(n) if not have[i]]
            if todo:
                checked = await loop.run_in_executor(
                    None, lambda: recheck(self.meta, self.storage, only=todo))
                for i in todo:
                    if checked[i]:
                        have[i] = 1
        else:
            have = bytearray(n)
        for i in range(n):
            if have[i]:
                self.have[i] = 1
                self.picker.we_have(i)
        self.num_have = sum(self.have)
        log.info("%s: %d/%d pieces on disk", self.meta.name, self.num_have, n)
        if self.num_have == n:
            self._set_complete()
        else:
            self.state = TorrentState.DOWNLOADING

    async def run(self) -> None:
        """Run the periodic jobs until :meth:`stop`; each job's failure is logged, not fatal."""
        jobs: list[Callable[[], Awaitable[None]]] = [
            self._maintenance_loop, self._choker_loop, self._connector_loop,
            self._resume_loop,
        ]
        if self.tracker_tiers:
            jobs.append(self._tracker_loop)
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
        """Close peers, flush and save resume data; safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        for peer in list(self.peers):
            peer.close("torrent stopped")
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 10)
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

    def status(self) -> TorrentStatus:
        now = time.monotonic()
        n = self.meta.num_pieces
        have_bytes = sum(self.meta.piece_size(i) for i in range(n) if self.have[i]) \
            if self.num_have != n else self.meta.total_length
        return TorrentStatus(
            state=self.state,
            progress=self.num_have / n if n else 1.0,
            pieces_have=self.num_have,
            num_pieces=n,
            bytes_have=have_bytes,
            total_bytes=self.meta.total_length,
            download_rate=self.down.rate(now),
            upload_rate=self.up.rate(now),
            downloaded=self.downloaded,
            uploaded=self.uploaded,
            peers=len(self.peers),
            error=self.error,
            banned=len(self.banned),
            hash_failures=self.hash_failures,
            webseed_bytes=self.webseed_bytes,
        )

    # -- peers come and go -------------------------------------------------------------------
    def ban_key(self, addr: tuple[str, int], peer_id: bytes) -> Any:
        """Peers are banned by IP, except on loopback where every test peer shares one."""
        if addr[0].startswith("127.") or addr[0] == "::1":
            return (addr[0], peer_id)
        return addr[0]

    def can_accept(self, addr: tuple[str, int], peer_id: bytes,
                   outgoing: bool = False) -> str | None:
        if self._stopping or self.state is TorrentState.ERROR:
            return "torrent is not active"
        if self.ban_key(addr, peer_id) in self.banned:
            return "peer is banned"
        if len(self.peers) >= self.settings.max_connections_per_torrent:
            return "too many connections for this torrent"
        if self.session.peer_count >= self.settings.max_connections:
            return "too many connections in this session"
        if any(p.remote_id == peer_id for p in self.peers):
            return "already connected to this peer"
        admit = self.session.peer_filter
        return None if admit is None else admit(self.meta.info_hash, addr, peer_id, outgoing)

    def add_peers(self, addrs: list[tuple[str, int]]) -> None:
        """Queue addresses to dial that an embedder found itself (the hub's own tracker)."""
        for addr in addrs:
            if addr not in self.candidates and addr != self.session.listen_addr:
                self.candidates.append(addr)

    def on_peer_connected(self, peer: Peer) -> None:
        self.peers.add(peer)
        self.session.peer_count += 1
        log.debug("%s: connected %s", self.meta.name, peer)
        if peer.conn.extension:
            peer.send_ext_handshake()
        if self._super_seeding():
            assert self._ss is not None
            self._ss.add_peer(peer)
            if peer.fast:  # else say nothing: an empty Bitfield may be left out (BEP 3)
                peer.send(m.HaveNone())
            self._offer(peer)
        elif self.num_have == self.meta.num_pieces and peer.fast:
            peer.send(m.HaveAll())
        elif self.num_have == 0 and peer.fast:
            peer.send(m.HaveNone())
        elif self.num_have:
            peer.send(m.Bitfield(m.bitfield_from_bools(self.have)))
        self._spawn(self._upload_loop(peer))

    def on_peer_disconnected(self, peer: Peer, reason: str) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self.session.peer_count -= 1
        log.debug("%s: disconnected %s: %s", self.meta.name, peer, reason)
        self.picker.peer_gone(peer)
        if self._ss is not None:
            self._ss.remove_peer(peer)
        peer.requested.clear()
        peer.incoming.clear()
        self._fill_all()

    # -- what peers have ------------------------------------------------------------------------
    def on_bitfield(self, peer: Peer) -> None:
        if peer.has_all:
            self.picker.peer_has_all(peer)
        else:
            self.picker.peer_has_bitfield(peer, peer.have)
        if peer.is_seed and self.num_have == self.meta.num_pieces:
            peer.close("both sides are seeds")
            return
        if self._ss is not None and peer in self._ss:
            self._offer(peer)  # drops offers of pieces it turned out to have
        self._update_interest(peer)

    def on_have(self, peer: Peer, index: int) -> None:
        self.picker.peer_has(peer, index)
        if peer.is_seed and self.num_have == self.meta.num_pieces:
            peer.close("both sides are seeds")
            return
        if self._ss is not None and self._ss.peer_has(peer, index):
            self._offer(peer)
        if not peer.conn.am_interested and not self.have[index]:
            self._update_interest(peer)

    def _update_interest(self, peer: Peer) -> None:
        want = self.state is TorrentState.DOWNLOADING and self.picker.interesting(peer)
        if want and not peer.conn.am_interested:
            peer.send(m.Interested())
            self._fill_requests(peer)
        elif not want and peer.conn.am_interested:
            peer.send(m.NotInterested())

    # -- downloading ----------------------------------------------------------------------------
    def on_unchoke(self, peer: Peer) -> None:
        peer.queue_target = self._queue_target(peer)
        self._fill_requests(peer)

    def on_choke(self, peer: Peer) -> None:
        if not peer.fast:  # BEP 3: a choke discards every pending request
            for block in list(peer.requested):
                self.picker.request_failed(peer, block)
            peer.requested.clear()
            self._fill_all()

    def on_reject(self, peer: Peer, block: Block) -> None:
        if peer.requested.pop(block, None) is not None:
            self.picker.request_failed(peer, block)

    def _queue_target(self, peer: Peer) -> int:
        s = self.settings
        rate = peer.down.rate(time.monotonic())
        target = int(rate * s.request_queue_time / BLOCK_SIZE)
        target = max(s.min_request_queue, min(s.max_request_queue, target))
        return max(1, min(target, peer.reqq - 1))

    def _fill_requests(self, peer: Peer) -> None:
        """Top the peer's request queue up to its target, in batches (fewer, larger writes)."""
        if (peer.closed or self.state is not TorrentState.DOWNLOADING
                or peer.conn.peer_choking or not peer.conn.am_interested):
            return
        target = peer.queue_target
        want = target - len(peer.requested)
        if want <= 0 or (peer.requested and want < max(1, target // 8)):
            return
        if self._unverified > self.settings.max_unverified_bytes:
            return  # hashing/disk is behind: let it catch up (bounded memory)
        blocks = self.picker.pick(peer, want)
        if not blocks:
            return
        now = time.monotonic()
        conn = peer.conn
        out = []
        for b in blocks:
            peer.requested[b] = now
            out.append(conn.send(m.Request(b.index, b.begin, b.length)))
        peer.proto.write(b"".join(out))
        peer.last_send = now

    def _fill_all(self) -> None:
        for peer in list(self.peers):
            self._fill_requests(peer)

    def on_block(self, peer: Peer, block: Block, data: bytes) -> None:
        """The hot path: one 16 KiB block arrived (about 15,000 times a second at 250 MB/s)."""
        if peer.requested.pop(block, None) is None:
            return  # unrequested, cancelled or late duplicate: drop it
        n = len(data)
        now = time.monotonic()
        peer.down.add(n, now)
        self.down.add(n, now)
        self.downloaded += n
        peer.snubbed = False
        if now - peer.target_at > 0.25:  # adapt the pipeline to the measured rate
            peer.target_at = now
            peer.queue_target = self._queue_target(peer)
        if self.settings.download_rate_limit or self.settings.torrent_download_rate_limit:
            delay = self.session.charge_download(n, now)
            if self.settings.torrent_download_rate_limit:
                delay = max(delay, self._down_bucket.consume(n, now))
            if delay > 0:
                peer.proto.pause_reading(delay)
        index = block.index
        if self.have[index]:
            return
        buf = self.buffers.get(index)
        if buf is None:
            buf = self.buffers[index] = bytearray(self.meta.piece_size(index))
            self.block_src[index] = {}
        buf[block.begin:block.begin + n] = data
        self.block_src[index][block.begin] = peer.ban_key
        result = self.picker.block_received(peer, block)
        for other in result.cancel:
            if isinstance(other, Peer) and other.requested.pop(block, None) is not None:
                other.send(m.Cancel(block.index, block.begin, block.length))
        if result.piece_complete:
            self._spawn(self._finish_piece(index))
        self._fill_requests(peer)

    async def _finish_piece(self, index: int) -> None:
        buf = self.buffers.pop(index)
        sources = self.block_src.pop(index, {})
        failed = self.failed_blocks.get(index)
        loop = asyncio.get_running_loop()
        self._unverified += len(buf)
        try:
            ok, digests = await loop.run_in_executor(
                self.session.disk_pool, self._check_and_write, index, buf, failed is not None)
        except StorageError as exc:
            self._fail(str(exc))
            return
        finally:
            self._unverified -= len(buf)
            if self._unverified <= self.settings.max_unverified_bytes:
                self._fill_all()
        if not ok:
            self._piece_failed(index, buf, sources)
            return
        if failed is not None:  # a piece that failed before: who sent the bad blocks?
            for begin, (key, digest) in failed.items():
                if digests.get(begin) != digest:
                    self._ban(key, f"sent corrupt data for piece {index}")
            del self.failed_blocks[index]
        self._piece_passed(index)

    def _check_and_write(
        self, index: int, buf: bytearray, want_digests: bool
    ) -> tuple[bool, dict[int, bytes]]:
        if not self.verifier.check(index, buf):
            return False, {}
        self.storage.write(index * self.meta.piece_length, buf)
        digests = _block_digests(buf) if want_digests else {}
        return True, digests

    def _piece_failed(self, index: int, buf: bytearray, sources: dict[int, Any]) -> None:
        self.hash_failures += 1
        contributors = self.picker.piece_failed(index)
        digests = _block_digests(buf)
        self.failed_blocks[index] = {b: (k, digests[b]) for b, k in sources.items()}
        keys = set(sources.values())
        log.warning("%s: piece %d failed its hash check (sources: %d)",
                    self.meta.name, index, len(keys))
        for key in keys:
            self.strikes[key] += 1
            if len(keys) == 1 or self.strikes[key] >= self.settings.hash_fail_ban_threshold:
                self._ban(key, f"piece {index} failed its hash check")
        del contributors
        self._fill_all()

    def _ban(self, key: Any, why: str) -> None:
        if key in self.banned:
            return
        self.banned.add(key)
        log.warning("%s: banning %s: %s", self.meta.name, key, why)
        for peer in list(self.peers):
            if self.ban_key(peer.addr, peer.remote_id) == key:
                peer.close(f"banned: {why}")

    def _piece_passed(self, index: int) -> None:
        if self.have[index]:
            return
        # A web seed may finish a piece that peers were also sending: drop their part.
        self.buffers.pop(index, None)
        self.block_src.pop(index, None)
        self.have[index] = 1
        self.num_have += 1
        self.picker.piece_passed(index)
        for peer in list(self.peers):
            if not peer.have[index]:
                peer.send(m.Have(index))
        if self.num_have == self.meta.num_pieces:
            self._set_complete()

    def _set_complete(self) -> None:
        first = self.state is not TorrentState.SEEDING
        self.state = TorrentState.SEEDING
        self.complete.set()
        if first:
            log.info("%s: complete, seeding", self.meta.name)
            for peer in list(self.peers):
                if peer.is_seed:
                    peer.close("both sides are seeds")
                elif peer.conn.am_interested:
                    peer.send(m.NotInterested())
            if self.tracker_tiers and self.num_have and self.downloaded:
                self._spawn(self._announce("completed"))
            self._spawn(self.save_resume())

    def _fail(self, message: str) -> None:
        log.error("%s: %s", self.meta.name, message)
        self.error = message
        self.state = TorrentState.ERROR
        self.complete.set()  # wake waiters; they look at .error
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
    def on_request(self, peer: Peer, req: m.Request) -> None:
        if peer.conn.am_choking:
            if peer.fast:
                peer.send(m.RejectRequest(req.index, req.begin, req.length))
            return
        size = self.meta.piece_size(req.index)
        if req.length > MAX_BLOCK or req.length <= 0 or req.begin + req.length > size:
            peer.close("protocol error: request outside the piece")
            return
        if (not self.have[req.index]
                or len(peer.incoming) >= self.settings.max_outstanding_incoming_requests
                or not peer.incoming.fits(req.length, self.settings.max_incoming_request_bytes)):
            if peer.fast:
                peer.send(m.RejectRequest(req.index, req.begin, req.length))
            return
        peer.incoming.append(req)
        peer.upload_wakeup.set()

    def on_interest_changed(self, peer: Peer) -> None:
        unchoked = sum(1 for p in self.peers if not p.conn.am_choking)
        if peer.conn.peer_interested and peer.conn.am_choking and unchoked < self._slots():
            self._rechoke()

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
        """Serve the peer's requests in order, within rate limits and send-buffer space.

        Requests whose piece is cached are answered in batches of up to 1 MiB with one
        ``writelines`` (one writev) — a syscall per 16 KiB block was the seeder's main cost.
        """
        limited = bool(self.settings.upload_rate_limit) or not self._up_limiter.unlimited
        while not peer.closed:
            if not peer.incoming:
                peer.upload_wakeup.clear()
                await peer.upload_wakeup.wait()
                continue
            req = peer.incoming[0]
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
            parts: list[bytes | memoryview] = []
            size = 0
            cache = self._cache
            ss = self._ss if self._ss is not None and peer in self._ss else None
            offer_done = False
            while peer.incoming and size < (1 << 20):
                req = peer.incoming[0]
                data = cache.get(req.index)
                if data is None:
                    break  # read it on the next round
                peer.incoming.popleft()
                parts.append(_PIECE_HEADER.pack(9 + req.length, 7, req.index, req.begin))
                parts.append(memoryview(data)[req.begin:req.begin + req.length])
                size += req.length
                if ss is not None and ss.uploaded(peer, req.index, req.length):
                    offer_done = True
                if limited:
                    break  # one block per token-bucket charge
            if not parts:
                await asyncio.sleep(0)  # never spin without yielding
                continue
            peer.proto.writelines(parts)
            now = time.monotonic()
            peer.last_send = now
            peer.up.add(size, now)
            self.up.add(size, now)
            self.uploaded += size
            if offer_done:
                self._offer(peer)
            await asyncio.sleep(0)  # let other peers and the network in

    # -- choking ----------------------------------------------------------------------------------
    def _slots(self) -> int:
        if self._super_seeding():
            # Every interested peer gets its share of distinct pieces (the fluid schedule
            # that reaches the peer-to-peer bound): round-robin turns would leave offers idle.
            return max(self.settings.unchoke_slots, len(self.peers))
        return self.settings.unchoke_slots

    # -- super-seeding --------------------------------------------------------------------------
    def _super_seeding(self) -> bool:
        """Whether peers connecting now are super-seeded (we seed, and the setting is on)."""
        if not self.settings.super_seeding or self.num_have != self.meta.num_pieces:
            return False
        if self._ss is None:
            self._ss = SuperSeeder(self.meta.num_pieces, self.meta.piece_size,
                                   self.picker.availability, self.rng)
        return True

    def _offer(self, peer: Peer) -> None:
        """Show the peer new pieces (Have) until it holds its window of open offers: about
        ``super_seed_window`` seconds of what we send it, at least two pieces."""
        ss = self._ss
        if ss is None or peer.closed or peer.is_seed:
            return
        rate = peer.up.rate(time.monotonic())
        window = max(2, int(rate * self.settings.super_seed_window / self.meta.piece_length) + 1)
        for index in ss.top_up(peer, peer.have, window):
            peer.send(m.Have(index))

    def _rechoke(self) -> None:
        now = time.monotonic()
        seeding = self.state is TorrentState.SEEDING
        stats = [
            PeerStats(peer=p, interested=p.conn.peer_interested,
                      download_rate=p.down.rate(now), upload_rate=p.up.rate(now),
                      is_seed=p.is_seed, snubbed=p.snubbed, connected_at=p.connected_at)
            for p in self.peers
        ]
        settings = ChokerSettings(slots=self._slots(),
                                  optimistic_interval=self.settings.optimistic_unchoke_interval,
                                  seeding=seeding)
        decision = choose_unchoked(stats, now, settings, self.rng, self._choke)
        self._choke = decision
        unchoke = set(decision.unchoked)
        for peer in list(self.peers):
            if peer in unchoke and peer.conn.am_choking:
                peer.send(m.Unchoke())
            elif peer not in unchoke and not peer.conn.am_choking:
                peer.send(m.Choke())
                if peer.fast:
                    for req in peer.incoming:
                        peer.send(m.RejectRequest(req.index, req.begin, req.length))
                peer.incoming.clear()

    async def _choker_loop(self) -> None:
        while not self._stopping:
            self._rechoke()
            await asyncio.sleep(self.settings.rechoke_interval)

    # -- housekeeping ------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        s = self.settings
        while not self._stopping:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for peer in list(self.peers):
                if now - peer.last_recv > s.peer_timeout:
                    peer.close("peer timed out")
                    continue
                stale = [b for b, t in peer.requested.items() if now - t > s.request_timeout]
                if stale:
                    peer.snubbed = True
                    for b in stale:
                        del peer.requested[b]
                        self.picker.request_failed(peer, b)
                if now - peer.last_send > s.keepalive_interval:
                    peer.send(m.KeepAlive())
                peer.queue_target = self._queue_target(peer)
                self._update_interest(peer)
                self._fill_requests(peer)

    async def _connector_loop(self) -> None:
        """Dial candidate peers while below the connection limit; retry direct peers."""
        retry_at: dict[tuple[str, int], float] = {}
        while not self._stopping:
            now = time.monotonic()
            connected = {p.addr for p in self.peers}
            if self.state is TorrentState.DOWNLOADING:
                for addr in self.direct_peers:
                    if addr not in connected and addr not in self.candidates \
                            and retry_at.get(addr, 0) <= now:
                        self.candidates.append(addr)
            while self.candidates and (
                    len(self.peers) + len(self.connecting)
                    < self.settings.max_connections_per_torrent):
                addr = self.candidates.popleft()
                if addr in connected or addr in self.connecting or addr == self.session.listen_addr:
                    continue
                retry_at[addr] = now + 5.0
                self.connecting.add(addr)
                self._spawn(self._dial(addr))
            await asyncio.sleep(1.0)

    async def _dial(self, addr: tuple[str, int]) -> None:
        try:
            await mse_transport.dial(self.session, self, addr, self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:
            log.debug("%s: could not connect to %s: %s", self.meta.name, addr, exc)
        finally:
            self.connecting.discard(addr)

    async def _resume_loop(self) -> None:
        last = self.num_have
        while not self._stopping:
            await asyncio.sleep(self.settings.resume_save_interval)
            if self.num_have != last and self.state is TorrentState.DOWNLOADING:
                last = self.num_have
                await self.save_resume()

    async def _announce(self, event: str | None) -> int | None:
        """One announce; returns the interval to wait, or None when every tracker failed."""
        from swarmhub.discovery.tracker import AnnounceRequest

        tiers = self.session.tracker_tiers(self)
        left = self.meta.total_length - self.status().bytes_have
        req = AnnounceRequest(
            info_hash=self.meta.info_hash, peer_id=self.session.peer_id,
            port=self.session.listen_port, uploaded=self.uploaded, downloaded=self.downloaded,
            left=max(0, left), event=event, numwant=50, compact=True, key=None,
            tracker_id=None, ip=None,
        )
        try:
            resp = await tiers.announce(await self.session.http(), req)
        except TrackerError as exc:
            log.warning("%s: tracker: %s", self.meta.name, exc)
            return None
        if self.state is TorrentState.DOWNLOADING:
            self._tracker_seeds = resp.complete or 0
        for addr in resp.peers:
            if addr != self.session.listen_addr and addr not in self.candidates:
                self.candidates.append(addr)
        return max(resp.min_interval or 0, resp.interval, 5)

    async def _tracker_loop(self) -> None:
        """Announce started, then every interval; a failing tracker is retried with
        backoff from 5 s (a tracker that starts after us is found quickly)."""
        event: str | None = "started"
        backoff = 5.0
        try:
            while not self._stopping:
                interval = await self._announce(event)
                if interval is None:
                    wait, backoff = backoff, min(backoff * 2, 300.0)
                else:
                    event, backoff = None, 5.0
                    wait = min(interval, 1800)
                deadline = time.monotonic() + wait
                started = time.monotonic()
                while time.monotonic() < deadline and not self._stopping:
                    await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    if self.state is TorrentState.DOWNLOADING and not self.peers \
                            and not self.candidates and time.monotonic() - started > 15:
                        break  # starving: ask again sooner, but not more than every 15 s
        finally:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._announce("stopped"), 5)

    # -- web seeds (BEP 19) ---------------------------------------------------------------------
    def _webseed_batch(self) -> list[int]:
        """Pieces for a web seed: what the connected swarm lacks (or everything missing when
        no peer is sending anything), as one run of adjacent pieces -> few large requests.

        When the tracker counts a seed and we have peers, a piece no peer shows us may still
        be on its way from a super-seeding seed (the hub's own peer hides what it has): then
        the web seed waits until the peers go idle, or every client would fetch over HTTP
        exactly the pieces the seed has not handed out yet."""
        peers_idle = self.down.rate(time.monotonic()) <= self.webseed_rate()
        hidden_seed = self._tracker_seeds > 0 and bool(self.peers)
        limit = max(1, self.settings.web_seed_batch_bytes // self.meta.piece_length)
        batch: list[int] = []
        for i in range(self.meta.num_pieces):
            ok = (not self.have[i] and i not in self.buffers and i not in self._ws_reserved
                  and (peers_idle or (self.picker.availability(i) == 0 and not hidden_seed)))
            if ok and (not batch or batch[-1] == i - 1):
                batch.append(i)
                if len(batch) >= limit:
                    break
            elif batch:
                break
        return batch

    def webseed_rate(self) -> float:
        """Recent web-seed bytes/s (kept apart so peers' share can be told from the hub's)."""
        return self._ws_meter.rate(time.monotonic())

    async def _webseed_loop(self, url: str) -> None:
        """Fetch from one web seed while downloading; peers get a head start."""
        from swarmhub.engine.webseed import WebSeed, WebSeedBusy, WebSeedError

        ws = WebSeed(url, self.meta, await self.session.http(),
                     max_request=self.settings.web_seed_request_size)
        await self._sleep(self.settings.web_seed_grace)
        loop = asyncio.get_running_loop()
        failures, backoff = 0, 5.0
        while self.state is TorrentState.DOWNLOADING and not self._stopping and not ws.banned:
            batch = self._webseed_batch()
            if not batch:
                await self._sleep(0.5)
                continue
            self._ws_reserved.update(batch)
            try:
                async with contextlib.aclosing(ws.fetch(batch)) as pieces:
                    async for index, buf in pieces:
                        if self.have[index]:
                            continue
                        self._unverified += len(buf)
                        try:
                            ok, _ = await loop.run_in_executor(
                                self.session.disk_pool, self._check_and_write, index, buf,
                                False)
                        finally:
                            self._unverified -= len(buf)
                        if ok:
                            now = time.monotonic()
                            self.webseed_bytes += len(buf)
                            self.downloaded += len(buf)
                            self.down.add(len(buf), now)
                            self._ws_meter.add(len(buf), now)
                            self._piece_passed(index)
                        else:
                            self.hash_failures += 1
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
        end = time.monotonic() + seconds
        while not self._stopping and self.state is TorrentState.DOWNLOADING:
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))

    # -- tasks -----------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(self._guard(lambda: coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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


def _block_digests(buf: bytearray) -> dict[int, bytes]:
    view = memoryview(buf)
    return {b: hashlib.sha1(view[b:b + BLOCK_SIZE]).digest()
            for b in range(0, len(buf), BLOCK_SIZE)}
