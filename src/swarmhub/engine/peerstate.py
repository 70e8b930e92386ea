"""Per-peer bookkeeping of the swarm core, and the rate meter it uses (sans-IO).

Everything the swarm knows about one connected peer lives in one slotted
:class:`PeerState`: what it has, our requests to it, its requests to us, choke and
interest in both directions, rates, and the times that drive timeouts and eviction.
Times are the driver's clock values, passed in; nothing here reads a clock.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Hashable, Iterator
from typing import Final

from swarmhub._records import mypyc_attr
from swarmhub.engine.picker import Block
from swarmhub.wire import messages as m

#: ``array.append`` itself (Final: a C static), called with the array
_APPEND: Final = array.append

__all__ = ["PeerState", "RateMeter", "RequestQueue"]


# acyclic (compiled: no GC header, never tracked): a meter holds numbers and an array
# of doubles, so it can close no cycle; two per connection, 80 bytes instead of 96, and
# no link into the collector's list made and unmade per object.
@mypyc_attr(acyclic=True)
class RateMeter:
    """Bytes per second over a sliding window of about ``window`` seconds.

    Samples are bucketed per 0.1 s and a running sum is kept, so ``add`` and ``rate``
    cost O(1) amortised on the per-block hot path. Bucket start times and byte counts
    sit in two flat arrays of machine numbers (oldest first): a swarm holds two meters
    per peer, and the lab's simulator holds a million of them, where an empty ``deque``
    (~600 bytes), a list per bucket, or a list of boxed floats and ints (32 bytes more
    per value: a busy meter's 50 buckets cost 3.5 KB as lists, 0.9 KB as arrays) would
    be most of its memory. The values are the same doubles and integers either way.
    The buckets exist only while the window holds samples (None before the first and
    after the window empties): most of a swarm's upload meters never see a byte.
    Start times and counts share one array of doubles, interleaved (``start0, bytes0,
    start1, bytes1, ...``): one array header and allocation per busy meter, not two
    (``lab simulate`` N=1,000 holds ~45,000 busy meters: 64 bytes of header and a
    second malloc each). Counts are integers below 2**53, so as doubles they are exact
    and the sums are the same integers.
    """

    __slots__ = ("_buckets", "_first", "_last", "_last_bytes", "_sum", "_window", "total")

    def __init__(self, window: float = 5.0) -> None:
        self._window = window
        #: (start, bytes) per bucket, interleaved, oldest first; the newest bucket's count
        #: lives in ``_last_bytes`` until the next bucket starts (``rate`` never reads the
        #: newest one: it drops buckets before it, or all of them), so ``add`` touches no
        #: array within a bucket
        self._buckets: array[float] | None = None
        #: the oldest bucket's start while there are samples (``_buckets[0]``: an array
        #: read is a generic call compiled, and a new float, once per ``rate``)
        self._first = 0.0
        #: the newest bucket's start while there are samples (no array read per add)
        self._last = 0.0
        self._last_bytes = 0
        self._sum = 0
        self.total = 0

    def add(self, n: int, now: float) -> None:
        self.total += n
        self._sum += n
        buckets = self._buckets
        if buckets is None:
            self._buckets = array("d", (now, 0.0))
            self._first = self._last = now
            self._last_bytes = n
        elif now - self._last < 0.1:
            self._last_bytes += n
        else:
            buckets[-1] = self._last_bytes
            _APPEND(buckets, now)  # (array.append itself: by name is a look-up per call)
            _APPEND(buckets, 0.0)
            self._last = now
            self._last_bytes = n

    def rate(self, now: float) -> float:
        buckets = self._buckets
        if buckets is None:
            return 0.0
        window = self._window
        # Each array element read is a generic call compiled (no native ``array``): the
        # oldest start is read once, and the counts dropped are summed as the loop passes
        # them (exact: integers below 2**53), not through a slice, ``map`` and ``sum``.
        first = self._first
        if now - first > window:
            end = len(buckets)
            dropped = buckets[1]
            k = 2  # buckets[k] is the start of the first bucket kept
            while k < end:
                first = buckets[k]
                if now - first <= window:
                    break
                dropped += buckets[k + 1]
                k += 2
            if k == end:  # the window emptied: free the array
                self._buckets = None
                self._sum = 0
                return 0.0
            self._sum -= int(dropped)
            del buckets[:k]
            self._first = first
        span = max(1.0, now - first) if len(buckets) > 2 else 1.0
        return self._sum / min(span, window)


# acyclic: it holds a list of Requests (numbers only), so it can close no cycle either
@mypyc_attr(acyclic=True)
class RequestQueue:
    """A peer's piece requests to us, in order, with the total bytes they ask for.

    Behaves like the ``deque`` it replaces (``append``, ``popleft``, ``remove``, ``clear``,
    indexing, iteration) and adds :attr:`bytes` and :meth:`fits`. The requests sit in a
    list read from ``_head`` (popleft moves the head; the list is trimmed when the head
    passes half of it) that exists only while requests wait: most peers of a seed's
    swarm never ask one peer for anything, most that do are drained between their
    batches, and the lab's simulator holds a million queues, where a ``deque`` (~600
    bytes even when empty) each was a large share of its memory.
    """

    __slots__ = ("_head", "_q", "bytes")

    def __init__(self) -> None:
        self._q: list[m.Request] | None = None
        self._head = 0
        self.bytes = 0

    def fits(self, length: int, limit: int) -> bool:
        """Whether a request for ``length`` more bytes keeps the queue within ``limit``."""
        return self.bytes + length <= limit

    def append(self, req: m.Request) -> None:
        q = self._q
        if q is None:
            self._q = [req]
        else:
            q.append(req)
        self.bytes += req.length

    def popleft(self) -> m.Request:
        q = self._q
        if q is None:
            raise IndexError("pop from an empty RequestQueue")
        head = self._head
        req = q[head]
        head += 1
        if head == len(q):
            self._q = None  # drained: free the list
            head = 0
        elif head >= 32 and 2 * head >= len(q):
            del q[:head]
            head = 0
        self._head = head
        self.bytes -= req.length
        return req

    def head_piece_bytes(self) -> int:
        """Bytes asked by the requests at the head that are of the head's piece (0 when
        empty): an upload turn's rest of the piece, without an iterator per call."""
        q = self._q
        if q is None:
            return 0
        head = self._head
        index = q[head].index
        n = 0
        for i in range(head, len(q)):
            req = q[i]
            if req.index != index:
                break
            n += req.length
        return n

    def remove(self, req: m.Request) -> None:
        """Remove the first equal request; ValueError if there is none (like ``deque``)."""
        q = self._q
        i = -1 if q is None else next(
            (i for i in range(self._head, len(q)) if q[i] == req), -1)
        if q is None or i < 0:
            raise ValueError(f"{req!r} is not queued")
        del q[i]
        if self._head == len(q):
            self._q = None
            self._head = 0
        self.bytes -= req.length

    def clear(self) -> None:
        self._q = None
        self._head = 0
        self.bytes = 0

    def __getitem__(self, i: int) -> m.Request:
        q = self._q
        if q is None:
            raise IndexError("RequestQueue index out of range")
        if i < 0:
            i += len(q) - self._head
            if i < 0:
                raise IndexError("RequestQueue index out of range")
        return q[self._head + i]

    def __len__(self) -> int:
        q = self._q
        return 0 if q is None else len(q) - self._head

    def __bool__(self) -> bool:
        return self._q is not None

    def __iter__(self) -> Iterator[m.Request]:
        q = self._q
        return iter(()) if q is None else itertools.islice(q, self._head, None)


class PeerState:
    """One connected peer as the swarm core sees it (the driver reads, the core writes)."""

    __slots__ = (
        "addr",
        "allowed_in",
        "allowed_out",
        "am_choking",
        "am_interested",
        "choke_due_until",
        "closed",
        "connected_at",
        "down",
        "fast",
        "handle",
        "has_all",
        "have",
        "incoming",
        "key",
        "last_data",
        "last_recv",
        "last_send",
        "listen_addr",
        "min_delay",
        "num_have",
        "num_pieces",
        "outgoing",
        "peer_choking",
        "peer_id",
        "peer_interested",
        "queue_target",
        "reqq",
        "requested",
        "slot_used_at",
        "snubbed",
        "target_at",
        "unchoked_us",
        "up",
        "upload_only",
    )

    # Declared here, hot fields first: compiled, this order is the object's field order
    # (mypyc lays a native class out as its attributes are declared, and the class body
    # comes before ``__init__``). A Have, a message, a block and the walks of every peer
    # (``_tell_passed``, the tick) read the flags, the bitfield, the counts and the clocks
    # first: in __init__'s order they sat at offsets 24-248 of a 272-byte object, 4-5
    # cache lines, and at N=1,000 each event touches some other host's cold PeerStates.
    closed: bool
    peer_interested: bool
    am_interested: bool
    am_choking: bool
    peer_choking: bool
    has_all: bool
    fast: bool
    snubbed: bool
    handle: Hashable
    have: bytearray
    num_have: int
    num_pieces: int
    last_recv: float
    last_send: float
    last_data: float
    requested: dict[Block, float]
    key: Hashable
    min_delay: float
    down: RateMeter
    up: RateMeter
    incoming: RequestQueue
    queue_target: int
    target_at: float
    slot_used_at: float
    choke_due_until: float
    allowed_out: dict[int, int] | None
    allowed_in: set[int] | None

    def __init__(
        self,
        handle: Hashable,
        addr: tuple[str, int],
        peer_id: bytes,
        key: Hashable,
        num_pieces: int,
        *,
        fast: bool,
        now: float,
        queue_target: int,
        outgoing: bool = False,
    ) -> None:
        self.handle = handle
        self.addr = addr
        self.peer_id = peer_id
        #: we dialled it (two peers that dial each other keep one connection by this)
        self.outgoing = outgoing
        #: where it accepts connections (BEP 11's address for it): the address we dialled,
        #: or for a peer that dialled us (from an ephemeral port) its IP with the BEP 10
        #: ``p`` it sent, or an address whose dial turned out to reach it; None while
        #: unknown. The dialer counts it as connected, so no tracker answer or PEX message
        #: has us dial a peer we are already talking to.
        self.listen_addr: tuple[str, int] | None = addr if outgoing else None
        #: what bans apply to (the IP, or IP + peer id on loopback)
        self.key = key
        #: BEP 6 negotiated: rejects instead of silent drops, HaveAll/HaveNone
        self.fast = fast
        self.connected_at = now
        self.last_recv = now
        self.last_send = now
        #: last time payload moved either way (idle peers are evicted first)
        self.last_data = now
        self.has_all = False
        #: its BEP 10 handshake said ``upload_only`` (BEP 21): it wants nothing (a seed, or
        #: a finished partial one)
        self.upload_only = False
        self.num_have = 0
        self.have = bytearray(num_pieces)
        #: len(have), kept: is_seed runs per piece passed x peer (len of a bytearray is
        #: a generic call from compiled code)
        self.num_pieces = num_pieces
        #: blocks we asked this peer for -> when we asked
        self.requested: dict[Block, float] = {}
        #: requests the peer made that we accepted, in order (the driver serves them)
        #: Blocks the peer asked us for, in order (bounded by count and by bytes).
        self.incoming = RequestQueue()
        self.down = RateMeter()
        self.up = RateMeter()
        #: the peer's BEP 10 ``reqq`` (we keep fewer requests outstanding)
        self.reqq = 250
        self.queue_target = queue_target
        self.target_at = 0.0
        #: the shortest request-to-block time seen: about the round trip, the floor of
        #: how much of its rate we keep requested (inf until a block arrived)
        self.min_delay = math.inf
        self.snubbed = False
        #: when we last unchoked it or it last asked us for a block (an unchoke slot
        #: it leaves unused goes to a peer that will use it)
        self.slot_used_at = now
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        #: the peer unchoked us at least once (a stalled download says why)
        self.unchoked_us = False
        #: we told it NotInterested while it unchoked us: until then its Choke may be on
        #: its way, and requests would only be rejected (see Swarm._lost_interest)
        self.choke_due_until = -math.inf
        self.closed = False
        #: BEP 6: pieces it allows us to fetch while it chokes us (AllowedFast); None
        #: until it sent one (most peers never do: no set per connection)
        self.allowed_in: set[int] | None = None
        #: BEP 6: pieces we allowed it -> bytes of each we still serve while choking it;
        #: None until we decided (on its first Interested), then maybe empty
        self.allowed_out: dict[int, int] | None = None

    @property
    def is_seed(self) -> bool:
        return self.has_all or self.num_have == self.num_pieces

    def __repr__(self) -> str:
        return f"<PeerState {self.addr[0]}:{self.addr[1]} have={self.num_have}>"
