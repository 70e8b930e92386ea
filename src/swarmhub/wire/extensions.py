"""Payloads carried in BEP 10 ``Extended`` messages: the extension handshake (BEP 10),
ut_metadata (BEP 9) and ut_pex (BEP 11).

Pure codecs: ``encode_*`` return the payload bytes to put in
:class:`~swarmhub.wire.messages.Extended`, ``decode_*`` take that payload and raise
:class:`RemoteProtocolError` on anything malformed (never another exception), so the
engine can drop the one peer. Decoders are tolerant of keys they do not know and strict
on the types of the keys they do.

Payloads are decoded with :func:`~swarmhub.wire.lenient.decode_lenient`: bounded and
iterative (a hostile payload costs at most ``max_items`` steps), and lenient about key
order and duplicate keys, as libtorrent is; a peer whose extension handshake is not
canonical bencode is still a working peer. Info dicts stay strict (see :mod:`swarmhub.bencode`).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from swarmhub._records import value_methods
from swarmhub.bencode import bencode
from swarmhub.errors import LocalProtocolError, RemoteProtocolError
from swarmhub.wire.lenient import decode_lenient

__all__ = [
    "EXTENSION_HANDSHAKE_ID",
    "MAX_PEX_PEERS",
    "METADATA_PIECE_SIZE",
    "UT_METADATA",
    "UT_PEX",
    "ExtensionHandshake",
    "MetadataData",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "PexMessage",
    "bencoded_end",
    "decode_ext_handshake",
    "decode_metadata_message",
    "decode_pex",
    "encode_ext_handshake",
    "encode_metadata_message",
    "encode_pex",
]

EXTENSION_HANDSHAKE_ID = 0  # Extended.ext_id of the BEP 10 handshake
UT_METADATA = "ut_metadata"
UT_PEX = "ut_pex"
METADATA_PIECE_SIZE = 16 * 1024  # BEP 9: every metadata piece but the last
MAX_PEX_PEERS = 200  # per list; BEP 11 asks for <= 50, extra entries are dropped

Peer: TypeAlias = tuple[str, int]

# --------------------------------------------------------------------------- scanning


def _fail(what: str, pos: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed bencode in extension payload: {what} at byte {pos}")


def bencoded_end(data: bytes, start: int = 0, *, max_depth: int = 32, max_items: int = 4096) -> int:
    """Offset just past the bencoded value that starts at ``data[start]``.

    Iterative and bounded (nesting ``max_depth``, tokens ``max_items``); it checks the
    framing only (the decoders here use :func:`~swarmhub.wire.lenient.decode_lenient`,
    which returns the same end along with the value).
    """
    n = len(data)
    pos = start
    depth = 0
    for _ in range(max_items):
        if pos >= n:
            raise _fail("value is cut short", pos)
        c = data[pos]
        if c == 0x64 or c == 0x6C:  # d, l
            depth += 1
            if depth > max_depth:
                raise _fail(f"nesting deeper than {max_depth}", pos)
            pos += 1
            continue
        if c == 0x65:  # e
            if depth == 0:
                raise _fail("unexpected 'e'", pos)
            depth -= 1
            pos += 1
        elif c == 0x69:  # i<digits>e, at most 64 digits (plenty for any real field)
            end = data.find(b"e", pos + 1, pos + 67)
            if end < 0:
                raise _fail("unterminated integer", pos)
            pos = end + 1
        elif 0x30 <= c <= 0x39:  # <len>:<bytes>
            colon = data.find(b":", pos, pos + 11)
            if colon < 0 or not data[pos:colon].isdigit():
                raise _fail("bad string length", pos)
            pos = colon + 1 + int(data[pos:colon])
            if pos > n:
                raise _fail("string runs past the end", n)
        else:
            raise _fail(f"unexpected byte {c:#04x}", pos)
        if depth == 0:
            return pos
    raise _fail(f"more than {max_items} items", pos)


def _decode_dict(payload: bytes, what: str, *, whole: bool = True) -> tuple[dict[bytes, Any], int]:
    """Leniently decode the dict at the start of ``payload``; return it and its end."""
    try:
        value, end = decode_lenient(payload)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"{what}: {exc}") from None
    if whole and end != len(payload):
        raise RemoteProtocolError(f"{what}: {len(payload) - end} junk bytes after the dict")
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: expected a bencoded dict, got {type(value).__name__}")
    return value, end


def _int(d: dict[bytes, Any], key: bytes, what: str, lo: int, hi: int | None) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise RemoteProtocolError(f"{what}: {key.decode()!s} must be an integer {bound}")
    return value


# --------------------------------------------------------------------------- BEP 10


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ExtensionHandshake:
    """The BEP 10 handshake (``Extended`` id 0).

    ``m`` maps extension names to the ids *the sender* wants to receive them on (0 means
    "disabled"); ``v`` client name; ``p`` its listen port; ``reqq`` how many outstanding
    requests it accepts; ``yourip`` our address as it sees it (4 or 16 bytes);
    ``metadata_size`` the info dict size (BEP 9); ``upload_only`` it is a seed or
    partial seed (BEP 21). ``raw`` keeps the whole decoded dict, unknown keys included.
    """

    m: dict[str, int] = field(default_factory=dict)
    v: str | None = None
    p: int | None = None
    reqq: int | None = None
    yourip: bytes | None = None
    metadata_size: int | None = None
    upload_only: bool = False
    raw: dict[bytes, Any] = field(default_factory=dict)


def encode_ext_handshake(
    handshake: ExtensionHandshake | None = None,
    /,
    *,
    m: dict[str, int] | None = None,
    v: str | None = None,
    p: int | None = None,
    reqq: int | None = None,
    yourip: bytes | None = None,
    metadata_size: int | None = None,
    upload_only: bool = False,
) -> bytes:
    """The payload of an extension handshake, from an :class:`ExtensionHandshake` or from
    the same fields as keywords. Keys of ``raw`` that no field covers are kept."""
    if handshake is None:
        handshake = ExtensionHandshake(
            m=m or {},
            v=v,
            p=p,
            reqq=reqq,
            yourip=yourip,
            metadata_size=metadata_size,
            upload_only=upload_only,
        )
    hs = handshake
    out: dict[bytes, Any] = {
        k: val
        for k, val in hs.raw.items()
        if k not in (b"m", b"v", b"p", b"reqq", b"yourip", b"metadata_size", b"upload_only")
    }
    for name, ext_id in hs.m.items():
        if not isinstance(ext_id, int) or not 0 <= ext_id <= 255:
            raise LocalProtocolError(f"extension id for {name!r} must be 0..255, not {ext_id!r}")
    out[b"m"] = {name.encode(): ext_id for name, ext_id in hs.m.items()}
    if hs.v is not None:
        out[b"v"] = hs.v.encode()
    if hs.p is not None:
        if not 0 < hs.p < 65536:
            raise LocalProtocolError(f"listen port must be 1..65535, not {hs.p}")
        out[b"p"] = hs.p
    if hs.reqq is not None:
        out[b"reqq"] = hs.reqq
    if hs.yourip is not None:
        if len(hs.yourip) not in (4, 16):
            raise LocalProtocolError("yourip must be a packed IPv4 (4) or IPv6 (16) address")
        out[b"yourip"] = hs.yourip
    if hs.metadata_size is not None:
        out[b"metadata_size"] = hs.metadata_size
    if hs.upload_only:
        out[b"upload_only"] = 1
    return bencode(out)


def _listen_port(value: object) -> int | None:
    """BEP 10 ``p``: advisory like ``yourip``, so a wrong one is ignored, not fatal.

    Mainstream clients read it as "a port if it is one" and keep the connection; 0 says
    nothing either (no listen port).
    """
    return value if isinstance(value, int) and 0 < value < 65536 else None


def decode_ext_handshake(payload: bytes) -> ExtensionHandshake:
    """Decode an extension handshake payload; RemoteProtocolError if it is junk."""
    what = "extension handshake"
    d, _ = _decode_dict(payload, what)
    m: dict[str, int] = {}
    raw_m = d.get(b"m", {})
    if not isinstance(raw_m, dict):
        raise RemoteProtocolError(f"{what}: 'm' must be a dict")
    for key, ext_id in raw_m.items():
        if not isinstance(ext_id, int) or not 0 <= ext_id <= 255:
            raise RemoteProtocolError(f"{what}: id of extension {key!r} must be 0..255")
        try:
            m[key.decode("utf-8")] = ext_id
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{what}: extension name {key!r} is not UTF-8") from None
    raw_v = d.get(b"v")
    if raw_v is not None and not isinstance(raw_v, bytes):
        raise RemoteProtocolError(f"{what}: 'v' must be a string")
    raw_ip = d.get(b"yourip")
    if raw_ip is not None and not isinstance(raw_ip, bytes):
        raise RemoteProtocolError(f"{what}: 'yourip' must be a string")
    upload_only = _int(d, b"upload_only", what, 0, None)
    return ExtensionHandshake(
        m=m,
        # Client names are for display only; some clients send Latin-1.
        v=None if raw_v is None else raw_v.decode("utf-8", "replace"),
        p=_listen_port(d.get(b"p")),
        reqq=_int(d, b"reqq", what, 0, None),
        # A wrong-sized address is ignored, not fatal: it is advisory.
        yourip=raw_ip if raw_ip is not None and len(raw_ip) in (4, 16) else None,
        metadata_size=_int(d, b"metadata_size", what, 0, None),
        upload_only=bool(upload_only),
        raw=d,
    )


# --------------------------------------------------------------------------- BEP 9


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MetadataRequest:
    """Ask for metadata piece ``piece`` (16 KiB each)."""

    piece: int


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MetadataData:
    """Metadata piece ``piece`` of an info dict of ``total_size`` bytes."""

    piece: int
    total_size: int
    data: bytes


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MetadataReject:
    """The sender will not send metadata piece ``piece``."""

    piece: int


MetadataMessage: TypeAlias = MetadataRequest | MetadataData | MetadataReject


def encode_metadata_message(msg: MetadataMessage) -> bytes:
    """The ut_metadata payload for ``msg`` (for an ``Extended`` with the peer's id)."""
    match msg:
        case MetadataRequest(piece):
            return bencode({b"msg_type": 0, b"piece": piece})
        case MetadataData(piece, total_size, data):
            if len(data) > METADATA_PIECE_SIZE:
                raise LocalProtocolError(f"metadata piece of {len(data)} bytes exceeds 16 KiB")
            return bencode({b"msg_type": 1, b"piece": piece, b"total_size": total_size}) + data
        case MetadataReject(piece):
            return bencode({b"msg_type": 2, b"piece": piece})
    raise LocalProtocolError(f"not a ut_metadata message: {msg!r}")


def decode_metadata_message(payload: bytes) -> MetadataMessage | None:
    """Decode a ut_metadata payload.

    Returns ``None`` for an unknown ``msg_type``, which BEP 9 says must be ignored.
    Raises :class:`RemoteProtocolError` on junk.
    """
    what = "ut_metadata message"
    d, end = _decode_dict(payload, what, whole=False)
    msg_type = _int(d, b"msg_type", what, 0, None)
    piece = _int(d, b"piece", what, 0, None)
    if msg_type is None or piece is None:
        raise RemoteProtocolError(f"{what}: msg_type and piece are required")
    if msg_type == 1:
        total_size = _int(d, b"total_size", what, 0, None)
        if total_size is None:
            raise RemoteProtocolError(f"{what}: data message without total_size")
        data = bytes(payload[end:])
        if len(data) > METADATA_PIECE_SIZE:
            raise RemoteProtocolError(f"{what}: piece of {len(data)} bytes exceeds 16 KiB")
        return MetadataData(piece, total_size, data)
    if end != len(payload):
        raise RemoteProtocolError(f"{what}: {len(payload) - end} junk bytes after the dict")
    if msg_type == 0:
        return MetadataRequest(piece)
    if msg_type == 2:
        return MetadataReject(piece)
    return None


# --------------------------------------------------------------------------- BEP 11

_PORT = struct.Struct(">H")


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PexMessage:
    """Peers the sender connected to (``added``) or dropped since its last PEX message.

    Addresses are ``(ip, port)`` with ``ip`` as text, IPv4 and IPv6 alike; the codec
    splits them into ``added``/``added6`` on the wire. ``added_flags`` is one BEP 11 flag
    byte per added peer (0x01 prefers encryption, 0x02 seed, 0x04 uTP, 0x08 holepunch,
    0x10 reachable), or empty. Decoding lists IPv4 peers before IPv6 ones.
    """

    added: list[Peer] = field(default_factory=list)
    dropped: list[Peer] = field(default_factory=list)
    added_flags: list[int] = field(default_factory=list)


@functools.lru_cache(maxsize=4096)
def _packed_ip(host: str) -> bytes:
    """``host``'s 4 or 16 address bytes; ValueError if it is no IP address.

    Cached: a PEX message to each peer every minute lists the same few hundred addresses
    (parsing each with ipaddress was ~1 % of a lab peer's CPU)."""
    return ipaddress.ip_address(host).packed


def _compact(peers: list[Peer]) -> tuple[bytes, bytes]:
    v4, v6 = bytearray(), bytearray()
    for host, port in peers:
        try:
            packed = _packed_ip(host) + _PORT.pack(port)
        except (ValueError, struct.error) as exc:
            raise LocalProtocolError(f"cannot encode PEX peer {host!r}:{port}: {exc}") from None
        (v4 if len(packed) == 6 else v6).extend(packed)
    return bytes(v4), bytes(v6)


def encode_pex(msg: PexMessage) -> bytes:
    """The ut_pex payload for ``msg``."""
    if msg.added_flags and len(msg.added_flags) != len(msg.added):
        raise LocalProtocolError("added_flags needs one entry per added peer")
    flags4, flags6 = bytearray(), bytearray()
    for (host, _port), flag in zip(msg.added, msg.added_flags, strict=False):
        (flags6 if ":" in host else flags4).append(flag)
    added4, added6 = _compact(msg.added)
    dropped4, dropped6 = _compact(msg.dropped)
    out: dict[bytes, bytes] = {b"added": added4, b"dropped": dropped4}
    if msg.added_flags:
        out[b"added.f"] = bytes(flags4)
    if added6:
        out[b"added6"] = added6
        if msg.added_flags:
            out[b"added6.f"] = bytes(flags6)
    if dropped6:
        out[b"dropped6"] = dropped6
    return bencode(out)


def _peers(d: dict[bytes, Any], key: bytes, size: int) -> list[Peer]:
    raw = d.get(key, b"")
    if not isinstance(raw, bytes) or len(raw) % size:
        raise RemoteProtocolError(f"ut_pex message: {key.decode()} must be {size}-byte entries")
    ip_len = size - 2
    cls = ipaddress.IPv4Address if ip_len == 4 else ipaddress.IPv6Address
    unpack_port = _PORT.unpack_from
    return [
        (str(cls(raw[off : off + ip_len])), unpack_port(raw, off + ip_len)[0])
        for off in range(0, min(len(raw), MAX_PEX_PEERS * size), size)
    ]


def decode_pex(payload: bytes) -> PexMessage:
    """Decode a ut_pex payload (at most :data:`MAX_PEX_PEERS` per list are kept)."""
    d, _ = _decode_dict(payload, "ut_pex message")
    added4, added6 = _peers(d, b"added", 6), _peers(d, b"added6", 18)
    flags: list[int] = []
    f4, f6 = d.get(b"added.f", b""), d.get(b"added6.f", b"")
    # Flags are advisory: use them only when they line up with the addresses.
    if (
        isinstance(f4, bytes)
        and isinstance(f6, bytes)
        and len(f4) >= len(added4)
        and len(f6) >= len(added6)
    ):
        flags = list(f4[: len(added4)]) + list(f6[: len(added6)])
    return PexMessage(
        added=added4 + added6,
        dropped=_peers(d, b"dropped", 6) + _peers(d, b"dropped6", 18),
        added_flags=flags,
    )
