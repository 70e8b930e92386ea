"""Peer wire messages: one frozen dataclass per message, and their byte encoding.

Covers BEP 3 (core), BEP 6 (fast extension), BEP 10 (the ``extended`` envelope; the
payloads live in :mod:`swarmhub.wire.extensions`) and BEP 52 (hash request / hashes /
hash reject). Like h11's events these are plain values: they know how to become bytes
(:func:`encode`) and how to be read back (:func:`decode`, :func:`decode_payload`), and
nothing about connection state, which lives in :mod:`swarmhub.wire.connection`.

Frame layout after the handshake: ``<u32 length><u8 id><payload>``; length 0 is a
keep-alive. All integers are big-endian. Don't subclass these classes: the codec and the
connection dispatch on the exact type.

This module is compiled with mypyc (see :mod:`swarmhub._compiled`): the classes are
native, so compiled code (the swarm core, ``lab simulate``) reads their fields from the
object, not by name. The messages made per block (Have, Request, Piece, Cancel,
RejectRequest) spell out their ``__init__`` (``object.__setattr__``, as the dataclass's
frozen one does), which compiles too; the generated one would stay interpreted. The
:class:`MessageId` numbers are ``Final`` (constants compiled in, and still read from
the class by interpreted code).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

from swarmhub._records import mypyc_attr, value_methods
from swarmhub.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "HANDSHAKE_LENGTH",
    "MAX_BLOCK_LENGTH",
    "PROTOCOL_NAME",
    "RESERVED_DHT",
    "RESERVED_EXTENSION",
    "RESERVED_FAST",
    "RESERVED_V2_UPGRADE",
    "AllowedFast",
    "Bitfield",
    "Buffer",
    "Cancel",
    "Choke",
    "Extended",
    "Handshake",
    "HashReject",
    "HashRequest",
    "Hashes",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "KeepAlive",
    "Message",
    "MessageId",
    "NotInterested",
    "Piece",
    "Port",
    "RejectRequest",
    "Request",
    "ReservedBit",
    "SuggestPiece",
    "Unchoke",
    "bitfield_count",
    "bitfield_from_bools",
    "bitfield_from_indices",
    "bools_from_bitfield",
    "decode",
    "decode_handshake",
    "decode_payload",
    "encode",
    "has_bit",
    "indices_from_bitfield",
    "make_reserved",
    "message_name",
    "validate_bitfield",
]

PROTOCOL_NAME = b"BitTorrent protocol"
HANDSHAKE_LENGTH = 1 + len(PROTOCOL_NAME) + 8 + 20 + 20  # 68
# Blocks are 16 KiB in practice; 128 KiB is the most any client asks for (libtorrent,
# Transmission and the old mainline cap there), so anything larger is a protocol error.
MAX_BLOCK_LENGTH = 128 * 1024


class MessageId:
    """Message ids on the wire (a plain namespace: ints keep the hot path cheap)."""

    CHOKE: Final = 0
    UNCHOKE: Final = 1
    INTERESTED: Final = 2
    NOT_INTERESTED: Final = 3
    HAVE: Final = 4
    BITFIELD: Final = 5
    REQUEST: Final = 6
    PIECE: Final = 7
    CANCEL: Final = 8
    PORT: Final = 9
    SUGGEST_PIECE: Final = 13
    HAVE_ALL: Final = 14
    HAVE_NONE: Final = 15
    REJECT_REQUEST: Final = 16
    ALLOWED_FAST: Final = 17
    EXTENDED: Final = 20
    HASH_REQUEST: Final = 21
    HASHES: Final = 22
    HASH_REJECT: Final = 23


# --------------------------------------------------------------------------- reserved bits


class ReservedBit(NamedTuple):
    """One capability bit in the 8 reserved handshake bytes."""

    byte: int
    mask: int


RESERVED_EXTENSION = ReservedBit(5, 0x10)  # BEP 10
RESERVED_FAST = ReservedBit(7, 0x04)  # BEP 6
RESERVED_V2_UPGRADE = ReservedBit(7, 0x10)  # BEP 52: hybrid torrent, may switch to v2
RESERVED_DHT = ReservedBit(7, 0x01)  # BEP 5


def make_reserved(
    *, extension: bool = True, fast: bool = True, v2: bool = False, dht: bool = False
) -> bytes:
    """The 8 reserved bytes advertising the given capabilities."""
    out = bytearray(8)
    for on, bit in (
        (extension, RESERVED_EXTENSION),
        (fast, RESERVED_FAST),
        (v2, RESERVED_V2_UPGRADE),
        (dht, RESERVED_DHT),
    ):
        if on:
            out[bit.byte] |= bit.mask
    return bytes(out)


def has_bit(reserved: bytes, bit: ReservedBit) -> bool:
    """Whether ``reserved`` (8 bytes) sets ``bit``."""
    return len(reserved) == 8 and bool(reserved[bit.byte] & bit.mask)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Handshake:
    """The 68-byte opening: ``reserved`` (8 bytes), ``info_hash`` and ``peer_id`` (20 each).

    For v2 torrents ``info_hash`` is the SHA-256 info hash truncated to 20 bytes (BEP 52).
    """

    reserved: bytes
    info_hash: bytes
    peer_id: bytes


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class KeepAlive:
    """Zero-length frame; only proves the peer is still there."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Choke:
    """The sender will not serve requests (and, without BEP 6, drops queued ones)."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Unchoke:
    """The sender will now serve requests."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Interested:
    """The sender wants pieces the receiver has."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class NotInterested:
    """The sender wants nothing from the receiver."""


@mypyc_attr(acyclic=True)  # ints only (see Request)
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Have:
    """The sender now has piece ``index``."""

    index: int

    def __init__(self, index: int) -> None:
        object.__setattr__(self, "index", index)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Bitfield:
    """Pieces the sender has, high bit of byte 0 = piece 0; spare bits must be zero."""

    bits: bytes


# acyclic (compiled: no GC header, never tracked): ints only, so no cycle can pass
# through one; a download makes one per 16 KiB block and frees it when served, and a
# tracked one is linked into the collector's list when made and unlinked when freed (a
# write to each neighbour there: objects made about when it was, cold by then)
@mypyc_attr(acyclic=True)
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Request:
    """Ask for ``length`` bytes of piece ``index`` starting at ``begin``."""

    index: int
    begin: int
    length: int

    def __init__(self, index: int, begin: int, length: int) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "length", length)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Piece:
    """A block of data: ``data`` of piece ``index`` starting at ``begin``."""

    index: int
    begin: int
    data: bytes

    def __init__(self, index: int, begin: int, data: bytes) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "data", data)


@mypyc_attr(acyclic=True)  # ints only (see Request)
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Cancel:
    """Withdraw an earlier :class:`Request` (same three fields)."""

    index: int
    begin: int
    length: int

    def __init__(self, index: int, begin: int, length: int) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "length", length)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Port:
    """The sender's DHT node listens on UDP ``port`` (BEP 5)."""

    port: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SuggestPiece:
    """BEP 6: the sender suggests downloading piece ``index`` (it is cheap to serve)."""

    index: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HaveAll:
    """BEP 6: the sender is a seed; replaces the bitfield."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HaveNone:
    """BEP 6: the sender has nothing; replaces the bitfield."""


@mypyc_attr(acyclic=True)  # ints only (see Request)
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RejectRequest:
    """BEP 6: the sender will not serve this request (same fields as :class:`Request`)."""

    index: int
    begin: int
    length: int

    def __init__(self, index: int, begin: int, length: int) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "length", length)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AllowedFast:
    """BEP 6: the receiver may request piece ``index`` even while choked."""

    index: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Extended:
    """BEP 10 envelope: ``ext_id`` 0 is the extension handshake, others as agreed in it."""

    ext_id: int
    payload: bytes


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HashRequest:
    """BEP 52: ask for ``length`` hashes of layer ``base_layer`` of the file tree whose
    root is ``pieces_root``, from ``index``, plus ``proof_layers`` layers of uncle hashes."""

    pieces_root: bytes
    base_layer: int
    index: int
    length: int
    proof_layers: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Hashes:
    """BEP 52: answer to a :class:`HashRequest`; ``hashes`` is the concatenated 32-byte
    hashes (the requested ones, then the uncles)."""

    pieces_root: bytes
    base_layer: int
    index: int
    length: int
    proof_layers: int
    hashes: bytes


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HashReject:
    """BEP 52: the sender will not answer this :class:`HashRequest`."""

    pieces_root: bytes
    base_layer: int
    index: int
    length: int
    proof_layers: int


# eq, hash and repr from closures (swarmhub._records: no exec per method at import); a
# call, not a decorator, which would make mypyc build them as plain Python classes
for _cls in (
        Handshake, KeepAlive, Choke, Unchoke, Interested, NotInterested, Have, Bitfield,
        Request, Piece, Cancel, Port, SuggestPiece, HaveAll, HaveNone, RejectRequest,
        AllowedFast, Extended, HashRequest, Hashes, HashReject,
):
    value_methods(_cls)


Message: TypeAlias = (
    Handshake
    | KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | Port
    | SuggestPiece
    | HaveAll
    | HaveNone
    | RejectRequest
    | AllowedFast
    | Extended
    | HashRequest
    | Hashes
    | HashReject
)

# --------------------------------------------------------------------------- encoding

_U32 = struct.Struct(">I")
_HDR = struct.Struct(">IB")  # length, id
_HDR_I = struct.Struct(">IBI")  # length, id, one u32
_HDR_III = struct.Struct(">IBIII")  # length, id, three u32
_HDR_PIECE = struct.Struct(">IBII")  # length, id, index, begin
_HDR_PORT = struct.Struct(">IBH")
_HDR_HASH = struct.Struct(">IB32sIIII")  # length, id, root, base, index, length, proofs
_I = struct.Struct(">I")
_II = struct.Struct(">II")
_III = struct.Struct(">III")
_H = struct.Struct(">H")
_HASH = struct.Struct(">32sIIII")

_KEEPALIVE_BYTES = b"\x00\x00\x00\x00"
_BARE = {
    Choke: _HDR.pack(1, MessageId.CHOKE),
    Unchoke: _HDR.pack(1, MessageId.UNCHOKE),
    Interested: _HDR.pack(1, MessageId.INTERESTED),
    NotInterested: _HDR.pack(1, MessageId.NOT_INTERESTED),
    HaveAll: _HDR.pack(1, MessageId.HAVE_ALL),
    HaveNone: _HDR.pack(1, MessageId.HAVE_NONE),
}


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"{name} must be {size} bytes, not {len(value)}")


def encode(msg: Message) -> bytes:
    """The bytes of ``msg`` on the wire (length-prefixed; a handshake is its 68 bytes).

    Raises :class:`LocalProtocolError` for fields that cannot be encoded (wrong sizes,
    integers outside u32 / u16).
    """
    try:
        match msg:
            case Piece(index, begin, data):
                return _HDR_PIECE.pack(9 + len(data), MessageId.PIECE, index, begin) + data
            case Request(index, begin, length):
                return _HDR_III.pack(13, MessageId.REQUEST, index, begin, length)
            case Have(index):
                return _HDR_I.pack(5, MessageId.HAVE, index)
            case Cancel(index, begin, length):
                return _HDR_III.pack(13, MessageId.CANCEL, index, begin, length)
            case RejectRequest(index, begin, length):
                return _HDR_III.pack(13, MessageId.REJECT_REQUEST, index, begin, length)
            case KeepAlive():
                return _KEEPALIVE_BYTES
            case Choke() | Unchoke() | Interested() | NotInterested() | HaveAll() | HaveNone():
                return _BARE[type(msg)]
            case Bitfield(bits):
                return _HDR.pack(1 + len(bits), MessageId.BITFIELD) + bits
            case SuggestPiece(index):
                return _HDR_I.pack(5, MessageId.SUGGEST_PIECE, index)
            case AllowedFast(index):
                return _HDR_I.pack(5, MessageId.ALLOWED_FAST, index)
            case Port(port):
                return _HDR_PORT.pack(3, MessageId.PORT, port)
            case Extended(ext_id, payload):
                return _HDR.pack(2 + len(payload), MessageId.EXTENDED) + bytes((ext_id,)) + payload
            case Handshake(reserved, info_hash, peer_id):
                _check_len("Handshake.reserved", reserved, 8)
                _check_len("Handshake.info_hash", info_hash, 20)
                _check_len("Handshake.peer_id", peer_id, 20)
                return b"\x13" + PROTOCOL_NAME + reserved + info_hash + peer_id
            case HashRequest(root, base, index, length, proofs):
                _check_len("HashRequest.pieces_root", root, 32)
                return _HDR_HASH.pack(49, MessageId.HASH_REQUEST, root, base, index, length, proofs)
            case HashReject(root, base, index, length, proofs):
                _check_len("HashReject.pieces_root", root, 32)
                return _HDR_HASH.pack(49, MessageId.HASH_REJECT, root, base, index, length, proofs)
            case Hashes(root, base, index, length, proofs, hashes):
                _check_len("Hashes.pieces_root", root, 32)
                if len(hashes) % 32:
                    raise LocalProtocolError("Hashes.hashes must be a multiple of 32 bytes")
                head = _HDR_HASH.pack(
                    49 + len(hashes), MessageId.HASHES, root, base, index, length, proofs
                )
                return head + hashes
    except (struct.error, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None
    raise LocalProtocolError(f"not a peer wire message: {msg!r}")


# --------------------------------------------------------------------------- decoding

_NAMES = {
    MessageId.CHOKE: "Choke",
    MessageId.UNCHOKE: "Unchoke",
    MessageId.INTERESTED: "Interested",
    MessageId.NOT_INTERESTED: "NotInterested",
    MessageId.HAVE: "Have",
    MessageId.BITFIELD: "Bitfield",
    MessageId.REQUEST: "Request",
    MessageId.PIECE: "Piece",
    MessageId.CANCEL: "Cancel",
    MessageId.PORT: "Port",
    MessageId.SUGGEST_PIECE: "SuggestPiece",
    MessageId.HAVE_ALL: "HaveAll",
    MessageId.HAVE_NONE: "HaveNone",
    MessageId.REJECT_REQUEST: "RejectRequest",
    MessageId.ALLOWED_FAST: "AllowedFast",
    MessageId.EXTENDED: "Extended",
    MessageId.HASH_REQUEST: "HashRequest",
    MessageId.HASHES: "Hashes",
    MessageId.HASH_REJECT: "HashReject",
}

_SINGLETONS: dict[int, Message] = {
    MessageId.CHOKE: Choke(),
    MessageId.UNCHOKE: Unchoke(),
    MessageId.INTERESTED: Interested(),
    MessageId.NOT_INTERESTED: NotInterested(),
    MessageId.HAVE_ALL: HaveAll(),
    MessageId.HAVE_NONE: HaveNone(),
}
# Exact payload size (after the id byte) of every fixed-size message.
_FIXED_SIZE = {
    MessageId.CHOKE: 0,
    MessageId.UNCHOKE: 0,
    MessageId.INTERESTED: 0,
    MessageId.NOT_INTERESTED: 0,
    MessageId.HAVE_ALL: 0,
    MessageId.HAVE_NONE: 0,
    MessageId.HAVE: 4,
    MessageId.SUGGEST_PIECE: 4,
    MessageId.ALLOWED_FAST: 4,
    MessageId.REQUEST: 12,
    MessageId.CANCEL: 12,
    MessageId.REJECT_REQUEST: 12,
    MessageId.PORT: 2,
    MessageId.HASH_REQUEST: 48,
    MessageId.HASH_REJECT: 48,
}
_INDEX_ONLY: dict[int, type[Have] | type[SuggestPiece] | type[AllowedFast]] = {
    MessageId.HAVE: Have,
    MessageId.SUGGEST_PIECE: SuggestPiece,
    MessageId.ALLOWED_FAST: AllowedFast,
}
_TRIPLE: dict[int, type[Request] | type[Cancel] | type[RejectRequest]] = {
    MessageId.REQUEST: Request,
    MessageId.CANCEL: Cancel,
    MessageId.REJECT_REQUEST: RejectRequest,
}

Buffer: TypeAlias = bytes | bytearray


def pack_requests(msgs: tuple[Message, ...] | list[Message], top: int, num_pieces: int,
                  piece_length: int, total_length: int) -> bytes | None:
    """The wire bytes of a run of Requests when every one of them is a Request that the
    connection's checks let through (block length at most ``top``, inside the piece and
    the torrent; ``-1`` for what is not known yet), else None: the caller then encodes
    the messages one by one, with the errors that explain why.

    Why here (compiled): a leecher's request refill is ~65,000 Requests a GiB; in the
    connection's interpreted loop each was ~40 bytecodes (a type check, three field
    reads through the compiled class's descriptors, the checks) around its pack."""
    pack = _HDR_III.pack
    parts: list[bytes] = []
    last = num_pieces - 1
    for msg in msgs:
        if not isinstance(msg, Request):
            return None
        index, begin, length = msg.index, msg.begin, msg.length
        if not (0 < length <= top and 0 <= begin < 1 << 32 and 0 <= index < 1 << 32):
            return None
        if num_pieces >= 0 and index >= num_pieces:
            return None
        if piece_length >= 0 and total_length >= 0 and begin + length > (
                piece_length if index < last
                else min(piece_length, total_length - index * piece_length)):
            return None
        parts.append(pack(13, MessageId.REQUEST, index, begin, length))
    return b"".join(parts)


def message_name(msg_id: int) -> str:
    """A readable name for a message id (for error messages)."""
    return _NAMES.get(msg_id, f"unknown message id {msg_id}")


def decode_payload(msg_id: int, buf: Buffer, start: int, end: int) -> Message | None:
    """Decode the payload ``buf[start:end]`` (after the id byte) of message ``msg_id``.

    Structural checks only (sizes); state and range checks are the connection's job.
    Returns ``None`` for an id this codec does not know: BEP 3 peers must ignore those so
    that new messages can be added. Raises :class:`RemoteProtocolError` on a bad size.
    """
    size = end - start
    want = _FIXED_SIZE.get(msg_id)
    if want is not None and size != want:
        raise RemoteProtocolError(
            f"{message_name(msg_id)} message has a {size}-byte payload, expected {want}"
        )
    single = _SINGLETONS.get(msg_id)
    if single is not None:
        return single
    cls1 = _INDEX_ONLY.get(msg_id)
    if cls1 is not None:
        return cls1(_I.unpack_from(buf, start)[0])
    cls3 = _TRIPLE.get(msg_id)
    if cls3 is not None:
        return cls3(*_III.unpack_from(buf, start))
    if msg_id == MessageId.PIECE:
        if size < 8:
            raise RemoteProtocolError(f"Piece message has a {size}-byte payload, expected >= 8")
        index, begin = _II.unpack_from(buf, start)
        with memoryview(buf) as view:
            return Piece(index, begin, bytes(view[start + 8 : end]))
    if msg_id == MessageId.BITFIELD:
        with memoryview(buf) as view:
            return Bitfield(bytes(view[start:end]))
    if msg_id == MessageId.EXTENDED:
        if size < 1:
            raise RemoteProtocolError("Extended message has no extension id byte")
        with memoryview(buf) as view:
            return Extended(buf[start], bytes(view[start + 1 : end]))
    if msg_id == MessageId.PORT:
        return Port(_H.unpack_from(buf, start)[0])
    if msg_id == MessageId.HASH_REQUEST:
        return HashRequest(*_HASH.unpack_from(buf, start))
    if msg_id == MessageId.HASH_REJECT:
        return HashReject(*_HASH.unpack_from(buf, start))
    if msg_id == MessageId.HASHES:
        if size < 48 or (size - 48) % 32:
            raise RemoteProtocolError(
                f"Hashes message has a {size}-byte payload, expected 48 + a multiple of 32"
            )
        root, base, index, length, proofs = _HASH.unpack_from(buf, start)
        with memoryview(buf) as view:
            return Hashes(root, base, index, length, proofs, bytes(view[start + 48 : end]))
    return None


def decode_handshake(data: Buffer, start: int = 0) -> Handshake:
    """Decode the 68-byte handshake at ``data[start:]``; RemoteProtocolError if it is not one."""
    if len(data) - start < HANDSHAKE_LENGTH:
        raise RemoteProtocolError(f"handshake is {len(data) - start} bytes, expected 68")
    if data[start] != len(PROTOCOL_NAME) or data[start + 1 : start + 20] != PROTOCOL_NAME:
        raise RemoteProtocolError(
            "peer did not open with the BitTorrent handshake "
            f"(got {bytes(data[start : start + 20])!r}); is it encrypted or another protocol?"
        )
    return Handshake(
        bytes(data[start + 20 : start + 28]),
        bytes(data[start + 28 : start + 48]),
        bytes(data[start + 48 : start + 68]),
    )


def decode(frame: Buffer) -> Message:
    """Decode exactly one complete frame (a handshake or a length-prefixed message).

    Convenient for tests and tools; :class:`~swarmhub.wire.connection.PeerConnection`
    parses streams. Unknown ids raise here because there is nothing to return.
    """
    if frame[:1] == b"\x13" and len(frame) == HANDSHAKE_LENGTH:
        return decode_handshake(frame)
    if len(frame) < 4:
        raise RemoteProtocolError(f"frame is {len(frame)} bytes, shorter than its length prefix")
    (length,) = _U32.unpack_from(frame, 0)
    if length != len(frame) - 4:
        raise RemoteProtocolError(f"length prefix says {length} bytes, frame has {len(frame) - 4}")
    if length == 0:
        return KeepAlive()
    msg = decode_payload(frame[4], frame, 5, len(frame))
    if msg is None:
        raise RemoteProtocolError(f"{message_name(frame[4])} cannot be decoded")
    return msg


# --------------------------------------------------------------------------- bitfields
#
# Conversions go through one big int (int.from_bytes / int(str, 2)) and bytes.translate,
# so a 100,000-piece field costs a few C-level passes rather than 100,000 Python steps.

_ASCII_TO_FLAGS = bytes.maketrans(b"01", b"\x00\x01")
_FLAGS_TO_ASCII = bytes.maketrans(b"\x00\x01", b"01")


def validate_bitfield(
    bits: bytes, num_pieces: int, error: type[ProtocolError] = RemoteProtocolError
) -> None:
    """Raise ``error`` unless ``bits`` is exactly ``ceil(num_pieces / 8)`` bytes with the
    spare bits at the end zero (BEP 3 says peers must drop a field that breaks this)."""
    expected = (num_pieces + 7) >> 3
    if len(bits) != expected:
        raise error(f"Bitfield is {len(bits)} bytes but {num_pieces} pieces need {expected} bytes")
    spare = expected * 8 - num_pieces
    if spare and bits[-1] & ((1 << spare) - 1):
        raise error(f"Bitfield sets spare bits past piece {num_pieces - 1}")


def _flags(bits: bytes, num_pieces: int) -> bytes:
    """One 0/1 byte per piece."""
    if not bits:
        return bytes(num_pieces)
    text = format(int.from_bytes(bits, "big"), f"0{len(bits) * 8}b").encode("ascii")
    return text[:num_pieces].ljust(num_pieces, b"0").translate(_ASCII_TO_FLAGS)


def bools_from_bitfield(bits: bytes, num_pieces: int) -> list[bool]:
    """``[has piece 0, has piece 1, …]`` for ``num_pieces`` pieces (bits past that ignored)."""
    return list(map(bool, _flags(bits, num_pieces)))


def indices_from_bitfield(bits: bytes, num_pieces: int) -> list[int]:
    """The indices of the pieces ``bits`` marks as present, ascending."""
    from itertools import compress

    return list(compress(range(num_pieces), _flags(bits, num_pieces)))


def bitfield_from_bools(flags: Iterable[bool] | bytes | bytearray) -> bytes:
    """Pack per-piece booleans (or a 0/1 byte string, e.g. a ``bytearray`` of have-flags)
    into a wire bitfield."""
    raw = bytes(flags) if isinstance(flags, bytes | bytearray) else bytes(map(bool, flags))
    n = len(raw)
    if n == 0:
        return b""
    nbytes = (n + 7) >> 3
    text = raw.translate(_FLAGS_TO_ASCII) + b"0" * (nbytes * 8 - n)
    return int(text, 2).to_bytes(nbytes, "big")


def bitfield_from_indices(indices: Iterable[int], num_pieces: int) -> bytes:
    """A wire bitfield for ``num_pieces`` pieces with ``indices`` set."""
    flags = bytearray(num_pieces)
    for i in indices:
        if not 0 <= i < num_pieces:
            raise ValueError(f"piece index {i} outside 0..{num_pieces - 1}")
        flags[i] = 1
    return bitfield_from_bools(bytes(flags))


def bitfield_count(bits: bytes) -> int:
    """How many pieces ``bits`` marks as present."""
    return int.from_bytes(bits, "big").bit_count()
