"""Uploading: serving the block requests a torrent's swarm core accepted.

Apart from the driver (:mod:`swarmhub.engine.torrent`) because it is the one long loop
per peer, with its own state (the read cache) and its own concerns: rate limits, the
send buffer, and batching blocks into one ``writelines`` without copying them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import struct
import sys
from collections.abc import Hashable, Iterable
from typing import cast

from swarmhub.engine.peer import Peer
from swarmhub.engine.peerstate import RequestQueue
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.services import DriverHost
from swarmhub.engine.swarm import TURN_POLL_MAX, turn_regrant_at
from swarmhub.errors import InconsistentHashesError, StorageError
from swarmhub.storage.files import PieceBuffer, TorrentStorage
from swarmhub.storage.verify import PieceVerifier
from swarmhub.wire import messages as m

__all__ = ["KEEP_WRITTEN_PIECES", "Uploader", "turn_wait"]

#: Linux ioctl: bytes in a TCP socket's send queue not sent yet (``SIOCOUTQNSD``)
_SIOCOUTQNSD = 0x894B
#: while a peer waits its turn, look again after the bytes ahead of it over the budget
#: take to leave at our upload rate, but at least this often (s) and at most this rarely:
#: the kernel drains the other peers' send queues without telling us
_TURN_POLL = 0.005
#: how late our timers ran is kept as a decaying maximum that halves every _LAG_HALF_LIFE
#: s (long enough to hold between the 1 s tick's reports while turns are off, short
#: enough that one stall turns them off for seconds, not the run), at most _LAG_MAX s (a
#: stalled loop is not a budget)
_LAG_HALF_LIFE = 2.0
_LAG_MAX = 0.1
#: turns are off while our timers run later than this share of a piece's send time
_LATE_PIECE_SHARE = 0.25
#: Most pieces :meth:`Uploader.keep_written` keeps (the oldest kept goes first; pieces
#: read from disk are not counted). Why a bound of its own: a copy lands in fresh memory
#: until its piece leaves the cache, and a 32 MiB cache never dropped one of a 32 MiB
#: torrent, so every copy of its 1,024 pieces faulted in 8 new pages (~75 us a piece in
#: a netns lab peer at N=32, ~7 % of its CPU); a bounded ring reuses what it frees.
#: Peers ask for a fresh piece soon: in ``lab simulate`` p2p N=32 (32 KiB pieces) 99 %
#: of uploads were of a piece at most 27 pieces old, none beyond 64. An older one is
#: read from disk (the page cache) like any piece not cached.
KEEP_WRITTEN_PIECES = 128
#: Most piece buffers kept for the next piece cached (a disk read or a copy of a piece we
#: wrote) once their piece left the cache. Why: each read of a piece made a fresh 1 MiB
#: ``bytes``, whose pages the kernel zeroed and faulted in (a 1 GiB upload on loopback:
#: 47-60 k minor faults in the disk threads); a reused buffer is in place. Few suffice: a
#: full cache frees one per piece it takes in.
_SPARE_READS = 4


def _read_into(storage: TorrentStorage, offset: int, buf: bytearray) -> bytearray:
    """(disk pool) ``buf`` filled with the piece space at ``offset``."""
    storage.read_into(offset, buf)
    return buf


def _refs_of_an_argument(obj: object) -> int:
    return sys.getrefcount(obj)


#: what sys.getrefcount says of an object referenced only by the caller's argument
_FREE_REFS = _refs_of_an_argument(bytearray())


def _hybrid(torrent: DriverHost) -> bool:
    meta = torrent.meta
    return meta.pieces_v1 is not None and meta.info_hash_v2 is not None


def turn_wait(excess: int, rate: float) -> float:
    """Seconds a peer waiting its upload turn sleeps before looking again: until the
    ``excess`` bytes queued beyond the budget have left at ``rate`` bytes/s.

    Why not a fixed 5 ms poll: every waiting peer ran the core's grants (and a syscall
    per peer in turn) 200 times a second while a piece that takes ~0.1 s was leaving
    (netns lab N=16: +0.2-0.5 CPU-s per peer, which kept the turns off by default)."""
    if rate <= 0 or excess <= 0:
        return _TURN_POLL
    return min(TURN_POLL_MAX, max(_TURN_POLL, excess / rate))


class Uploader:
    """One torrent's uploads: a task per peer (:meth:`serve`) over one piece read cache."""

    def __init__(self, torrent: DriverHost, limiter: RateLimiter,
                 verifier: PieceVerifier | None = None) -> None:
        self.torrent = torrent
        #: a hybrid torrent's verifier: pieces outside its SHA-1 sample are SHA-1 checked
        #: before their first upload to a peer that speaks v1 (None: nothing to check;
        #: seed mode passes None: its data is trusted as it is)
        self._verifier = verifier if verifier is not None and _hybrid(torrent) else None
        #: 1 for each piece whose SHA-1 is known good: the sample was checked when the
        #: piece was verified, the others are checked on their first upload
        v = self._verifier
        self._v1_ok = v.v1_sample() if v else bytearray()
        self._v1_checks: dict[int, asyncio.Future[None]] = {}
        #: pieces being verified with their SHA-1 too (see wants_v1)
        self._v1_asked: set[int] = set()
        #: peers served that may check our pieces by SHA-1 (see _speaks_v1): while there
        #: are none, wants_v1 scans no peers (a hybrid swarm of peers that set the BEP 52
        #: bit scanned them all for each piece it verified: ~9,000 calls a peer at N=16)
        self._v1_peers = 0
        #: the torrent's own upload limit (its driver changes the rate in place)
        self._up_limiter = limiter
        self._cache: collections.OrderedDict[int, bytes | bytearray] = \
            collections.OrderedDict()
        #: whole-piece buffers whose pieces left the cache, for the next reads (_SPARE_READS)
        self._spare: list[bytearray] = []
        #: the pieces keep_written put in the cache, oldest first (KEEP_WRITTEN_PIECES)
        self._kept: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._reads: dict[int, asyncio.Future[bytes | bytearray]] = {}
        #: the core's upload turns as of the last change (see _grants_now): bytes each
        #: peer may write; None once bytes were written or a peer's queue filled
        self._grants: dict[Hashable, int] | None = None
        #: peers waiting their turn, each woken alone when it is granted one
        self._waiters: dict[Hashable, asyncio.Future[None]] = {}
        #: peers waiting their turn with nothing else in the way (their next piece cached,
        #: their socket writable, no limit or SHA-1 check): the grants pass writes to them
        #: itself, with no task to wake (see _serve_parked)
        self._parked: dict[Hashable, None] = {}
        #: the one pass that recomputes the grants and wakes the granted waiters: soon
        #: after a change, or on the timer when only the kernel moved (bytes left)
        self._regrant: asyncio.Handle | None = None
        self._regrant_at = 0.0
        self._fds: dict[Hashable, int] = {}  # socket descriptors by peer, for _queued
        #: peers written to since _queued last read their queue as empty: the others have
        #: nothing queued (only our writes fill it), so no kernel call asks (see _queued)
        self._unsent: set[Hashable] = set()
        #: how long peers refused a turn wait before looking again (see turn_wait), from
        #: the excess bytes and the upload rate of the last grants pass
        self._turn_due = _TURN_POLL
        self._turn_excess = 0
        self._turn_rate = 0.0
        #: how late our timers have run lately, s, as of loop time _lag_at (see
        #: note_late, _late and _grants_now)
        self._lag = 0.0
        self._lag_at = 0.0

    def _queued(self, handle: Hashable) -> int:
        """Bytes written to ``handle`` and not sent yet: the transport's buffer plus the
        kernel's unsent queue (where most of it sits: the transport writes straight
        through until the socket is full).

        Why the ``_unsent`` set: the grants read every peer in turn, and each read was an
        ioctl; most of them had sent their piece long ago (netns lab N=32, turns at 32 KiB
        pieces: +0.2-0.5 CPU-s a peer). Only a peer written to since its queue was last
        seen empty is asked; our control messages (a few bytes) are not counted."""
        if handle not in self._unsent:
            return 0
        proto = getattr(handle, "proto", None)
        tr = proto.transport if proto is not None else None
        if tr is None:
            return 0
        n = int(tr.get_write_buffer_size())
        fd = self._fds.get(handle)
        if fd is None:
            sock = tr.get_extra_info("socket")
            fd = self._fds[handle] = sock.fileno() if sock is not None else -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                n += struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQNSD, b"\0\0\0\0"))[0]
        if not n:
            self._unsent.discard(handle)
        return n

    def _grant(self, peer: Peer) -> int:
        """Bytes ``peer`` may write now in the core's upload turns (0: wait)."""
        t = self.torrent
        if (not t.settings.upload_ahead or not t.swarm.upload_budget(t.clock())
                or self._late()):
            return 1 << 20  # no turns (a piece leaves fast, or we run late): no limit
        grants = self._grants
        if grants is None:
            grants = self._grants_now()
        return grants.get(peer, 0)

    def _late(self) -> bool:
        """Do we run later than a piece takes to leave? Then turns are off: a turn gains
        a few piece times, and a host that wakes later than that lets its uplink run dry
        between turns. On a host with CPU to spare ``_lag`` is ~0 and turns are as the
        core (and ``lab simulate``) has them.

        Why: in the netns lab N=32 on 2 cores (33 processes) the hybrid hub's passes ran
        30 ms late on average (72 % over 20 ms) and the median peer's 9.5 ms, where a
        32 KiB piece leaves in 13 ms at 20 mbit: hybrid 1.22-1.32 -> 1.42-1.50x the
        bound with turns, p2p no better than without. Later than a quarter of a piece
        already (stop 39: with the lab's source ahead on the CPU, at one piece N=32 gave
        hybrid 2.29/2.07 and p2p 1.97/1.88 against 1.88/1.80 and 1.93/1.81 with no turns at
        all, their clients 1.84/1.58 vs 1.42/1.51 CPU-s): a CPU-starved host's turns cost
        it CPU and gain nothing; a host with CPU to spare runs ~1 ms late."""
        lag = self._lag
        if not lag:
            return False
        t = self.torrent
        return lag * t.swarm.up.rate(t.clock()) > t.meta.piece_length * _LATE_PIECE_SHARE

    def note_late(self, late: float) -> None:
        """A timer of ours ran ``late`` s after its due time: keep the decaying maximum
        that :meth:`_late` and the budget's slack read (the torrent's 1 s tick reports
        too, so the figure moves while turns are off and no turn timer runs)."""
        now = asyncio.get_running_loop().time()
        kept = self._lag * 0.5 ** ((now - self._lag_at) / _LAG_HALF_LIFE)
        self._lag = min(_LAG_MAX, max(late, kept))
        self._lag_at = now

    async def sleep_noting_late(self, seconds: float) -> None:
        """``asyncio.sleep``, then :meth:`note_late` of how late it woke (the torrent's
        tick: the lateness figure moves while turns are off and no turn timer runs)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        await asyncio.sleep(seconds)
        self.note_late(loop.time() - due)

    def _grants_now(self) -> dict[Hashable, int]:
        """The core's grants, computed once and kept until the next change.

        Why kept: each write woke every waiting peer (one shared Event), and each asked
        the core again, which read every peer's send queue (a syscall each): ~P^2
        syscalls and wake-ups per write (netns lab N=32 p2p with turns: 1.58 -> 3.26x
        the bound, median peer CPU 1.21 -> 2.15 CPU-s).

        Why the timer looks again once half the budget (or a piece) has left, not as
        soon as there is room: the room grows by a block every few ms as the kernel
        sends, and at 32 KiB pieces the 5 ms look-again passes (a kernel call per peer
        holding bytes, and a task's wake-up for each block of room) cost the lab's peers
        more CPU than the turns gained; the half left still keeps the uplink busy.

        Why the budget grows by what leaves in ``_lag``: the queue written ahead must
        last until we run again, and a host short of CPU runs late (netns lab N=32 on 2
        cores, 33 processes: the median peer's look-again passes ran 12 ms late on
        average, 19 % of them over 20 ms, where 64 KiB ahead last 26 ms at 20 mbit; its
        uplink ran dry, 1.2 -> 1.3-1.6x the bound). An idle host adds ~nothing."""
        t = self.torrent
        ahead = 0

        def queued(handle: Hashable) -> int:
            nonlocal ahead
            n = self._queued(handle)
            ahead += n
            return n

        now = t.clock()
        swarm = t.swarm
        if self._late():  # turns off: every waiting peer goes (see _late)
            grants = self._grants = {
                h: 1 << 20 for h in swarm.upload_order
                if (ps := swarm.peers.get(h)) is not None and ps.incoming}
            self._turn_due = TURN_POLL_MAX
            return grants
        rate = self._turn_rate = swarm.up.rate(now)
        slack = int(rate * self._lag)
        budget = swarm.upload_budget(now) + slack
        grants = self._grants = dict(swarm.upload_grants(queued, now, slack))
        excess = self._turn_excess = ahead - turn_regrant_at(budget, t.meta.piece_length)
        self._turn_due = turn_wait(excess, rate)
        return grants

    def _turns_moved(self) -> None:
        """Bytes were written or a peer's queue filled: the grants are stale, but no
        waiting peer gains a turn by it, so the next look is still the timer's.

        Why not a pass at once: a write only adds to what is queued ahead, and a peer
        whose queue fills takes its place in turn (its own grant is computed as it
        asks: :meth:`_serve_now`); neither frees room for another. Only the kernel
        sending does, or a peer leaving, and the timer looks for both. The pass after
        each write and each request (~4 passes a piece at 32 KiB pieces) granted
        nothing and cost the netns lab's peers CPU."""
        self._grants = None
        if self._waiters or self._parked:
            self._schedule_regrant(self._turn_due)

    def _schedule_regrant(self, delay: float) -> None:
        """Run :meth:`_wake_granted` in ``delay`` s, unless it runs sooner already."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        handle = self._regrant
        if handle is not None:
            if self._regrant_at <= at:
                return
            handle.cancel()
        self._regrant_at = at
        self._regrant = (loop.call_soon(self._wake_granted) if delay <= 0
                         else loop.call_later(delay, self._on_timer))

    def _on_timer(self) -> None:
        """The look-again timer: note how late it ran (see _grants_now), then the pass."""
        self.note_late(asyncio.get_running_loop().time() - self._regrant_at)
        self._wake_granted()

    def _wake_granted(self) -> None:
        """Recompute the grants and wake only the waiting peers granted a turn (and those
        closed, to leave); look again after turn_wait while any still waits: the kernel
        drains the send queues without telling us."""
        self._regrant = None
        waiters, parked = self._waiters, self._parked
        if not waiters and not parked:
            return
        grants = self._grants_now()
        if parked:
            up = self.torrent.swarm.up
            sent = up.total
            for handle, grant in grants.items():  # in turn order
                if handle in parked:
                    del parked[handle]
                    self._serve_parked(cast(Peer, handle), grant)
            for handle in [h for h in parked if cast(Peer, h).closed]:
                del parked[handle]
            if up.total != sent:  # what this pass wrote leaves before the look again
                self._turn_due = turn_wait(self._turn_excess + up.total - sent,
                                           self._turn_rate)
        woken = [h for h in grants if h in waiters]  # in turn order
        woken += [h for h in waiters if cast(Peer, h).closed]
        for handle in woken:
            fut = waiters.pop(handle, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if waiters or parked:
            self._schedule_regrant(self._turn_due)

    async def _wait_turn(self, peer: Peer) -> None:
        """Until the core grants ``peer`` a turn (see _wake_granted)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters[peer] = fut
        self._schedule_regrant(self._turn_due)
        try:
            await fut
        finally:
            if self._waiters.get(peer) is fut:
                del self._waiters[peer]

    async def read_piece(self, index: int) -> bytes | bytearray:
        """A piece for uploading, from the read cache or one shared disk read."""
        cached = self._cache.get(index)
        if cached is None and self._read_now(index):
            cached = self._cache[index]
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        return await asyncio.shield(self._start_read(index))

    def _read_now(self, index: int) -> bool:
        """Piece ``index`` into the cache from the page cache on this thread, if it is all
        there (:meth:`TorrentStorage.read_cached`); False when it needs the disk pool, or
        a read of it is under way there. Whole pieces only (the last one: the pool)."""
        t = self.torrent
        pl = t.meta.piece_length
        if index in self._reads or t.meta.piece_size(index) != pl:
            return False
        buf = self._piece_buffer()
        if not t.storage.read_cached(index * pl, buf):
            if len(self._spare) < _SPARE_READS:
                self._spare.append(buf)
            return False
        self._cache[index] = buf
        self._kept.pop(index, None)  # read, not kept (see _read_done)
        self._trim()
        return True

    def _start_read(self, index: int) -> asyncio.Future[bytes | bytearray]:
        """The disk read of piece ``index`` under way, started now if it was not."""
        fut = self._reads.get(index)
        if fut is None:
            loop = asyncio.get_running_loop()
            t = self.torrent
            pl = t.meta.piece_length
            if t.meta.piece_size(index) == pl:
                fut = loop.run_in_executor(t.session.disk_pool, _read_into, t.storage,
                                           index * pl, self._piece_buffer())
            else:
                fut = loop.run_in_executor(t.session.disk_pool, t.storage.read_piece, index)
            self._reads[index] = fut
            # Cache before any waiter resumes: the callback is scheduled first.
            fut.add_done_callback(functools.partial(self._read_done, index))
        return fut

    def _lacking(self, index: int, *, v1_only: bool) -> bool:
        """Is a connected peer interested in us and lacking piece ``index`` (one that
        speaks v1, with ``v1_only``)? It will ask for it once our Have is out."""
        return any(
            not ps.have[index] and ps.peer_interested and not ps.closed
            and (not v1_only or self._speaks_v1(cast(Peer, handle)))
            for handle, ps in self.torrent.swarm.peers.items())

    def wants_v1(self, index: int) -> bool:
        """Should the verification of downloaded piece ``index`` check its SHA-1 too? Yes
        when it is likely to go to a peer that speaks v1: hashed in the same job it costs
        ~1 us per KiB, where a check of its own at the first upload costs a thread hop
        (~0.4 ms CPU a piece: +0.46 CPU-s a peer in the netns lab N=16). A lone download
        (its only peer a seed) hashes nothing more."""
        wanted = (self._v1_peers > 0 and not self._v1_ok[index]
                  and self._lacking(index, v1_only=True))
        if wanted:
            self._v1_asked.add(index)  # passed once keep_written hears of it
        return wanted

    def _speaks_v1(self, peer: Peer) -> bool:
        """Might ``peer`` check our pieces by SHA-1? (a hybrid torrent's peer that chose
        its v1 info hash and did not set the BEP 52 upgrade bit)"""
        v2 = self.torrent.meta.info_hash_v2
        conn = peer.conn
        hs = conn.their_handshake
        return not conn.v2_upgrade and (
            v2 is None or hs is None or hs.info_hash != v2[:20])

    async def _check_v1(self, index: int, data: bytes | bytearray) -> None:
        """SHA-1 check of piece ``index`` on the hash pool, once however many peers wait;
        raises InconsistentHashesError when it fails."""
        fut = self._v1_checks.get(index)
        if fut is None:
            verifier = self._verifier
            assert verifier is not None
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.torrent.session.hash_pool,
                                       verifier.check_v1, index, data)
            self._v1_checks[index] = fut
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done():
                self._v1_checks.pop(index, None)
        self._v1_ok[index] = 1

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
            if index not in cache and index not in reads and not self._read_now(index):
                self._start_read(index)

    def keep_written(self, index: int, buf: PieceBuffer) -> None:
        """A piece just verified and written, while its bytes are still in memory: into
        the read cache when a connected peer lacks it (it asks once our Have is out). One
        verified with its SHA-1 too (:meth:`wants_v1`) needs no check before its uploads.

        Direct writes leave no copy in the page cache, so each upload of a fresh piece
        was a disk read on the disk pool (netns lab, N=16, 32 KiB pieces: ~1,000 per
        peer, each a thread hand-off and a wait on the disk). A lone downloader copies
        nothing: its only peers are seeds. Only a peer interested in us counts: a
        super-seeding seed (our default) hides its pieces and looked like a leecher
        lacking every one, so a lone download copied each piece it verified."""
        if index in self._v1_asked:  # its SHA-1 was checked as well, and matched
            self._v1_asked.discard(index)
            self._v1_ok[index] = 1
        t = self.torrent
        if t.settings.read_cache_bytes and self._lacking(index, v1_only=False):
            cache, kept = self._cache, self._kept
            if len(buf) == t.meta.piece_length:
                copy = cache[index] = self._piece_buffer()
                copy[:] = buf
            else:
                cache[index] = bytes(buf)
            cache.move_to_end(index)
            kept[index] = None
            kept.move_to_end(index)
            while len(kept) > KEEP_WRITTEN_PIECES:
                self._spare_if_free(cache.pop(kept.popitem(last=False)[0], None))
            self._trim()

    def _read_done(self, index: int, fut: asyncio.Future[bytes | bytearray]) -> None:
        self._reads.pop(index, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        self._cache[index] = fut.result()
        self._kept.pop(index, None)  # read, not kept: the ring must not drop it (its
        # written copy may have left the cache by _trim while its index stayed in the ring)
        self._trim()

    def _trim(self) -> None:
        t = self.torrent
        while len(self._cache) * t.meta.piece_length > t.settings.read_cache_bytes \
                and len(self._cache) > 2:
            self._spare_if_free(self._cache.popitem(last=False)[1])

    def _piece_buffer(self) -> bytearray:
        """A whole-piece buffer for the cache: a spare one (see _SPARE_READS) or a new one."""
        return self._spare.pop() if self._spare else bytearray(self.torrent.meta.piece_length)

    def _spare_if_free(self, data: bytes | bytearray | None) -> None:
        """``data`` left the cache: keep it for the next disk read when nothing else holds
        it. A write still queued holds views of it, a SHA-1 check or a serving task the
        object itself: each is a reference (ours are this frame's and the call's)."""
        if (type(data) is bytearray and len(self._spare) < _SPARE_READS
                and len(data) == self.torrent.meta.piece_length
                and sys.getrefcount(data) <= _FREE_REFS):
            self._spare.append(data)

    def wake(self, peer: Peer) -> None:
        """The core accepted requests from ``peer`` (its ``Serve`` action): send the blocks
        of cached pieces from this callback, at its end when it is the peer's receive
        callback (one corked write then holds the blocks and whatever else we answered),
        and wake the peer's serving task only for what is left (a disk read, a SHA-1
        check, a full socket, a rate limit or an upload turn).

        Why: each block a lab peer uploads (N=16, 32 KiB pieces: ~2,000 a peer) woke the
        task, which wrote it and yielded once more before waiting again: three loop
        callbacks and a write of its own per block."""
        if not peer.proto.run_uncorked(functools.partial(self._serve_now, peer)):
            self._serve_now(peer)

    def _serve_now(self, peer: Peer) -> None:
        t = self.torrent
        ps = t.swarm.peers.get(peer)
        if ps is None or peer.closed:
            return
        if t.settings.upload_ahead:
            self._turns_moved()  # it may come first in turn now
        if peer in self._parked:
            return  # the grants pass writes to it
        if self._inline(peer):
            self._write_turn(peer, ps.incoming, self._grant(peer))  # 1 MiB without turns
        else:
            peer.upload_wakeup.set()

    def _write_turn(self, peer: Peer, incoming: RequestQueue, grant: int) -> None:
        """Write what ``grant`` allows of ``peer``'s cached blocks from this callback;
        what is left waits parked for its next turn, or for its task (a disk read, a
        full socket, a SHA-1 check: see _park)."""
        if grant and self._send_cached(peer, incoming, None, min(grant, 1 << 20), False):
            self.torrent._flush()
        if incoming and not self._park(peer, incoming, grant):
            peer.upload_wakeup.set()

    def _inline(self, peer: Peer) -> bool:
        """May blocks go to ``peer`` from a callback, with no task? (its socket takes
        them, no rate limit applies and no SHA-1 check is due first)"""
        t = self.torrent
        return (peer.proto.writable
                and not t.settings.upload_rate_limit and self._up_limiter.unlimited
                and (self._verifier is None or not self._speaks_v1(peer)))

    def _park(self, peer: Peer, incoming: RequestQueue, grant: int) -> bool:
        """Leave ``peer``, whose requests wait only for its upload turn, to the grants
        pass (True), not to its task; False when something else is in the way.

        Why: at 32 KiB pieces a peer waits a turn for nearly every piece, and each wait
        in its task was ~3 wake-ups of it and as many grants passes (netns lab N=32:
        +0.1-0.3 CPU-s a peer, which made the turns slower than none there)."""
        head = incoming[0].index
        if (grant >= 1 << 20 or peer in self._waiters or peer.closed
                or (head not in self._cache and not self._read_now(head))
                or not self._inline(peer)):
            return False  # no turns, its task waits already, or a read is due
        self._parked[peer] = None
        self._schedule_regrant(self._turn_due)
        return True

    def _serve_parked(self, peer: Peer, grant: int) -> None:
        """The grants pass gave parked ``peer`` a turn: write its blocks from here."""
        t = self.torrent
        ps = t.swarm.peers.get(peer)
        if ps is None or peer.closed:
            return
        if self._inline(peer):
            self._write_turn(peer, ps.incoming, grant)
        elif ps.incoming:
            peer.upload_wakeup.set()

    def _send_cached(self, peer: Peer, incoming: RequestQueue, v1_ok: bytearray | None,
                     batch: int, one: bool) -> bool:
        """Write the blocks at the head of ``incoming`` whose pieces are cached (and
        SHA-1 checked, with ``v1_ok``), up to ``batch`` bytes (a single block with
        ``one``), in one ``writelines`` (one writev) of header + memoryview pairs from
        the wire core; tell the core. False if the head block was not ready."""
        t = self.torrent
        served: list[m.Request] = []
        size = 0
        cache = self._cache
        # A piece read here (_read_now) may push the cache's oldest out: the pieces of
        # this batch are made the newest as they join it, and read only while the cache
        # holds them all and the new one.
        room = t.settings.read_cache_bytes // t.meta.piece_length - 1
        last = -1
        while incoming and size < batch:
            req = incoming[0]
            index = req.index
            if index != last:
                if index in cache:
                    cache.move_to_end(index)
                elif room <= 2 or not self._read_now(index):
                    break  # read it on the next round
                room -= 1
                last = index
            if v1_ok is not None and not v1_ok[index]:
                break  # check its SHA-1 on the next round
            incoming.popleft()
            served.append(req)
            size += req.length
            if one:
                break  # one block per token-bucket charge
        if not served:
            return False
        peer.proto.writelines(peer.conn.send_pieces(served, cache))
        self._unsent.add(peer)
        t.swarm.blocks_sent(peer, served, size, t.clock())
        if t.settings.upload_ahead:
            self._turns_moved()
        return True

    async def serve(self, peer: Peer) -> None:
        """Serve the requests the core accepted, within rate limits and send-buffer space.

        Requests whose piece is cached go out in batches of up to 1 MiB with one
        ``writelines`` (one writev) of header + memoryview pairs from the wire core.
        """
        t = self.torrent
        ps = t.swarm.peers.get(peer)
        if ps is None:
            return  # it left before this task ran
        v1 = self._verifier is not None and self._speaks_v1(peer)
        self._v1_peers += v1
        try:
            await self._serve(peer, ps.incoming, v1)
        finally:
            self._v1_peers -= v1
            self._fds.pop(peer, None)
            self._unsent.discard(peer)
            self._parked.pop(peer, None)

    async def _serve(self, peer: Peer, incoming: RequestQueue, v1: bool) -> None:
        t = self.torrent
        v1_ok = self._v1_ok if v1 else None
        while not peer.closed:
            if not incoming:
                peer.upload_wakeup.clear()
                await peer.upload_wakeup.wait()
                continue
            grant = self._grant(peer)
            if not grant:
                await self._wait_turn(peer)  # other peers' pieces first
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
            if v1_ok is not None and not v1_ok[req.index]:
                try:
                    await self._check_v1(req.index, await self.read_piece(req.index))
                except (StorageError, InconsistentHashesError) as exc:
                    if not peer.closed:  # the first to hear it stops the torrent
                        t._fail(str(exc))
                    return
                continue  # the queue may have changed while it hashed
            if limited:
                await t.session.charge_upload(req.length)
                if not self._up_limiter.unlimited:
                    await self._up_limiter.acquire(req.length)
            await peer.proto.wait_writable()
            if peer.closed:
                return
            if not self._send_cached(peer, incoming, v1_ok, min(grant, 1 << 20), limited):
                await asyncio.sleep(0)  # never spin without yielding
                continue
            t._flush()
            await asyncio.sleep(0)  # let other peers and the network in
