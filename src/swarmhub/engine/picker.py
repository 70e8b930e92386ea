"""Which blocks to request from which peer: the piece picker (sans-IO).

Modelled on libtorrent's ``piece_picker``: methods are named after the events that feed
it (``peer_has``, ``peer_gone``, ``block_received``, ``piece_failed`` …), peers are opaque
hashable handles, and :meth:`PiecePicker.pick` only *returns* blocks — sending the
requests is the engine's job. No sockets, no clock, no logging.

What it tracks:

1. which pieces we have (``bitfield()``), and how many;
2. each piece's availability: per-piece counts of the non-seed peers that have it, plus
   one shared counter for seeds (so a seed connecting or leaving costs O(1), not
   O(pieces));
3. every piece we lack and have not started, in *buckets by availability* (a list per
   count, with each piece's position kept so moves are O(1)): rarest-first is a walk up
   the buckets, and a random start inside a bucket breaks ties;
4. pieces in progress, with a state per block: free, requested (by which peers, at most
   two in end-game) or received (by whom: the contributors a hash failure blames);
5. the subset of those with free blocks (``_partial``), which get strict priority so
   pieces finish, get verified and can be shared quickly;
6. per peer: its bitfield, the blocks it has outstanding, and how many of its pieces we
   lack and want (``interesting`` is O(1));
7. a priority per piece (libtorrent's piece priorities): 0 = skip (never picked, never
   makes a peer interesting), 1 = normal, 2..7 = sooner. Pieces above 1 ("boosted", few:
   a streaming reader's next bytes) are kept in a dict and picked first, rarest among
   the highest priority; the rest go rarest-first (or by the sequential window) with
   priority-0 pieces filtered out. "Finished" is every wanted piece verified
   (``is_finished``); "complete" is every piece (``is_complete``).

Sequential mode (for streaming): from the first missing wanted piece (the cursor) the
next ``critical`` pieces are picked strictly in order; beyond them, up to ``window``
pieces from the cursor, the rarest piece the peer has (lowest index on ties); beyond the
window, rarest-first as usual. Strict in-order picking makes every streaming peer want
the same piece at the same time, so nobody has anything to trade; rarest-first inside a
short window keeps the swarm diverse while the player's next bytes still come first.

Piece life cycle: *untouched* (in a bucket) → *downloading* (first block requested or
received) → all blocks received → the engine hashes it → ``piece_passed`` (we have it)
or ``piece_failed`` (back to untouched, contributors returned for strikes). A piece
whose requests are all returned before any data arrived goes back to untouched too, so
"in progress" priority only goes to pieces that really have data or live requests.
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Final, NamedTuple

from swarmhub._records import mypyc_attr
from swarmhub.errors import LocalProtocolError

__all__ = [
    "DICT_POP",
    "MAX_PRIORITY",
    "Block",
    "BlockResult",
    "BlockTable",
    "PiecePicker",
    "make_block",
    "pad_blocks_for",
]

#: Highest piece priority (libtorrent's top_priority).
MAX_PRIORITY = 7

# Final: constants mypyc inlines (a plain module global is a dict lookup per use)
_FREE: Final = 0
_REQUESTED: Final = 1
_RECEIVED: Final = 2
_NOT_BITS = bytes.maketrans(b"\x00\x01", b"\x01\x00")
_NONZERO = bytes([0] + [1] * 255)
#: ``dict.pop`` itself, called with the dict (Final: a C static): compiled, ``d.pop(k, x)``
#: is a call by name, which looks the method up on the type each time (~100 instructions).
#: The one definition for the core (the swarm imports it).
DICT_POP: Final = dict.pop


class Block(NamedTuple):
    """A request-sized slice of a piece: what Request/Piece/Cancel messages carry."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as the wire names it
    begin: int
    length: int


class BlockResult(NamedTuple):
    """What :meth:`PiecePicker.block_received` tells the engine.

    ``cancel_peers``: other peers that had requested the same block (end-game) and
    should now get a Cancel. ``piece_complete``: every block of the piece is in, so the
    engine should hash it and call ``piece_passed`` or ``piece_failed``.
    """

    cancel_peers: tuple[Hashable, ...]
    piece_complete: bool

    @property
    def cancel(self) -> tuple[Hashable, ...]:
        """Short alias of ``cancel_peers``."""
        return self.cancel_peers


#: ``Block`` from a tuple without the Python-level ``__new__`` of a named tuple (per block:
#: here, in the peer's receive path and in the simulator's upload loop).
make_block: Final[Callable[[tuple[int, int, int]], Block]] = functools.partial(tuple.__new__, Block)

class BlockTable:
    """Every :class:`Block` of one torrent's geometry, each made once (a piece's row on
    first use) and then handed out again: ``lab simulate`` gives one table to all its
    hosts' pickers and serves from it, so the block a peer receives is the very object
    its request recorded (dict look-ups end on identity, not a tuple comparison), and
    none is made per request and per send (~265,000 at N=64, ~900 instructions each
    through ``make_block``). Blocks are values, so sharing them changes no result. A real
    client gets its blocks off the wire: its pickers make their own (no table)."""

    __slots__ = ("_bs", "_last_len", "_n", "_piece_length", "_rows")

    def __init__(self, num_pieces: int, piece_length: int, total_length: int,
                 block_size: int = 16384) -> None:
        self._n = num_pieces
        self._piece_length = piece_length
        self._last_len = total_length - piece_length * (num_pieces - 1) if num_pieces else 0
        self._bs = block_size
        self._rows: list[list[Block] | None] = [None] * num_pieces

    def row(self, index: int) -> list[Block]:
        """The blocks of piece ``index``, in order."""
        row = self._rows[index]
        if row is None:
            size = self._last_len if index == self._n - 1 else self._piece_length
            bs = self._bs
            row = [make_block((index, begin, bs if begin + bs <= size else size - begin))
                   for begin in range(0, size, bs)]
            self._rows[index] = row
        return row

    def get(self, index: int, begin: int, length: int) -> Block:
        """The block ``(index, begin, length)``: the table's when it is one of the
        torrent's blocks, else a new one (a request for an odd slice)."""
        # (int arithmetic, not divmod or reading the block: a builtin called by name
        # and a generic item read, compiled)
        if 0 <= index < self._n and begin >= 0:
            bs = self._bs
            size = self._last_len if index == self._n - 1 else self._piece_length
            j = begin // bs
            if j * bs == begin and begin < size \
                    and length == (bs if begin + bs <= size else size - begin):
                row = self._rows[index]
                if row is None:
                    row = self.row(index)
                return row[j]
        return make_block((index, begin, length))

    def find(self, key: tuple[int, int, int]) -> Block:
        """The block ``key`` (index, begin, length) off the wire: the table's when its
        piece has a row (a piece being requested), else a new one; never makes a row.

        Why: a real client's received blocks were made per block (``make_block``, ~250 ns
        from the peer's receive loop) only to be looked up in the dicts of requests, whose
        keys are the table's: the table's own object is found at once and ends those
        look-ups on identity. No row is made for what a peer sends (its memory is the
        pieces we request)."""
        index, begin, length = key
        if 0 <= index < self._n and self._rows[index] is not None:
            return self.get(index, begin, length)  # (the row is there: get makes none)
        return make_block(key)

    def drop(self, index: int) -> None:
        """Forget piece ``index``'s row (a real client's piece that passed: nobody asks
        for its blocks again; a table of its own stays as small as the pieces in
        progress). Blocks handed out before stay valid (they are values)."""
        if 0 <= index < self._n:
            self._rows[index] = None

#: Block states of a run of requested blocks, by its length (up to a 1 MiB piece's).
_RUNS: Final = tuple(bytes([_REQUESTED]) * k for k in range(65))

_NOTHING: Final = BlockResult((), False)
_COMPLETE: Final = BlockResult((), True)

# (compiled: a module attribute and a method looked up by name on every draw, otherwise)
_RANDOM: Final = random.Random
_GETRANDBITS: Final[Callable[[random.Random, int], int]] = random.Random.getrandbits


def _randbelow(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)`` for ``n > 0``: the same draw (CPython's
    ``_randbelow_with_getrandbits``, what ``randrange`` runs for a plain ``Random``), without
    its two interpreted calls. Why: ``_choose_rarest`` draws a start in each bucket it
    visits, ~9,000 times per peer and 32 MiB (p2p N=32, 32 KiB pieces). Another kind of
    rng (a subclass) keeps its own ``randrange``."""
    if type(rng) is not _RANDOM:
        return rng.randrange(n)
    k = n.bit_length()
    r: int = _GETRANDBITS(rng, k)
    while r >= n:
        r = _GETRANDBITS(rng, k)
    return r


class _Piece:
    """Block states of one piece in progress."""

    __slots__ = (
        "blocks",
        "contributors",
        "num_free",
        "num_pad",
        "num_received",
        "num_requested",
        "requesters",
        "tail",
    )

    def __init__(self, num_blocks: int, pad: frozenset[int]) -> None:
        self.blocks = bytearray(num_blocks)
        for j in pad:
            self.blocks[j] = _RECEIVED
        #: every block from here on is free (some before it may be too): when all the
        #: free blocks are there (``num_free == len(blocks) - tail``, most pieces), _take
        #: takes them without searching the states
        self.tail = max(pad) + 1 if pad else 0
        self.num_pad = len(pad)
        self.num_received = len(pad)
        self.num_requested = 0
        self.num_free = num_blocks - len(pad)
        #: block number -> peers that requested it (1, or 2 in end-game); the lists are
        #: shared between blocks (see _take): replaced, never changed in place
        self.requesters: dict[int, list[Hashable]] = {}
        self.contributors: set[Hashable] = set()


@mypyc_attr(acyclic=True)  # a bytearray and an int: no cycle, so no GC header or tracking
class _Peer:
    """What the picker knows of one connected non-seed peer: its pieces (one 0/1 byte
    each) and how many of them we lack and want (``interesting`` is ``lack > 0``). One
    record, not a dict per field: a Have costs one lookup by peer, not three. ``bits``
    may be the caller's own bitfield of the peer (see :meth:`PiecePicker.peer_has`)."""

    __slots__ = ("bits", "lack")

    def __init__(self, n: int, bits: bytearray | None = None) -> None:
        self.bits = bytearray(n) if bits is None else bits
        self.lack = 0


def pad_blocks_for(
    pads: Iterable[tuple[int, int]],
    piece_length: int,
    total_length: int,
    block_size: int = 16384,
) -> list[tuple[int, int]]:
    """The ``(index, begin)`` blocks lying wholly inside the given pad ranges.

    ``pads`` are ``(offset, length)`` of BEP 47 pad files in the piece space; the result
    is what :class:`PiecePicker` takes as ``pad_blocks``.
    """
    out: list[tuple[int, int]] = []
    for offset, length in pads:
        end = min(offset + length, total_length)
        index = offset // piece_length
        while index * piece_length < end:
            base = index * piece_length
            piece_end = min(base + piece_length, total_length)
            j = max(0, -(-(offset - base) // block_size))
            while base + j * block_size < piece_end:
                if min(base + (j + 1) * block_size, piece_end) > end:
                    break
                out.append((index, j * block_size))
                j += 1
            index += 1
    return out


class PiecePicker:
    """Rarest-first block picker with in-progress priority and end-game mode."""

    # Declared here, what a Have (``peer_has``) and ``interesting`` read: compiled, this is
    # the object's field order (mypyc lays attributes out as declared, the class body
    # before ``__init__``); in __init__'s order they spread over a 304-byte object.
    _n: int
    _peers: dict[Hashable, _Peer]
    _eg_dry: dict[Hashable, int]
    _avail: list[int]
    _pos: list[int]
    _barren: dict[Hashable, int]
    _have: bytearray
    _num_skip: int
    _prio: bytearray
    _seeds: set[Hashable]

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        *,
        block_size: int = 16384,
        rng: random.Random | None = None,
        pad_blocks: Iterable[tuple[int, int]] = (),
        random_first: int = 4,
        sequential: bool = False,
        critical: int = 4,
        window: int = 32,
        blocks: BlockTable | None = None,
    ) -> None:
        if piece_length <= 0 or block_size <= 0 or num_pieces < 0:
            raise LocalProtocolError("piece_length and block_size must be positive")
        fits = piece_length * (num_pieces - 1) < total_length <= piece_length * num_pieces
        if not fits and not (num_pieces == 0 and total_length == 0):
            raise LocalProtocolError(
                f"{num_pieces} pieces of {piece_length} bytes cannot hold {total_length} bytes"
            )
        n = num_pieces
        self._n = n
        self._piece_length = piece_length
        self._total_length = total_length
        self._bs = block_size
        self._last_len = total_length - piece_length * (n - 1) if n else 0
        #: where requests' Blocks come from: a table shared with others of the same
        #: geometry (see :class:`BlockTable`), or one of our own whose rows go as their
        #: pieces pass (a real client: its receive path finds the requests' Blocks there)
        self._table: BlockTable | None = blocks if blocks is not None else BlockTable(
            n, piece_length, total_length, block_size)
        self._own_table = blocks is None
        self._rng = rng if rng is not None else random.Random()
        self._random_first = random_first
        self._sequential = sequential
        self._seq_cursor = 0
        self._critical = max(1, critical)
        self._window = max(self._critical, window)
        #: priority per piece; 0 skip, 1 normal, >1 sooner
        self._prio = bytearray(b"\x01" * num_pieces)
        self._num_skip = 0  # pieces at priority 0
        #: the wanted pieces, listed when they are few (most skipped): rarest-first then
        #: scans these instead of buckets full of skipped pieces
        self._few: list[int] | None = None
        self._skip_untouched = 0  # of those, how many sit in the buckets
        self._wanted_missing = num_pieces  # pieces with priority > 0 we lack
        self._boosted: dict[int, None] = {}  # missing pieces with priority > 1

        self._have = bytearray(n)
        self._num_have = 0
        self._avail = [0] * n
        bucket0 = list(range(n))
        self._rng.shuffle(bucket0)
        self._buckets: list[list[int]] = [bucket0]
        self._pos = [0] * n
        for p, idx in enumerate(bucket0):
            self._pos[idx] = p
        self._untouched = n
        #: peers found to have no untouched wanted piece, with the ``_epoch`` of that
        #: finding: until a piece becomes untouched again (or wanted), or the peer gets
        #: a piece, ``pick`` skips the rarest-first walk for them. In a busy swarm most
        #: picks after a block find nothing new (everything the peer has is in progress
        #: already), and the walk over every bucket was the picker's largest cost.
        self._barren: dict[Hashable, int] = {}
        self._epoch = 0
        #: peers whose end-game scan found no block, with the ``_eg_gen`` of that scan:
        #: until a block gets a new requester or loses one, a priority or reservation
        #: changes or the peer gets a piece, ``pick`` skips the scan for them. Without
        #: it, every block received in end-game rescanned every outstanding request
        #: (quadratic in the queue depth: ~1,500 scans of ~335 requests at the end of a
        #: one-peer 1 GiB download with the default 500-request queue).
        self._eg_dry: dict[Hashable, int] = {}
        self._eg_gen = 0
        self._downloading: dict[int, _Piece] = {}
        self._partial: dict[int, None] = {}
        #: pieces another source fetches whole (see :meth:`reserve`) -> that source
        self._reserved: dict[int, Hashable] = {}

        self._peers: dict[Hashable, _Peer] = {}
        self._seeds: set[Hashable] = set()
        self._reqs: dict[Hashable, dict[Block, None]] = {}

        pad: dict[int, set[int]] = {}
        for index, begin in pad_blocks:
            self._check_index(index)
            j, rem = divmod(begin, block_size)
            if rem or not 0 <= j < self.num_blocks(index):
                raise LocalProtocolError(f"pad block ({index}, {begin}) is not a block")
            pad.setdefault(index, set()).add(j)
        self._pad = {i: frozenset(js) for i, js in pad.items()}
        for index, js in self._pad.items():
            if len(js) == self.num_blocks(index):
                self._mark_have(index)  # all zeros by definition: nothing to fetch

    # ---------------------------------------------------------------- geometry

    @property
    def num_pieces(self) -> int:
        return self._n

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def blocks(self) -> BlockTable | None:
        """The table our requests' Blocks come from (see :meth:`BlockTable.find`)."""
        return self._table

    def piece_size(self, index: int) -> int:
        """Bytes in piece ``index`` (the last one may be short)."""
        return self._last_len if index == self._n - 1 else self._piece_length

    def _block(self, index: int, j: int) -> Block:
        """Block ``j`` of piece ``index`` (the shared table's, if there is one)."""
        if self._table is not None:
            return self._table.row(index)[j]
        bs = self._bs
        return Block(index, j * bs, min(bs, self.piece_size(index) - j * bs))

    def num_blocks(self, index: int) -> int:
        return -(-self.piece_size(index) // self._bs)

    def block_of(self, index: int, begin: int) -> Block | None:
        """The canonical block at ``(index, begin)``, or None if no block starts there."""
        if not 0 <= index < self._n or begin % self._bs:
            return None
        size = self.piece_size(index)
        if not 0 <= begin < size:
            return None
        return Block(index, begin, min(self._bs, size - begin))

    def _block_no(self, block: Block) -> int | None:
        canon = self.block_of(block.index, block.begin)
        if canon is None or canon.length != block.length:
            return None
        return block.begin // self._bs

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise LocalProtocolError(f"piece index {index} out of range 0..{self._n - 1}")

    # ---------------------------------------------------------------- queries

    def have(self, index: int) -> bool:
        return bool(self._have[index])

    @property
    def num_have(self) -> int:
        return self._num_have

    @property
    def missing_pieces(self) -> int:
        return self._n - self._num_have

    @property
    def is_complete(self) -> bool:
        """Every piece verified (we are a seed)."""
        return self._num_have == self._n

    @property
    def is_finished(self) -> bool:
        """Every wanted (priority > 0) piece verified: the download is done."""
        return self._wanted_missing == 0

    @property
    def wanted_missing(self) -> int:
        """Pieces with priority > 0 that we still lack."""
        return self._wanted_missing

    def priority(self, index: int) -> int:
        return self._prio[index]

    def priorities(self) -> bytearray:
        """A copy of the per-piece priorities."""
        return bytearray(self._prio)

    @property
    def sequential(self) -> bool:
        return self._sequential

    def set_sequential(self, on: bool) -> None:
        """Switch sequential (windowed in-order) picking on or off; takes effect at once."""
        self._sequential = on
        self._seq_cursor = 0

    def set_piece_priority(self, index: int, priority: int) -> None:
        """Set one piece's priority (0 skip, 1 normal, up to ``MAX_PRIORITY`` sooner).

        A piece in progress keeps its outstanding requests; at priority 0 no more of its
        blocks are picked. Crossing 0 costs O(peers) (interest counts); other changes O(1).
        """
        self._check_index(index)
        if not 0 <= priority <= MAX_PRIORITY:
            raise LocalProtocolError(f"piece priority {priority} is not in 0..{MAX_PRIORITY}")
        old = self._prio[index]
        if old == priority:
            return
        self._prio[index] = priority
        self._eg_gen += 1
        missing = not self._have[index]
        if priority > 1 and missing:
            self._boosted[index] = None
        else:
            self._boosted.pop(index, None)
        if (old == 0) == (priority == 0):
            return
        delta = 1 if old == 0 else -1
        self._epoch += 1
        self._num_skip -= delta
        self._few = None  # rebuilt on the next pick
        if self._pos[index] >= 0:
            self._skip_untouched -= delta
        if not missing:
            return
        self._wanted_missing += delta
        for rec in self._peers.values():
            if rec.bits[index]:
                rec.lack += delta

    def set_priorities(self, priorities: Iterable[int]) -> None:
        """Set every piece's priority at once (one value per piece)."""
        values = list(priorities)
        if len(values) != self._n:
            raise LocalProtocolError(f"{len(values)} priorities for {self._n} pieces")
        for index, priority in enumerate(values):
            self.set_piece_priority(index, priority)

    def bitfield(self) -> bytearray:
        """A copy of our have-state, one 0/1 byte per piece."""
        return bytearray(self._have)

    def availability(self, index: int) -> int:
        """How many connected peers have piece ``index``."""
        return self._avail[index] + len(self._seeds)

    def interesting(self, peer: Hashable) -> bool:
        """Whether ``peer`` has a piece we lack (we should be interested in it)."""
        if peer in self._seeds:
            return self._wanted_missing > 0
        rec = self._peers.get(peer)
        return rec is not None and rec.lack > 0

    def outstanding(self, peer: Hashable) -> list[Block]:
        """Blocks requested from ``peer`` and not yet received, failed or cancelled."""
        return list(self._reqs.get(peer, ()))

    def wanted(self, block: Block) -> bool:
        """Whether the data of ``block`` is still needed (check before writing it)."""
        j = self._block_no(block)
        if j is None or self._have[block.index]:
            return False
        piece = self._downloading.get(block.index)
        return piece is None or piece.blocks[j] != _RECEIVED

    @property
    def in_endgame(self) -> bool:
        """Every missing wanted block has been requested (libtorrent's strict end-game).

        Pieces no connected peer has yet hold end-game back: in a young swarm, and
        always behind a super-seed that shows its pieces a few at a time, they are most
        of what is missing, and a peer that had requested all it could see went into
        end-game for the whole download: in ``lab simulate`` N=16 a seventh of every
        peer's upload was duplicate blocks, cancelled too late to save anything."""
        if self._wanted_missing == 0:
            return False
        if self._untouched - self._skip_untouched > 0:
            return False
        prio = self._prio
        return not any(prio[i] for i in self._partial) if self._num_skip else not self._partial

    # ---------------------------------------------------------------- availability

    def _move(self, index: int, old: int, new: int) -> None:
        """Move an untouched piece from bucket ``old`` to bucket ``new``."""
        buckets = self._buckets
        bucket = buckets[old]
        p = self._pos[index]
        last = bucket.pop()
        if last != index:
            bucket[p] = last
            self._pos[last] = p
        if new == len(buckets):
            buckets.append([])
        target = buckets[new]
        self._pos[index] = len(target)
        target.append(index)

    def _bucket_remove(self, index: int) -> None:
        bucket = self._buckets[self._avail[index]]
        p = self._pos[index]
        last = bucket.pop()
        if last != index:
            bucket[p] = last
            self._pos[last] = p
        self._pos[index] = -1
        self._untouched -= 1
        if not self._prio[index]:
            self._skip_untouched -= 1

    def _bucket_add(self, index: int) -> None:
        self._epoch += 1  # untouched again: peers that had nothing new may have it
        a = self._avail[index]
        while len(self._buckets) <= a:
            self._buckets.append([])
        bucket = self._buckets[a]
        self._pos[index] = len(bucket)
        bucket.append(index)
        self._untouched += 1
        if not self._prio[index]:
            self._skip_untouched += 1

    def _inc(self, index: int) -> None:
        a = self._avail[index]
        self._avail[index] = a + 1
        if self._pos[index] >= 0:
            self._move(index, a, a + 1)

    def _dec(self, index: int) -> None:
        a = self._avail[index]
        self._avail[index] = a - 1
        if self._pos[index] >= 0:
            self._move(index, a, a - 1)

    def _add_all(self, mask: bytes | bytearray, delta: int) -> None:
        """Availability ``+= delta`` for every piece set in ``mask`` (one 0/1 byte each).

        Bitfields and departures touch thousands of pieces: past a few hundred, updating
        the counts with ``map`` and re-sorting the buckets in C beats moving pieces one
        by one (a 32k-piece bitfield: a few ms instead of ~11 ms).
        """
        if mask.count(1) < 512:
            step = self._inc if delta > 0 else self._dec
            for i in itertools.compress(range(self._n), mask):
                step(i)
            return
        avail = self._avail = list(
            map(operator.add if delta > 0 else operator.sub, self._avail, mask)
        )
        key = avail.__getitem__
        untouched = sorted(itertools.chain.from_iterable(self._buckets), key=key)
        buckets: list[list[int]] = [[] for _ in range(max(avail, default=0) + 1)]
        for a, group in itertools.groupby(untouched, key=key):
            buckets[a] = list(group)
        setpos = self._pos.__setitem__
        for bucket in buckets:
            collections.deque(map(setpos, bucket, range(len(bucket))), maxlen=0)
        self._buckets = buckets

    def _peer(self, peer: Hashable, shared: bytearray | None = None) -> _Peer:
        rec = self._peers.get(peer)
        if rec is None:
            if shared is not None and len(shared) != self._n:
                raise LocalProtocolError(f"bitfield must be {self._n} bytes")
            rec = self._peers[peer] = _Peer(self._n, shared)
        return rec

    def peer_has(self, peer: Hashable, index: int, shared: bytearray | None = None) -> None:
        """A Have message: ``peer`` now has piece ``index``.

        ``shared``: the caller's own bitfield of ``peer`` (one 0/1 byte per piece, all
        zero until the picker's first word of the peer), which the picker then keeps as
        its record of it and writes itself (here and in :meth:`peer_has_bitfield`)
        until :meth:`peer_has_all` or :meth:`peer_gone`; the caller reads it but must
        not write it meanwhile. One bitfield per connection, not two: the swarm core's
        ``PeerState.have`` (a Have read and wrote both: ``lab simulate`` holds ~100,000
        connections at N=1,000). Passed at every call (only the first that makes the
        record uses it)."""
        if not 0 <= index < self._n:
            self._check_index(index)
        rec = self._peers.get(peer)
        if rec is None:
            if peer in self._seeds:
                return
            rec = self._peer(peer, shared)
        bits = rec.bits
        if bits[index]:
            return
        bits[index] = 1
        if self._eg_dry:  # (empty until end-game: no lookup per Have before it)
            self._eg_dry.pop(peer, None)
        avail = self._avail
        a = avail[index]
        avail[index] = a + 1
        if self._pos[index] >= 0:  # untouched: one bucket up, and new to this peer
            self._move(index, a, a + 1)
            barren = self._barren
            if peer in barren:  # (not pop: a method call per Have, compiled)
                del barren[peer]
        # (no piece skipped: no priority to read, a generic call per Have compiled)
        if not self._have[index] and (not self._num_skip or self._prio[index]):
            rec.lack += 1

    def peer_has_bitfield(self, peer: Hashable, have: bytes | bytearray,
                          shared: bytearray | None = None) -> None:
        """A Bitfield message, already unpacked to one 0/1 byte per piece (``shared``: as
        in :meth:`peer_has`; ``have`` may be it)."""
        if len(have) != self._n or have.translate(None, b"\x00\x01"):
            raise LocalProtocolError(
                f"bitfield must be {self._n} bytes of 0/1, got {len(have)} bytes"
            )
        if peer in self._seeds:
            return
        self._barren.pop(peer, None)
        self._eg_dry.pop(peer, None)
        if self._n and have.count(0) == 0:
            self.peer_has_all(peer)
            return
        rec = self._peer(peer, shared)
        bits = rec.bits
        n = self._n
        old, theirs = int.from_bytes(bits, "big"), int.from_bytes(have, "big")
        bits[:] = (old | theirs).to_bytes(n, "big")
        self._add_all((theirs & ~old).to_bytes(n, "big"), 1)
        missing = int.from_bytes(self._have.translate(_NOT_BITS), "big")
        if self._num_skip:
            missing &= int.from_bytes(self._prio.translate(_NONZERO), "big")
        rec.lack = (int.from_bytes(bits, "big") & missing).bit_count()

    def peer_has_all(self, peer: Hashable) -> None:
        """A HaveAll message (BEP 6) or a full bitfield: ``peer`` is a seed."""
        if peer in self._seeds:
            return
        self._barren.pop(peer, None)
        self._eg_dry.pop(peer, None)
        rec = self._peers.pop(peer, None)
        if rec is not None:
            self._add_all(rec.bits, -1)
        self._seeds.add(peer)

    def peer_gone(self, peer: Hashable) -> list[Block]:
        """The connection closed: drop its availability and free its requests.

        Returns the blocks it had outstanding (now back in the pool).
        """
        blocks = self.peer_choked(peer)
        self._reqs.pop(peer, None)
        self._barren.pop(peer, None)
        self._eg_dry.pop(peer, None)
        if peer in self._seeds:
            self._seeds.discard(peer)
        else:
            rec = self._peers.pop(peer, None)
            if rec is not None:
                self._add_all(rec.bits, -1)
        return blocks

    # ---------------------------------------------------------------- our pieces

    def _mark_have(self, index: int) -> None:
        if self._have[index]:
            return
        if self._pos[index] >= 0:
            self._bucket_remove(index)
        piece = self._downloading.pop(index, None)
        if piece is not None:
            self._partial.pop(index, None)
            self._drop_requests(index, piece)
        self._reserved.pop(index, None)
        self._have[index] = 1
        self._num_have += 1
        if self._own_table and self._table is not None:
            self._table.drop(index)  # nobody asks for its blocks again
        self._boosted.pop(index, None)
        if not self._prio[index]:
            return  # never counted as wanted
        self._wanted_missing -= 1
        for rec in self._peers.values():
            if rec.bits[index]:
                rec.lack -= 1

    def _drop_requests(self, index: int, piece: _Piece) -> None:
        """Forget every live request of ``piece`` (it was passed or is being reset)."""
        for j, peers in piece.requesters.items():
            block = self._block(index, j)
            for p in peers:
                reqs = self._reqs.get(p)
                if reqs is not None:
                    reqs.pop(block, None)
        piece.requesters.clear()

    def we_have(self, index: int) -> None:
        """We have piece ``index`` already (resume data, a recheck)."""
        self._check_index(index)
        self._mark_have(index)

    def piece_passed(self, index: int) -> None:
        """The hash of piece ``index`` checked out: it is ours."""
        self._check_index(index)
        self._mark_have(index)

    def piece_failed(self, index: int) -> set[Hashable]:
        """The hash of piece ``index`` failed: fetch it again.

        Returns the peers that sent blocks of it, so the engine can count strikes (and
        ban). All of its blocks go back to the pool.
        """
        self._check_index(index)
        self._eg_gen += 1
        piece = self._downloading.pop(index, None)
        if piece is None or self._have[index]:
            return set()  # (a piece held whole stays with its source)
        self._reserved.pop(index, None)
        self._partial.pop(index, None)
        self._drop_requests(index, piece)
        self._bucket_add(index)
        return piece.contributors

    def forget_blocks(self, index: int, begins: Iterable[int]) -> None:
        """Received blocks of unfinished piece ``index`` are void (their sender was
        banned): fetch them again. Blocks not received, pads and pieces we have are left
        alone; a piece left with no data and no requests is untouched again."""
        self._check_index(index)
        self._eg_gen += 1
        piece = self._downloading.get(index)
        if piece is None or self._have[index]:
            return
        pad = self._pad.get(index, frozenset())
        blocks = piece.blocks
        for begin in begins:
            j, rem = divmod(begin, self._bs)
            if rem or not 0 <= j < len(blocks) or j in pad or blocks[j] != _RECEIVED:
                continue
            blocks[j] = _FREE
            piece.num_received -= 1
            piece.num_free += 1
        if not piece.num_free:
            return
        if not piece.num_requested and piece.num_received == piece.num_pad:
            del self._downloading[index]
            self._partial.pop(index, None)
            self._bucket_add(index)
        else:
            self._partial[index] = None

    # ---------------------------------------------------------------- picking

    def pick(self, peer: Hashable, count: int) -> list[Block]:
        """Up to ``count`` blocks to request from ``peer``; they are marked requested.

        Order: free blocks of pieces in progress, then new pieces (random while we have
        fewer than ``random_first`` pieces, else rarest first, or in index order when
        ``sequential``), then — in end-game only, and only for a peer with nothing
        outstanding (libtorrent's rule: duplicates keep idle peers busy, they do not
        queue behind a busy peer's requests) — blocks already requested from one other
        peer.
        """
        if count <= 0 or self._wanted_missing == 0:
            return []
        rec = self._peers.get(peer)  # (a seed has no record: never in both)
        if rec is None and peer not in self._seeds:
            return []
        bits = rec.bits if rec is not None else None
        reqs = self._reqs.get(peer)
        if reqs is None:  # (not setdefault: that builds an empty dict per call)
            reqs = self._reqs[peer] = {}
        idle = not reqs  # end-game duplicates go only to a peer with nothing outstanding
        out: list[Block] = []
        partial = self._partial
        if partial:
            prio = self._prio
            skip = self._num_skip > 0
            downloading = self._downloading
            # The live dict, not a tuple of it per call (~760 instructions, compiled): a
            # _take short of ``count`` took every free block, so its piece left ``partial``
            # (the only change _take makes to it) and the walk starts over, where the
            # pieces before it are skipped again as before.
            again = True
            while again:
                again = False
                for index in partial:
                    if (bits is not None and not bits[index]) or (skip and not prio[index]):
                        continue
                    self._take(peer, index, downloading[index], count - len(out), out, reqs)
                    if len(out) >= count:
                        return out
                    if index not in partial:
                        again = True
                        break
        barren = self._barren
        while len(out) < count and self._untouched:
            if barren.get(peer) == self._epoch:
                break  # nothing untouched that it has, as found before (see _barren)
            new = self._choose_new(bits)
            if new is None:
                barren[peer] = self._epoch
                break
            self._take(peer, new, self._start(new), count - len(out), out, reqs)
        if len(out) < count and idle and self.in_endgame:
            self._endgame(peer, bits, count, out, reqs)
        return out

    def pick_allowed(self, peer: Hashable, count: int, pieces: Iterable[int]) -> list[Block]:
        """:meth:`pick` limited to ``pieces``: what a peer that chokes us lets us fetch
        anyway (BEP 6 Allowed Fast). Free blocks of those of them that it has and we
        want, in progress or untouched (not one another source holds whole); no end-game
        duplicates."""
        out: list[Block] = []
        if count <= 0 or self._wanted_missing == 0:
            return out
        rec = self._peers.get(peer)
        if rec is None and peer not in self._seeds:
            return out
        reqs = self._reqs.get(peer)
        if reqs is None:
            reqs = self._reqs[peer] = {}
        for index in sorted(pieces):
            if not 0 <= index < self._n or self._have[index] or not self._prio[index] \
                    or (rec is not None and not rec.bits[index]):
                continue
            piece = self._downloading.get(index)
            if piece is None:
                if self._pos[index] < 0:
                    continue  # held whole by another source (a web seed)
                piece = self._start(index)
            if piece.num_free:
                self._take(peer, index, piece, count - len(out), out, reqs)
                if len(out) >= count:
                    break
        return out

    def _start(self, index: int) -> _Piece:
        self._bucket_remove(index)
        piece = _Piece(self.num_blocks(index), self._pad.get(index, frozenset()))
        self._downloading[index] = piece
        if piece.num_free:
            self._partial[index] = None
        return piece

    def _take(
        self,
        peer: Hashable,
        index: int,
        piece: _Piece,
        need: int,
        out: list[Block],
        reqs: dict[Block, None],
    ) -> None:
        # Runs of free blocks at a time: a piece's free blocks are mostly one run at its
        # end, from ``tail``, found without a search (compiled, ``bytearray.find`` is a
        # call by name that parses its arguments: ~1,350 instructions).
        blocks = piece.blocks
        bs = self._bs
        size = self.piece_size(index)
        n = len(blocks)
        requesters = piece.requesters
        mine = [peer]  # one list for the blocks taken here: requester lists are never
        taken = 0      # changed in place (end-game and _unrequest replace them)
        tail = piece.tail
        row = self._table.row(index) if self._table is not None else None
        # the first free block: the tail's when every free block is in it (most pieces)
        j = (tail if tail < n else -1) if piece.num_free == n - tail else blocks.find(_FREE)
        while j != -1 and taken < need:
            k = j + need - taken
            if k > n:
                k = n
            if j < tail:  # (from the tail on, every block is free)
                stop = blocks.find(_REQUESTED, j, k)
                if stop != -1:
                    k = stop
                stop = blocks.find(_RECEIVED, j, k)
                if stop != -1:
                    k = stop
            run = k - j
            if run > 8:  # (a slice store costs as much as ~8 one-byte stores, compiled)
                blocks[j:k] = _RUNS[run] if run < len(_RUNS) else bytes([_REQUESTED]) * run
            for x in range(j, k):
                if run <= 8:
                    blocks[x] = _REQUESTED
                requesters[x] = mine
                if row is not None:
                    block = row[x]
                else:
                    begin = x * bs
                    block = make_block((index, begin, bs if begin + bs <= size else size - begin))
                out.append(block)
                reqs[block] = None
            taken += run
            if k > tail:
                tail = k
            if taken >= need or k == n:
                break
            j = k if k == tail else blocks.find(_FREE, k)
        piece.tail = tail
        piece.num_free -= taken
        piece.num_requested += taken
        self._eg_gen += 1  # new requested blocks: end-game candidates for other peers
        if not piece.num_free:
            self._partial.pop(index, None)

    def _choose_new(self, bits: bytearray | None) -> int | None:
        if self._boosted:
            index = self._choose_boosted(bits)
            if index is not None:
                return index
        if self._sequential:
            index = self._choose_sequential(bits)
            if index is not None:
                return index
        elif self._num_have < self._random_first:
            index = self._choose_random(bits)
            if index is not None:
                return index
        return self._choose_rarest(bits)

    def _choose_boosted(self, bits: bytearray | None) -> int | None:
        """The untouched boosted piece the peer has: highest priority, then rarest, then
        lowest index (a reader's next bytes come in order)."""
        best: tuple[int, int, int] | None = None
        pos, prio, avail = self._pos, self._prio, self._avail
        for i in self._boosted:
            if pos[i] < 0 or (bits is not None and not bits[i]):
                continue
            key = (-prio[i], avail[i], i)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    def _choose_few(self, bits: bytearray | None) -> int | None:
        """Rarest-first over the list of wanted pieces (when most pieces are skipped):
        O(wanted) instead of walking buckets of skipped pieces; ties by a random start."""
        few = self._few
        if few is None:
            few = self._few = [i for i in range(self._n) if self._prio[i]]
        if not few:
            return None
        pos, avail = self._pos, self._avail
        start = _randbelow(self._rng, len(few))
        best, best_a = None, -1
        for i in itertools.chain(itertools.islice(few, start, None),
                                 itertools.islice(few, start)):
            if pos[i] < 0 or (bits is not None and not bits[i]):
                continue
            a = avail[i]
            if best is None or a < best_a:
                best, best_a = i, a
                if a == 0 and bits is None:
                    break
        return best

    def _choose_rarest(self, bits: bytearray | None) -> int | None:
        if self._num_skip * 2 > self._n:
            return self._choose_few(bits)
        buckets = self._buckets
        rng = self._rng
        skip = self._num_skip > 0
        prio = self._prio
        if bits is None:  # a seed has everything: the lowest bucket wins outright
            for bucket in buckets:
                if not bucket:
                    continue
                if not skip:
                    return bucket[_randbelow(rng, len(bucket))]
                start = _randbelow(rng, len(bucket))
                found = next(filter(prio.__getitem__, itertools.islice(bucket, start, None)),
                             None)
                if found is None:
                    found = next(filter(prio.__getitem__, itertools.islice(bucket, start)),
                                 None)
                if found is not None:
                    return found
            return None
        # The first piece the peer has (and we want) from a random start in the lowest
        # bucket, wrapping around: plain loops (compiled: no iterator objects and calls
        # per bucket, which cost more than the few pieces a bucket mostly holds)
        for a in range(1, len(buckets)):  # bucket 0: pieces only seeds have
            bucket = buckets[a]
            size = len(bucket)
            if not size:
                continue
            start = _randbelow(rng, size)
            x = start
            while x < size:
                i = bucket[x]
                if bits[i] and (not skip or prio[i]):
                    return i
                x += 1
            x = 0
            while x < start:
                i = bucket[x]
                if bits[i] and (not skip or prio[i]):
                    return i
                x += 1
        return None

    def _choose_random(self, bits: bytearray | None) -> int | None:
        buckets = self._buckets
        lo = 0 if bits is None else 1
        total = self._untouched - (0 if lo == 0 else len(buckets[0]))
        if total <= 0:
            return None
        index = -1
        for _ in range(16):
            r = _randbelow(self._rng, total)
            for a in range(lo, len(buckets)):
                size = len(buckets[a])
                if r < size:
                    index = buckets[a][r]
                    break
                r -= size
            if (bits is None or bits[index]) and self._prio[index]:
                return index
        return None

    def _choose_sequential(self, bits: bytearray | None) -> int | None:
        """The critical pieces in order, then the rarest in the window (see the module
        docstring); None past the window (the caller falls back to rarest-first)."""
        have, pos, prio, n = self._have, self._pos, self._prio, self._n
        i = self._seq_cursor
        while i < n and (have[i] or not prio[i]):
            i += 1
        self._seq_cursor = i
        seen = 0
        best: tuple[int, int] | None = None
        avail = self._avail
        j = i
        while j < n and seen < self._window:
            if not prio[j] or have[j]:
                j += 1
                continue
            seen += 1
            if pos[j] >= 0 and (bits is None or bits[j]):
                if seen <= self._critical:
                    return j
                key = (avail[j], j)
                if best is None or key < best:
                    best = key
            j += 1
        return None if best is None else best[1]

    def _endgame(
        self,
        peer: Hashable,
        bits: bytearray | None,
        count: int,
        out: list[Block],
        reqs: dict[Block, None],
    ) -> None:
        gen = self._eg_gen
        if self._eg_dry.get(peer) == gen:
            return  # nothing for it, as found before (see _eg_dry)
        found = len(out)
        prio = self._prio
        # Pieces another source (a web seed) fetches whole are left to it: its range
        # requests cannot be cancelled, so every byte a peer sent too would come twice.
        reserved = self._reserved
        for index, piece in self._downloading.items():
            if index in reserved or not piece.num_requested \
                    or (bits is not None and not bits[index]) or not prio[index]:
                continue
            for j, peers in piece.requesters.items():
                if len(peers) >= 2 or peer in peers:
                    continue
                piece.requesters[j] = [*peers, peer]  # a new list: _take shares them
                block = self._block(index, j)
                out.append(block)
                reqs[block] = None
                if len(out) >= count:
                    return
        if len(out) == found:
            self._eg_dry[peer] = gen

    # ---------------------------------------------------------------- request outcomes

    def _unrequest(self, peer: Hashable, block: Block) -> None:
        index = block.index
        piece = self._downloading.get(index)
        if piece is None:
            return
        j = block.begin // self._bs
        peers = piece.requesters.get(j)
        if peers is None or peer not in peers:
            return
        self._eg_gen += 1
        if len(peers) > 1:  # a new list: _take shares them between blocks
            piece.requesters[j] = [p for p in peers if p != peer]
            return
        del piece.requesters[j]
        piece.blocks[j] = _FREE
        if j == piece.tail - 1:
            piece.tail = j
        piece.num_requested -= 1
        piece.num_free += 1
        if not piece.num_requested and piece.num_received == piece.num_pad:
            # nothing live and no data: untouched again, loses in-progress priority
            del self._downloading[index]
            self._partial.pop(index, None)
            self._bucket_add(index)
        else:
            self._partial[index] = None

    def reserve(self, owner: Hashable, index: int) -> bool:
        """Another source fetches piece ``index`` whole (a web seed): it leaves the pool,
        so peers pick other pieces (in end-game too) and the two sources do not fetch the
        same bytes. False if the piece is had, in progress or held. :meth:`release`
        gives back what ``owner`` did not deliver.

        The piece is held whole, with no per-block state (a fourth state beside had, in
        progress and untouched): a lone downloader's web seed reserves every piece, and
        per-block requests made and dropped again cost ~30 us a piece on the event loop
        (1,024 pieces for 64 MiB). A block a peer sends for it anyway turns the rest into
        per-block requests of ``owner`` (see :meth:`block_received`)."""
        self._check_index(index)
        if self._have[index] or index in self._downloading or index in self._reserved:
            return False
        if self._pos[index] >= 0:
            self._bucket_remove(index)
        self._reserved[index] = owner
        return True

    def _reserved_whole(self, index: int) -> bool:
        """Piece ``index`` is held whole by another source (see :meth:`reserve`)."""
        return (index in self._reserved and index not in self._downloading
                and not self._have[index])

    def _reserve_blocks(self, index: int) -> _Piece:
        """A piece held whole becomes a piece in progress whose free blocks are all
        requested from its owner (a peer's block for it arrived)."""
        owner = self._reserved[index]
        piece = _Piece(self.num_blocks(index), self._pad.get(index, frozenset()))
        self._downloading[index] = piece
        self._take(owner, index, piece, piece.num_free, [], self._reqs.setdefault(owner, {}))
        if piece.num_free:
            self._partial[index] = None
        return piece

    def requesters(self, index: int) -> set[Hashable]:
        """Who has live requests for blocks of piece ``index`` (end-game duplicates too)."""
        piece = self._downloading.get(index)
        if piece is None:
            return set()
        return {p for peers in piece.requesters.values() for p in peers}

    def in_progress(self, index: int) -> bool:
        """Some block of piece ``index`` is requested or received, or another source holds
        it whole (and it is not had)."""
        return index in self._downloading or index in self._reserved

    def only_requested(self, index: int) -> bool:
        """Piece ``index`` is in progress with requests out but no block received yet, and
        not reserved by another source: it could still be taken back from its peers."""
        piece = self._downloading.get(index)
        return (piece is not None and piece.num_received == piece.num_pad
                and index not in self._reserved)

    def release(self, owner: Hashable) -> None:
        """Every block still reserved by ``owner`` goes back to the pool."""
        mine = [i for i, o in self._reserved.items() if o == owner]
        whole = [i for i in mine if self._reserved_whole(i)]
        for index in mine:
            del self._reserved[index]
        for block in self._reqs.pop(owner, {}):
            self._unrequest(owner, block)
        for index in whole:
            self._bucket_add(index)
        self._eg_gen += 1

    def request_failed(self, peer: Hashable, block: Block) -> None:
        """The request was rejected, timed out or cancelled: back to the pool."""
        reqs = self._reqs.get(peer)
        if reqs is None or block not in reqs:
            return
        del reqs[block]
        self._unrequest(peer, block)

    def peer_choked(self, peer: Hashable) -> list[Block]:
        """All requests to ``peer`` are void (it choked us without the Fast extension).

        Returns the blocks that went back to the pool.
        """
        reqs = self._reqs.get(peer)
        if not reqs:
            return []
        blocks = list(reqs)
        reqs.clear()
        for block in blocks:
            self._unrequest(peer, block)
        return blocks

    def block_received(self, peer: Hashable, block: Block) -> BlockResult:
        """``peer`` delivered ``block``.

        Returns :class:`BlockResult`: the other peers to send Cancel to, and whether the
        piece now has all its blocks. A block we do not need (already received, a piece
        we have, wrong geometry) changes nothing and returns ``((), False)``; use
        :meth:`wanted` to decide whether to write its data.
        """
        news = self.blocks_received(peer, (block,))
        return news[0][1] if news else _NOTHING

    def blocks_received(self, peer: Hashable, blocks: Iterable[Block]
                        ) -> list[tuple[Block, BlockResult]]:
        """:meth:`block_received` for each of a run of blocks from ``peer``, in order;
        returns only the blocks with news (a piece complete, or peers to cancel), with it.

        Why a run: a fast peer's blocks come 32 to a read, and one call per block (its
        frame, the lookups hoisted here) was the largest part of the picker's time.
        """
        bs = self._bs
        n = self._n
        last = n - 1
        last_len, pl = self._last_len, self._piece_length
        reqs = self._reqs.get(peer)
        have = self._have
        downloading = self._downloading
        news: list[tuple[Block, BlockResult]] = []
        at = -1  # the piece of the previous block (a read's blocks are mostly one piece's)
        piece: _Piece | None = None
        credited: _Piece | None = None  # the piece ``peer`` was last added to contributors of
        for block in blocks:
            index, begin, length = block  # the geometry check of _block_no, inlined
            if index != at:
                if not 0 <= index < n:
                    continue
                at, piece = index, None
                size = last_len if index == last else pl
            if begin % bs or not 0 <= begin < size or \
                    length != (bs if begin + bs <= size else size - begin):
                continue
            if reqs is not None:
                DICT_POP(reqs, block, None)
            if have[index]:
                continue
            if piece is None:
                piece = downloading.get(index)
                if piece is None:
                    piece = self._reserve_blocks(index) if index in self._reserved else \
                        self._start(index)
                    if reqs is None:  # a reservation's owner may be this peer (just made)
                        reqs = self._reqs.get(peer)
            j = begin // bs
            states = piece.blocks
            state = states[j]
            if state == _RECEIVED:
                continue
            others: tuple[Hashable, ...] = ()
            if state == _REQUESTED:
                peers = DICT_POP(piece.requesters, j)
                if len(peers) != 1 or peers[0] != peer:  # end-game: others asked for it too
                    others = tuple(p for p in peers if p != peer)
                    for p in others:
                        other_reqs = self._reqs.get(p)
                        if other_reqs is not None:
                            DICT_POP(other_reqs, block, None)
                piece.num_requested -= 1
            else:
                piece.num_free -= 1
                if not piece.num_free:
                    self._partial.pop(index, None)
                if j >= piece.tail:
                    piece.tail = j + 1
            states[j] = _RECEIVED
            piece.num_received += 1
            if piece is not credited:
                piece.contributors.add(peer)
                credited = piece
            if piece.num_received == len(states):
                news.append((block, BlockResult(others, True) if others else _COMPLETE))
            elif others:
                news.append((block, BlockResult(others, False)))
        return news

    # ---------------------------------------------------------------- debugging

    def check_invariant(self) -> None:
        """Recompute every derived count from scratch; raise AssertionError on drift."""

        def check(cond: bool, what: str) -> None:
            if not cond:
                raise AssertionError(what)

        n = self._n
        check(self._num_have == sum(self._have), "num_have")
        avail = [0] * n
        for rec in self._peers.values():
            for i in itertools.compress(range(n), rec.bits):
                avail[i] += 1
        check(avail == self._avail, "availability")
        untouched = 0
        for a, bucket in enumerate(self._buckets):
            for p, i in enumerate(bucket):
                check(self._avail[i] == a and self._pos[i] == p, f"bucket of piece {i}")
            untouched += len(bucket)
        check(untouched == self._untouched, "untouched count")
        for i in range(n):
            states = (bool(self._have[i]), i in self._downloading, self._pos[i] >= 0,
                      self._reserved_whole(i))
            check(sum(states) == 1,
                  f"piece {i} is in {states} (have, downloading, bucket, reserved whole)")
        live: set[tuple[Hashable, Block]] = set()
        for i, piece in self._downloading.items():
            b = piece.blocks
            check(piece.num_free == b.count(_FREE), f"free count of {i}")
            check(not b[piece.tail:].strip(b"\x00"), f"tail of {i}")
            check(piece.num_requested == b.count(_REQUESTED), f"requested count of {i}")
            check(piece.num_received == b.count(_RECEIVED), f"received count of {i}")
            check(
                set(piece.requesters) == {j for j in range(len(b)) if b[j] == _REQUESTED},
                f"requesters of {i}",
            )
            check((i in self._partial) == (piece.num_free > 0), f"partial of {i}")
            check(
                piece.num_requested > 0 or piece.num_received > piece.num_pad,
                f"piece {i} in progress without data or requests",
            )
            check(all(b[j] == _RECEIVED for j in self._pad.get(i, ())), f"pads of {i}")
            for j, peers in piece.requesters.items():
                check(0 < len(peers) <= 2 and len(set(peers)) == len(peers), f"peers {i}/{j}")
                block = Block(i, j * self._bs, min(self._bs, self.piece_size(i) - j * self._bs))
                live.update((p, block) for p in peers)
        check(set(self._partial) <= set(self._downloading), "partial not downloading")
        listed = {(p, block) for p, reqs in self._reqs.items() for block in reqs}
        check(live == listed, "per-peer outstanding vs piece requesters")
        prio = self._prio
        check(self._num_skip == prio.count(0), "skip count")
        check(self._skip_untouched == sum(1 for b in self._buckets for i in b if not prio[i]),
              "skipped untouched count")
        missing = [not self._have[i] and bool(prio[i]) for i in range(n)]
        check(self._wanted_missing == sum(missing), "wanted missing count")
        check(set(self._boosted) == {i for i in range(n) if prio[i] > 1 and not self._have[i]},
              "boosted pieces")
        for peer, epoch in self._barren.items():
            if epoch != self._epoch:
                continue
            known = self._peers.get(peer)
            has = known.bits if known is not None else None
            check(has is not None or peer in self._seeds, f"barren {peer!r} unknown")
            fresh = [i for b in self._buckets for i in b
                     if prio[i] and (has is None or has[i])]
            check(not fresh, f"{peer!r} marked barren but has untouched {fresh[:5]}")
        for peer, gen in self._eg_dry.items():
            if gen != self._eg_gen:
                continue
            known = None if peer in self._seeds else self._peers.get(peer)
            has = known.bits if known is not None else None
            spare = [(i, j) for i, piece in self._downloading.items()
                     if i not in self._reserved and prio[i] and (has is None or has[i])
                     for j, peers in piece.requesters.items()
                     if len(peers) < 2 and peer not in peers]
            check(not spare, f"{peer!r} marked dry in end-game but could take {spare[:5]}")
        for peer, rec in self._peers.items():
            check(peer not in self._seeds, "peer both seed and bitfield")
            lack = sum(1 for i in range(n) if rec.bits[i] and missing[i])
            check(rec.lack == lack, f"lack count of {peer!r}")
