"""Per-peer protocol state, sans-IO: bytes in, messages out; messages in, bytes out.

Modelled on ``h11.Connection``::

    conn = PeerConnection(our_reserved=make_reserved())
    sock.send(conn.send(Handshake(conn.our_reserved, info_hash, peer_id)))
    conn.receive_data(sock.recv(65536))       # b"" means the peer closed
    while (event := conn.next_event()) is not NEED_DATA:
        ...                                   # a Message, or CLOSED once

No sockets, no clock, no logging: the asyncio pump in the engine moves bytes and timers.

The rules (one state machine per direction, "ours" for what we send, "theirs" for what
we receive)::

    HANDSHAKE --Handshake--> FIRST --any message but the neutral ones--> OPEN
    FIRST     accepts Bitfield / HaveAll / HaveNone plus everything OPEN accepts
    OPEN      accepts every post-handshake message except those three
    KeepAlive, Extended and Port are neutral: they leave the FIRST slot open, because
    real clients send them before their bitfield (libtorrent 2.1.1, checked on loopback,
    sends Handshake, Extended(0), HaveAll, Unchoke in that order).

On top of the phase table, BEP 6 messages need both handshakes to set the fast bit and
``Extended`` needs both to set the extension bit; piece indices are checked once the
piece count is known (:meth:`PeerConnection.set_num_pieces`) and block lengths always.
A remote breach raises :class:`RemoteProtocolError` and puts "theirs" into ERROR, after
which ``next_event`` keeps raising; a local breach raises :class:`LocalProtocolError`
and sends nothing, so the outgoing stream stays intact.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeAlias, TypeVar, cast

from swarmhub.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from swarmhub.wire.messages import (
    HANDSHAKE_LENGTH,
    MAX_BLOCK_LENGTH,
    PROTOCOL_NAME,
    RESERVED_DHT,
    RESERVED_EXTENSION,
    RESERVED_FAST,
    RESERVED_V2_UPGRADE,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    Handshake,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    MessageId,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
    decode_handshake,
    decode_payload,
    encode,
    has_bit,
    message_name,
    pack_requests,
    validate_bitfield,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "Closed",
    "NeedData",
    "PeerConnection",
    "Phase",
    "Sentinel",
]


class Sentinel(enum.Enum):
    """What :meth:`PeerConnection.next_event` returns when it has no message."""

    NEED_DATA = "need data"  # call receive_data() with more bytes first
    CLOSED = "closed"  # the peer closed the connection cleanly between messages


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED
NeedData: TypeAlias = Literal[Sentinel.NEED_DATA]
Closed: TypeAlias = Literal[Sentinel.CLOSED]


class Phase(enum.Enum):
    """Where one direction of the connection is."""

    HANDSHAKE = "HANDSHAKE"  # nothing but the handshake yet
    FIRST = "FIRST"  # handshake done; the bitfield / have-all / have-none slot is open
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


_POST_HANDSHAKE: frozenset[type] = frozenset(
    {
        KeepAlive, Choke, Unchoke, Interested, NotInterested, Have, Request, Piece, Cancel,
        Port, SuggestPiece, RejectRequest, AllowedFast, Extended, HashRequest, Hashes,
        HashReject,
    }
)  # fmt: skip
_FIRST_ONLY: frozenset[type] = frozenset({Bitfield, HaveAll, HaveNone})
# The state table: which message types a direction may carry in each phase.
ALLOWED: dict[Phase, frozenset[type]] = {
    Phase.HANDSHAKE: frozenset({Handshake}),
    Phase.FIRST: _POST_HANDSHAKE | _FIRST_ONLY,
    Phase.OPEN: _POST_HANDSHAKE,
    Phase.CLOSED: frozenset(),
    Phase.ERROR: frozenset(),
}
_NEUTRAL: frozenset[type] = frozenset({KeepAlive, Extended, Port})
_NEEDS_FAST: frozenset[type] = frozenset(
    {SuggestPiece, HaveAll, HaveNone, RejectRequest, AllowedFast}
)
# The same table by wire id, so the receive path checks before building an object.
_OPEN_IDS = frozenset(
    {
        MessageId.CHOKE, MessageId.UNCHOKE, MessageId.INTERESTED, MessageId.NOT_INTERESTED,
        MessageId.HAVE, MessageId.REQUEST, MessageId.PIECE, MessageId.CANCEL, MessageId.PORT,
        MessageId.SUGGEST_PIECE, MessageId.REJECT_REQUEST, MessageId.ALLOWED_FAST,
        MessageId.EXTENDED, MessageId.HASH_REQUEST, MessageId.HASHES, MessageId.HASH_REJECT,
    }
)  # fmt: skip
_FIRST_ONLY_IDS = frozenset({MessageId.BITFIELD, MessageId.HAVE_ALL, MessageId.HAVE_NONE})
_NEUTRAL_IDS = frozenset({MessageId.EXTENDED, MessageId.PORT})
_FAST_IDS = frozenset(
    {
        MessageId.SUGGEST_PIECE, MessageId.HAVE_ALL, MessageId.HAVE_NONE,
        MessageId.REJECT_REQUEST, MessageId.ALLOWED_FAST,
    }
)  # fmt: skip

_U32_FROM = struct.Struct(">I").unpack_from
_II_FROM = struct.Struct(">II").unpack_from
#: A Piece frame's head: length, id, index, begin.
_PIECE_HEAD_FROM = struct.Struct(">IBII").unpack_from
_B = TypeVar("_B")
_PIECE_HEADER = struct.Struct(">IBII")
#: A whole Request frame: length prefix (13), id (6), index, begin, length.
_REQUEST = struct.Struct(">IBIII")
_REQUEST_FROM = _REQUEST.unpack_from
_HAVE = struct.Struct(">IBI")
_HAVE_FROM = _HAVE.unpack_from
_KEEPALIVE = KeepAlive()
# Compact the receive buffer once this much of its front has been consumed: rarely
# enough to stay cheap, often enough to keep memory near one message plus one read.
_COMPACT_AT = 256 * 1024


class PeerConnection:
    """Protocol state of one peer connection; see the module docstring for the rules.

    ``our_reserved`` is what our handshake will carry (see
    :func:`~swarmhub.wire.messages.make_reserved`). ``num_pieces`` may be unknown until
    the metadata arrives (magnet links); index checks start when it is set.
    ``max_message_length`` bounds one frame, so a peer cannot make us buffer more.
    """

    def __init__(
        self,
        *,
        our_reserved: bytes,
        num_pieces: int | None = None,
        max_message_length: int = 1 << 21,
        max_block_length: int = MAX_BLOCK_LENGTH,
    ) -> None:
        if len(our_reserved) != 8:
            raise LocalProtocolError(f"our_reserved must be 8 bytes, not {len(our_reserved)}")
        self.our_reserved = bytes(our_reserved)
        self.max_message_length = max_message_length
        self.max_block_length = max_block_length
        self.num_pieces: int | None = None
        self._piece_length: int | None = None
        self._total_length: int | None = None
        if num_pieces is not None:
            self.set_num_pieces(num_pieces)
        self.our_phase = Phase.HANDSHAKE
        self.their_phase = Phase.HANDSHAKE
        self.their_handshake: Handshake | None = None
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.fast = False  # both handshakes set the BEP 6 bit
        self.extension = False  # both handshakes set the BEP 10 bit
        self.v2_upgrade = False  # both handshakes set the BEP 52 upgrade bit
        self.ignored_messages = 0  # frames with ids we do not know, skipped
        self.late_bitfields = 0  # Bitfield/HaveAll/HaveNone after the first message
        self._error: str | None = None
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    # ------------------------------------------------------------------ state

    @property
    def handshake_sent(self) -> bool:
        return self.our_phase is not Phase.HANDSHAKE

    @property
    def handshake_received(self) -> bool:
        return self.their_handshake is not None

    @property
    def remote_reserved(self) -> bytes | None:
        """The remote's 8 reserved bytes, once its handshake arrived."""
        hs = self.their_handshake
        return None if hs is None else hs.reserved

    @property
    def remote_dht(self) -> bool:
        """The remote runs a DHT node (BEP 5), so its Port message is meaningful."""
        hs = self.their_handshake
        return hs is not None and has_bit(hs.reserved, RESERVED_DHT)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed yet, and whether EOF was seen (like h11)."""
        return bytes(self._buf[self._pos :]), self._eof

    def set_num_pieces(
        self, n: int, *, piece_length: int | None = None, total_length: int | None = None
    ) -> None:
        """Start checking piece indices against ``n`` (and, given the geometry, block
        ranges against each piece's size); call it once the metadata is known."""
        if n < 0:
            raise LocalProtocolError(f"num_pieces must be >= 0, not {n}")
        if (piece_length is None) != (total_length is None):
            raise LocalProtocolError("give both piece_length and total_length, or neither")
        if piece_length is not None and total_length is not None:
            if piece_length <= 0 or total_length < 0:
                raise LocalProtocolError("piece_length must be > 0 and total_length >= 0")
            if (total_length + piece_length - 1) // piece_length != n:
                raise LocalProtocolError(
                    f"{total_length} bytes in {piece_length}-byte pieces is not {n} pieces"
                )
        self.num_pieces = n
        self._piece_length = piece_length
        self._total_length = total_length

    def _piece_size(self, index: int) -> int | None:
        pl, total = self._piece_length, self._total_length
        if pl is None or total is None:
            return None
        return min(pl, total - index * pl)

    def _check_block(
        self, name: str, index: int, begin: int, length: int, error: type[ProtocolError]
    ) -> None:
        n = self.num_pieces
        if n is not None and index >= n:
            raise error(f"{name} for piece {index}, but the torrent has {n} pieces")
        if not 0 < length <= self.max_block_length:
            raise error(
                f"{name} of {length} bytes at piece {index} offset {begin}: "
                f"blocks must be 1..{self.max_block_length} bytes"
            )
        size = self._piece_size(index)
        if size is not None and begin + length > size:
            raise error(
                f"{name} for bytes {begin}..{begin + length} of piece {index}, "
                f"which is only {size} bytes"
            )

    def _check_index(self, name: str, index: int, error: type[ProtocolError]) -> None:
        n = self.num_pieces
        if n is not None and index >= n:
            raise error(f"{name} for piece {index}, but the torrent has {n} pieces")

    def set_our_reserved(self, reserved: bytes) -> None:
        """Change the 8 bytes our handshake will carry, until it is sent: an incoming
        connection learns its torrent, and so whether to set the BEP 52 upgrade bit, from
        the peer's handshake."""
        if self.our_phase is not Phase.HANDSHAKE:
            raise LocalProtocolError("our handshake is sent: its reserved bytes are fixed")
        if len(reserved) != 8:
            raise LocalProtocolError(f"our_reserved must be 8 bytes, not {len(reserved)}")
        self.our_reserved = bytes(reserved)
        self._negotiate()

    def _negotiate(self) -> None:
        # Our bits are fixed once our handshake is sent (send() insists it carries them),
        # so the outcome is known as soon as the peer's handshake is in.
        hs = self.their_handshake
        if hs is None:
            return
        ours, theirs = self.our_reserved, hs.reserved
        self.fast = has_bit(ours, RESERVED_FAST) and has_bit(theirs, RESERVED_FAST)
        self.extension = has_bit(ours, RESERVED_EXTENSION) and has_bit(theirs, RESERVED_EXTENSION)
        self.v2_upgrade = has_bit(ours, RESERVED_V2_UPGRADE) and has_bit(
            theirs, RESERVED_V2_UPGRADE
        )

    # ------------------------------------------------------------------ sending

    def send_all(self, msgs: tuple[Message, ...] | list[Message]) -> bytes:
        """The bytes of several messages (:meth:`send` for each, same checks, same errors).

        Why: a leecher's request refills (a run of up to hundreds of Requests, ~65,000 a
        GiB) are checked and packed here inline, one call per run instead of three per
        Request; so are Haves (the pieces we got, told to every peer); anything else goes
        through :meth:`send`.
        """
        if self.our_phase is not Phase.OPEN:
            return b"".join([self.send(msg) for msg in msgs])
        n, pl, total = self.num_pieces, self._piece_length, self._total_length
        top = self.max_block_length
        if msgs and type(msgs[0]) is Request:  # a request refill: compiled, in one call
            packed = pack_requests(msgs, top, -1 if n is None else n, -1 if pl is None else pl,
                                   -1 if total is None else total)
            if packed is not None:
                return packed
        pack = _REQUEST.pack
        req_id = MessageId.REQUEST
        have, have_id = _HAVE.pack, MessageId.HAVE
        last = -1 if n is None else n - 1  # below it, a piece is pl long: no min() per Request
        parts: list[bytes] = []
        add = parts.append
        for msg in msgs:
            if type(msg) is Request:
                index, begin, length = msg.index, msg.begin, msg.length
                # send()'s checks; a negative field fails the pack (as in send())
                if (
                    0 < length <= top
                    and (n is None or index < n)
                    and (pl is None or total is None or begin + length <= (
                        pl if index < last else min(pl, total - index * pl)))
                ):
                    try:
                        add(pack(13, req_id, index, begin, length))
                        continue
                    except struct.error:
                        pass
            elif type(msg) is Have and 0 <= msg.index < (1 << 32 if n is None else n):
                # a piece we got, told to each peer (~30,000 a peer at N=32, 32 KiB pieces)
                add(have(5, have_id, msg.index))
                continue
            add(self.send(msg))  # raises the LocalProtocolError that explains why
        return b"".join(parts)

    def send(self, msg: Message) -> bytes:
        """The bytes to write for ``msg``, after checking that our state allows it.

        Raises :class:`LocalProtocolError` (and changes nothing) if it does not.
        """
        cls = type(msg)
        phase = self.our_phase
        if cls is Request and phase is Phase.OPEN:  # the hot path: ~65,000 a GiB
            req = cast(Request, msg)
            index, begin, length = req.index, req.begin, req.length
            self._check_block("Request", index, begin, length, LocalProtocolError)
            try:
                return _REQUEST.pack(13, MessageId.REQUEST, index, begin, length)
            except struct.error:
                return encode(msg)  # raises the LocalProtocolError that explains why
        if cls not in ALLOWED[phase]:
            if phase is Phase.HANDSHAKE:
                hint = "send the Handshake first"
            elif cls in _FIRST_ONLY:
                hint = "Bitfield/HaveAll/HaveNone may only be the first message"
            else:
                hint = "not allowed here"
            raise LocalProtocolError(f"cannot send {cls.__name__} in state {phase.name}: {hint}")
        if cls in _NEEDS_FAST and not self.fast:
            raise LocalProtocolError(
                f"cannot send {cls.__name__}: the fast extension (BEP 6) was not negotiated"
                + ("" if self.handshake_received else " (the peer's handshake has not arrived)")
            )
        match msg:
            case Request(index, begin, length) | Cancel(index, begin, length):
                self._check_block(cls.__name__, index, begin, length, LocalProtocolError)
            case RejectRequest(index, begin, length):
                self._check_block(cls.__name__, index, begin, length, LocalProtocolError)
            case Piece(index, begin, data):
                self._check_block("Piece", index, begin, len(data), LocalProtocolError)
            case Have(index) | SuggestPiece(index) | AllowedFast(index):
                self._check_index(cls.__name__, index, LocalProtocolError)
            case Bitfield(bits) if self.num_pieces is not None:
                validate_bitfield(bits, self.num_pieces, LocalProtocolError)
            case Extended() if not self.extension:
                raise LocalProtocolError(
                    "cannot send Extended: the extension protocol (BEP 10) was not negotiated"
                )
            case Handshake(reserved) if reserved != self.our_reserved:
                raise LocalProtocolError(
                    "Handshake.reserved must equal our_reserved so negotiation stays consistent"
                )
            case _:
                pass
        data = encode(msg)
        if cls is Handshake:
            self.our_phase = Phase.FIRST
        elif phase is Phase.FIRST and cls not in _NEUTRAL:
            self.our_phase = Phase.OPEN
        if cls is Choke:
            self.am_choking = True
        elif cls is Unchoke:
            self.am_choking = False
        elif cls is Interested:
            self.am_interested = True
        elif cls is NotInterested:
            self.am_interested = False
        return data

    def send_piece(
        self, index: int, begin: int, data: bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes | bytearray | memoryview]:
        """A Piece message as ``(header, data)`` for ``writelines``: the block itself is
        not copied (an upload is mostly these). Checked like :meth:`send`."""
        phase = self.our_phase
        if phase is not Phase.OPEN and phase is not Phase.FIRST:
            raise LocalProtocolError(f"cannot send Piece in state {phase.name}")
        length = len(data)
        self._check_block("Piece", index, begin, length, LocalProtocolError)
        self.our_phase = Phase.OPEN
        return _PIECE_HEADER.pack(9 + length, MessageId.PIECE, index, begin), data

    def send_pieces(
        self, blocks: Sequence[Request],
        pieces: Mapping[int, bytes | bytearray | memoryview],
    ) -> list[bytes | bytearray | memoryview]:
        """:meth:`send_piece` for each of ``blocks`` (the requests we answer), each block
        a view of its whole piece ``pieces[index]``: the ``writelines`` parts, a header
        and a block each. Checked like :meth:`send`; nothing is sent when one fails.

        Why: an upload is 64 of these per MiB; one call per batch (the checks inline, one
        view per piece) instead of three calls and a slice per block."""
        phase = self.our_phase
        if phase is not Phase.OPEN and phase is not Phase.FIRST:
            raise LocalProtocolError(f"cannot send Piece in state {phase.name}")
        parts: list[bytes | bytearray | memoryview] = []
        pack = _PIECE_HEADER.pack
        piece_id = MessageId.PIECE
        num, pl, top = self.num_pieces, self._piece_length, self.max_block_length
        last = -1 if num is None or pl is None else num - 1  # its size needs the full check
        at = -1
        view = memoryview(b"")
        for req in blocks:
            index, begin, length = req.index, req.begin, req.length
            if (not 0 < length <= top or index == last or (num is not None and index >= num)
                    or (pl is not None and begin + length > pl)):
                self._check_block("Piece", index, begin, length, LocalProtocolError)
            if index != at:
                at, view = index, memoryview(pieces[index])
            parts += (pack(9 + length, piece_id, index, begin), view[begin:begin + length])
        self.our_phase = Phase.OPEN
        return parts

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            raise LocalProtocolError("receive_data after EOF: the peer already closed")
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos:
            if pos == len(buf):
                del buf[:]
                self._pos = 0
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet."""
        return len(self._buf) - self._pos

    def missing(self) -> int | None:
        """Bytes still to come before our buffer ends on a frame boundary (0 when it does;
        a partial length prefix counts as its missing bytes; the handshake is one frame),
        or None once the connection is closed or broken. Lets a caller that reads into its
        own buffer hand us just enough to finish the frame we hold, then take the following
        ones its own way."""
        phase = self.their_phase
        if phase is Phase.HANDSHAKE:
            return max(0, HANDSHAKE_LENGTH - self.buffered)
        if phase is not Phase.OPEN and phase is not Phase.FIRST:
            return None
        buf = self._buf
        p, n = self._pos, len(buf)
        while p + 4 <= n:
            (length,) = _U32_FROM(buf, p)
            p += 4 + length
        return p - n if p >= n else 4 - (n - p)

    def _caller_bytes_next(self) -> bool:
        """The fast paths (frames parsed in the caller's own buffer) may run: the peer is
        past its first message and our buffer is empty (bytes in it come first)."""
        return self.their_phase is Phase.OPEN and self._pos == len(self._buf)

    def piece_at(
        self, data: bytes | bytearray | memoryview, pos: int, end: int
    ) -> tuple[int, int, int] | None:
        """Parse the frame at ``data[pos:end]`` (bytes the caller read itself, after
        everything fed to :meth:`receive_data`) if it is a complete Piece:
        ``(index, begin, frame end)``; the block is ``data[pos + 13 : frame end]``.

        Why: the receive hot path reads into a buffer of its own and hands blocks on
        without copying them through ours. None when the frame is anything else,
        incomplete, or our own buffer still holds bytes (they come first); the caller
        then feeds the bytes to :meth:`receive_data`. A Piece that breaks a rule raises
        :class:`RemoteProtocolError`, as :meth:`next_event` would.
        """
        if not self._caller_bytes_next():
            return None
        if end - pos < 13 or data[pos + 4] != MessageId.PIECE:
            return None
        (length,) = _U32_FROM(data, pos)
        if length > end - pos - 4:
            return None
        if length < 9:
            raise self._fail(f"peer sent a Piece with a {length - 1}-byte payload")
        index, begin = _II_FROM(data, pos + 5)
        n = length - 9
        pl = self._piece_length
        num = self.num_pieces
        if (
            (num is not None and index >= num)
            or not 0 < n <= self.max_block_length
            or (pl is not None and begin + n > pl)
            or (num is not None and index == num - 1 and pl is not None)
        ):
            try:
                self._check_block("Piece", index, begin, n, RemoteProtocolError)
            except RemoteProtocolError as exc:
                raise self._fail(f"{exc} (peer state OPEN)") from None
        return index, begin, pos + 4 + length

    def pieces_at(
        self, data: bytes | bytearray | memoryview, pos: int, end: int, most: int,
        make: Callable[[tuple[int, int, int]], _B],
    ) -> tuple[list[_B], list[int], int, RemoteProtocolError | None]:
        """:meth:`piece_at` for a run of up to ``most`` complete Piece frames at
        ``data[pos:end]``: ``(blocks, payload starts, where the run ends, error)``, each
        block ``make((index, begin, length))``.

        Why: a leecher's receive hot path, one call per batch of blocks instead of one
        per 16 KiB block (the same checks, inline). The run ends at anything else or an
        incomplete frame; a Piece that breaks a rule ends it with ``error`` (what
        :meth:`piece_at` raises for it): the blocks before it are good.
        """
        blocks: list[_B] = []
        starts: list[int] = []
        if not self._caller_bytes_next():
            return blocks, starts, pos, None
        head = _PIECE_HEAD_FROM
        piece_id = MessageId.PIECE
        num = self.num_pieces
        pl = self._piece_length
        top = self.max_block_length
        last = -1 if num is None or pl is None else num - 1  # its size needs the full check
        # The loop is per 16 KiB block (~65,000 a GiB): bound methods, a count instead of
        # len() per block, and the checks that hold for every block of a known geometry
        # folded into two comparisons (num and pl are set once the torrent is known).
        add_block, add_start = blocks.append, starts.append
        num_ok = num if num is not None else 1 << 32
        pl_ok = pl if pl is not None else 1 << 62
        end13 = end - 13
        while most > 0 and pos <= end13:
            length, msg_id, index, begin = head(data, pos)
            if msg_id != piece_id or length > end - pos - 4:
                break
            n = length - 9
            if (
                not 0 < n <= top
                or index == last
                or index >= num_ok
                or begin + n > pl_ok
            ):
                try:
                    if self.piece_at(data, pos, end) is None:
                        break
                except RemoteProtocolError as exc:
                    return blocks, starts, pos, exc
            add_block(make((index, begin, n)))
            pos += 13
            add_start(pos)
            pos += n
            most -= 1
        return blocks, starts, pos, None

    def requests_at(
        self, data: bytes | bytearray | memoryview, pos: int, end: int
    ) -> tuple[list[Request], int]:
        """Parse the run of complete Request frames at ``data[pos:end]`` (bytes the caller
        read itself, as for :meth:`piece_at`): ``(requests, where the run ends)``.

        Why: a seeder receives one 17-byte Request per 16 KiB block it sends; through
        :meth:`receive_data` and :meth:`next_event` each was copied, matched against every
        message type and checked apart. Empty when the first frame is anything else,
        incomplete, or our own buffer still holds bytes. A Request that breaks a rule ends
        the run; first in one, it raises :class:`RemoteProtocolError`, as
        :meth:`next_event` would.
        """
        out: list[Request] = []
        if not self._caller_bytes_next():
            return out, pos
        unpack = _REQUEST_FROM
        num = self.num_pieces
        pl = self._piece_length
        most = self.max_block_length
        while end - pos >= 17:
            length, msg_id, index, begin, n = unpack(data, pos)
            if length != 13 or msg_id != MessageId.REQUEST:
                break
            if (
                (num is not None and index >= num)
                or not 0 < n <= most
                or (pl is not None and begin + n > pl)
                or (num is not None and index == num - 1 and pl is not None)
            ):
                try:
                    self._check_block("Request", index, begin, n, RemoteProtocolError)
                except RemoteProtocolError as exc:
                    if out:
                        break  # the good ones first; the next call raises
                    raise self._fail(f"{exc} (peer state OPEN)") from None
            out.append(Request(index, begin, n))
            pos += 17
        return out, pos

    def haves_at(
        self, data: bytes | bytearray | memoryview, pos: int, end: int
    ) -> tuple[list[int], int]:
        """Parse the run of complete, valid Have frames at ``data[pos:end]`` (bytes the
        caller read itself, as for :meth:`requests_at`): ``(piece indices, where the run
        ends)``.

        Why: in a swarm every peer tells every other of each piece it gets; at N=32 with
        32 KiB pieces that is ~30,000 9-byte Haves per peer and 32 MiB, mostly in runs (see
        :data:`swarmhub.engine.peer.ANNOUNCE_DELAY`), each copied, matched and dispatched
        apart through :meth:`next_event`. Empty when the first frame is anything else,
        incomplete, or our own buffer still holds bytes; a Have for a piece the torrent
        lacks ends the run (the wire core then raises for it, as :meth:`next_event` does).
        """
        out: list[int] = []
        if not self._caller_bytes_next():
            return out, pos
        unpack = _HAVE_FROM
        num = self.num_pieces
        have_id = MessageId.HAVE
        while end - pos >= 9:
            length, msg_id, index = unpack(data, pos)
            if length != 5 or msg_id != have_id or (num is not None and index >= num):
                break
            out.append(index)
            pos += 9
        return out, pos

    def _fail(self, message: str) -> RemoteProtocolError:
        self.their_phase = Phase.ERROR
        self._error = message
        return RemoteProtocolError(message)

    def next_event(self) -> Message | NeedData | Closed:
        """The next message from the peer, ``NEED_DATA`` or ``CLOSED``.

        Unknown message ids are skipped (BEP 3 forward compatibility). Raises
        :class:`RemoteProtocolError` when the peer broke the protocol; from then on it
        raises again, and the connection should be closed.
        """
        phase = self.their_phase
        while phase is Phase.OPEN or phase is Phase.FIRST:
            buf = self._buf
            pos = self._pos
            avail = len(buf) - pos
            if avail < 4:
                return self._need_data(avail)
            (length,) = _U32_FROM(buf, pos)
            if length > avail - 4:
                if length > self.max_message_length:
                    name = message_name(buf[pos + 4]) if avail > 4 else "message"
                    raise self._fail(
                        f"peer sent a {length}-byte {name}, over the "
                        f"{self.max_message_length}-byte limit"
                    )
                return self._need_data(avail)
            if length == 0:
                self._pos = pos + 4
                return _KEEPALIVE
            msg_id = buf[pos + 4]
            end = pos + 4 + length
            if msg_id == MessageId.PIECE and phase is Phase.OPEN:
                # The hot path: ~20k of these a second while downloading.
                if length < 9:
                    raise self._fail(f"peer sent a Piece with a {length - 1}-byte payload")
                index, begin = _II_FROM(buf, pos + 5)
                n = self.num_pieces
                pl = self._piece_length
                if (
                    (n is not None and index >= n)
                    or not 0 < length - 9 <= self.max_block_length
                    or (pl is not None and begin + length - 9 > pl)
                    or (n is not None and index == n - 1 and pl is not None)
                ):
                    try:
                        self._check_block("Piece", index, begin, length - 9, RemoteProtocolError)
                    except RemoteProtocolError as exc:
                        raise self._fail(f"{exc} (peer state {phase.name})") from None
                with memoryview(buf) as view:
                    data = bytes(view[pos + 13 : end])
                self._pos = end
                return Piece(index, begin, data)
            msg = self._read_message(msg_id, buf, pos + 5, end, phase)
            self._pos = end
            if msg is not None:
                return msg
            self.ignored_messages += 1
            phase = self.their_phase
        if phase is Phase.HANDSHAKE:
            return self._read_handshake()
        if phase is Phase.CLOSED:
            return CLOSED
        raise RemoteProtocolError(
            f"the peer connection is in state ERROR after an earlier error: {self._error}"
        )

    def _need_data(self, avail: int) -> NeedData | Closed:
        if not self._eof:
            return NEED_DATA
        if avail:
            raise self._fail(
                f"peer closed the connection in the middle of a message ({avail} bytes pending)"
            )
        self.their_phase = Phase.CLOSED
        return CLOSED

    def _read_handshake(self) -> Handshake | NeedData | Closed:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        # Fail on the first bytes rather than waiting for 68 of a stranger's protocol.
        head = min(avail, 1 + len(PROTOCOL_NAME))
        if bytes(buf[pos : pos + head]) != (b"\x13" + PROTOCOL_NAME)[:head]:
            raise self._fail(
                f"peer did not open with the BitTorrent handshake (got "
                f"{bytes(buf[pos : pos + head])!r}); is it encrypted or another protocol?"
            )
        if avail < HANDSHAKE_LENGTH:
            if self._eof:
                raise self._fail(f"peer closed the connection during the handshake ({avail} bytes)")
            return NEED_DATA
        try:
            hs = decode_handshake(buf, pos)
        except RemoteProtocolError as exc:
            raise self._fail(str(exc)) from None
        self._pos = pos + HANDSHAKE_LENGTH
        self.their_handshake = hs
        self.their_phase = Phase.FIRST
        self._negotiate()
        return hs

    def _read_message(
        self, msg_id: int, buf: bytearray, start: int, end: int, phase: Phase
    ) -> Message | None:
        """Check ``msg_id`` against the state, decode it, apply its state change."""
        try:
            if msg_id in _OPEN_IDS:
                if phase is Phase.FIRST and msg_id not in _NEUTRAL_IDS:
                    self.their_phase = Phase.OPEN
            elif msg_id in _FIRST_ONLY_IDS:
                # BEP 3/6 want these first, but aria2 1.36 sends its Bitfield after
                # HaveNone (and others send one late): accept it as an update instead
                # of dropping a working peer. We still only ever send it first.
                if phase is not Phase.FIRST:
                    self.late_bitfields += 1
                self.their_phase = Phase.OPEN
            else:
                return None  # unknown id: skipped, and it does not use up the first slot
            if msg_id in _FAST_IDS and not self.fast:
                raise RemoteProtocolError(
                    f"peer sent {message_name(msg_id)} but the fast extension (BEP 6) "
                    "was not negotiated"
                )
            if msg_id == MessageId.EXTENDED and not self.extension:
                raise RemoteProtocolError(
                    "peer sent Extended but the extension protocol (BEP 10) was not negotiated"
                )
            msg = decode_payload(msg_id, buf, start, end)
            match msg:
                case Choke():
                    self.peer_choking = True
                case Unchoke():
                    self.peer_choking = False
                case Interested():
                    self.peer_interested = True
                case NotInterested():
                    self.peer_interested = False
                case Have(index) | SuggestPiece(index) | AllowedFast(index):
                    self._check_index(type(msg).__name__, index, RemoteProtocolError)
                case Request(i, b, n) | Cancel(i, b, n) | RejectRequest(i, b, n):
                    self._check_block(type(msg).__name__, i, b, n, RemoteProtocolError)
                case Piece(index, begin, data):
                    self._check_block("Piece", index, begin, len(data), RemoteProtocolError)
                case Bitfield(bits) if self.num_pieces is not None:
                    validate_bitfield(bits, self.num_pieces)
                case _:
                    pass
            return msg
        except RemoteProtocolError as exc:
            raise self._fail(f"{exc} (peer state {phase.name})") from None
