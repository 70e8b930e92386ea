"""Uploading: serving the block requests a torrent's swarm core accepted.

Apart from the driver (:mod:`swarmhub.engine.torrent`) because it is the one long loop
per peer, with its own state (the read cache) and its own concerns: rate limits, the
send buffer, and batching blocks into one ``writelines`` without copying them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Iterable

from swarmhub.engine.peer import Peer
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.services import DriverHost
from swarmhub.errors import StorageError
from swarmhub.storage.files import PieceBuffer
from swarmhub.wire import messages as m

__all__ = ["Uploader"]


class Uploader:
    """One torrent's uploads: a task per peer (:meth:`serve`) over one piece read cache."""

    def __init__(self, torrent: DriverHost, limiter: RateLimiter) -> None:
        self.torrent = torrent
        #: the torrent's own upload limit (its driver changes the rate in place)
        self._up_limiter = limiter
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._reads: dict[int, asyncio.Future[bytes]] = {}

    async def read_piece(self, index: int) -> bytes:
        """A piece for uploading, from the read cache or one shared disk read."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        return await asyncio.shield(self._start_read(index))

    def _start_read(self, index: int) -> asyncio.Future[bytes]:
        """The disk read of piece ``index`` under way, started now if it was not."""
        fut = self._reads.get(index)
        if fut is None:
            loop = asyncio.get_running_loop()
            t = self.torrent
            fut = loop.run_in_executor(t.session.disk_pool, t.storage.read_piece, index)
            self._reads[index] = fut
            # Cache before any waiter resumes: the callback is scheduled first.
            fut.add_done_callback(functools.partial(self._read_done, index))
        return fut

    def read_ahead(self, incoming: Iterable[m.Request]) -> None:
        """Start disk reads of the next pieces a peer's queue asks for, beyond the first.

        A deep queue (a tuned libtorrent asks for hundreds of blocks) spans several
        pieces: reading only when the first uncached one reached the queue's head left the
        socket idle for each piece's read and thread hand-off. Up to ``disk_threads``
        pieces are read while the current one is sent; the cache keeps them for the
        rounds that follow (it holds far more than that)."""
        t = self.torrent
        depth = 1 + t.settings.disk_threads
        if t.settings.read_cache_bytes < (depth + 2) * t.meta.piece_length:
            return  # a read ahead would push out the piece being sent
        cache, reads = self._cache, self._reads
        last = -1
        seen = 0
        for req in incoming:
            index = req.index
            if index == last:
                continue
            last = index
            seen += 1
            if seen > depth:
                return
            if index not in cache and index not in reads:
                self._start_read(index)

    def keep_written(self, index: int, buf: PieceBuffer) -> None:
        """A piece just verified and written, while its bytes are still in memory: into
        the read cache when a connected peer lacks it (it asks once our Have is out).

        Direct writes leave no copy in the page cache, so each upload of a fresh piece
        was a disk read on the disk pool (netns lab, N=16, 32 KiB pieces: ~1,000 per
        peer, each a thread hand-off and a wait on the disk). A lone downloader copies
        nothing: its only peers are seeds. Only a peer interested in us counts: a
        super-seeding seed (our default) hides its pieces and looked like a leecher
        lacking every one, so a lone download copied each piece it verified."""
        t = self.torrent
        if t.settings.read_cache_bytes and any(
                not ps.have[index] and ps.peer_interested and not ps.closed
                for ps in t.swarm.peers.values()):
            self._cache[index] = bytes(buf)
            self._cache.move_to_end(index)
            self._trim()

    def _read_done(self, index: int, fut: asyncio.Future[bytes]) -> None:
        self._reads.pop(index, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        self._cache[index] = fut.result()
        self._trim()

    def _trim(self) -> None:
        t = self.torrent
        while len(self._cache) * t.meta.piece_length > t.settings.read_cache_bytes \
                and len(self._cache) > 2:
            self._cache.popitem(last=False)

    async def serve(self, peer: Peer) -> None:
        """Serve the requests the core accepted, within rate limits and send-buffer space.

        Requests whose piece is cached go out in batches of up to 1 MiB with one
        ``writelines`` (one writev) of header + memoryview pairs from the wire core.
        """
        t = self.torrent
        ps = t.swarm.peers.get(peer)
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
            limited = bool(t.settings.upload_rate_limit) or not self._up_limiter.unlimited
            if not limited:
                self.read_ahead(incoming)
            if req.index not in self._cache:
                try:
                    await self.read_piece(req.index)
                except StorageError as exc:
                    t._fail(str(exc))
                    return
            if limited:
                await t.session.charge_upload(req.length)
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
            t.swarm.blocks_sent(peer, served, size, t.clock())
            t._flush()
            await asyncio.sleep(0)  # let other peers and the network in
