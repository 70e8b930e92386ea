"""Sans-IO codec of the UDP tracker protocol (BEP 15) with BEP 41 URL data.

Pure functions between packets (frozen dataclasses) and bytes, shared by the client
(:mod:`swarmhub.discovery.udp_tracker`) and the hub's server
(:mod:`swarmhub.hub.udp_tracker`). Nothing here touches a socket, a clock or a logger, so
every packet shape is a unit test and any datagram can be fuzzed: :func:`parse_request`
and :func:`parse_response` either return a packet or raise :class:`UdpPacketError`.

Wire format (big endian), requests then responses::

    connect   Q protocol_id | I action=0 | I transaction_id                      16 bytes
    announce  Q conn_id | I 1 | I tid | 20s info_hash | 20s peer_id | Q downloaded
              | Q left | Q uploaded | I event | I ip | I key | i num_want | H port  98 bytes
              + BEP 41 options (0 end, 1 nop, 2 URL data: len byte + data, concatenated)
    scrape    Q conn_id | I 2 | I tid | 20s info_hash * N                      16 + 20 N
    connect   I 0 | I tid | Q conn_id                                               16
    announce  I 1 | I tid | I interval | I leechers | I seeders | peers       20 + 6|18 N
    scrape    I 2 | I tid | (I seeders | I completed | I leechers) * N          8 + 12 N
    error     I 3 | I tid | message

Whether announce peers are 6-byte (IPv4) or 18-byte (IPv6) entries is not in the packet:
it follows the address family of the socket, so :func:`parse_response` takes ``ipv6``.
BEP 15 says packets may grow in future versions, so trailing bytes are ignored.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from swarmhub.errors import TrackerError

__all__ = [
    "ACTION_ANNOUNCE",
    "ACTION_CONNECT",
    "ACTION_ERROR",
    "ACTION_SCRAPE",
    "ANNOUNCE_SIZE",
    "EVENTS",
    "MAX_SCRAPE",
    "PROTOCOL_ID",
    "Announce",
    "AnnounceReply",
    "Connect",
    "ConnectReply",
    "ErrorReply",
    "Scrape",
    "ScrapeReply",
    "UdpPacketError",
    "encode",
    "encode_announce_reply",
    "encode_url_data",
    "parse_request",
    "parse_response",
    "parse_url_data",
]

#: The magic constant a connect request starts with.
PROTOCOL_ID = 0x41727101980
ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_SCRAPE = 2
ACTION_ERROR = 3
#: BEP 15 event numbers <-> the event names of HTTP announces (None: a regular one).
EVENTS: tuple[str | None, ...] = (None, "completed", "started", "stopped")
#: Hashes in one scrape: "up to about 74" keeps a request within one 1500-byte packet.
MAX_SCRAPE = 74
#: A URL longer than this is refused: BEP 41 data rides in one small datagram.
MAX_URL_DATA = 1024

_CONNECT = struct.Struct("!QII")
_ANNOUNCE = struct.Struct("!QII20s20sQQQIIIiH")
_SCRAPE_HEAD = struct.Struct("!QII")
_HEAD = struct.Struct("!II")
_CONNECT_REPLY = struct.Struct("!IIQ")
_ANNOUNCE_REPLY = struct.Struct("!IIIII")
_TRIPLE = struct.Struct("!III")
ANNOUNCE_SIZE = _ANNOUNCE.size  # 98
_U32 = 0xFFFFFFFF


class UdpPacketError(TrackerError):
    """A datagram that is not a valid BEP 15 packet (the message says what is wrong)."""


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class Connect:
    """Client -> tracker: ask for a connection id."""

    transaction_id: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Client -> tracker announce. ``event`` is an index into :data:`EVENTS`;
    ``num_want`` -1 means "tracker's default"; ``url_data`` is the BEP 41 path and query
    (``b"/announce?passkey=..."``), ``None`` when the client sent no URL data option."""

    connection_id: int
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    event: int
    ip: int
    key: int
    num_want: int
    port: int
    url_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Scrape:
    """Client -> tracker: swarm counts of up to :data:`MAX_SCRAPE` torrents."""

    connection_id: int
    transaction_id: int
    info_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ConnectReply:
    transaction_id: int
    connection_id: int


@dataclass(frozen=True, slots=True)
class AnnounceReply:
    """Tracker -> client. ``peers`` is the compact blob (6 or 18 bytes per peer)."""

    transaction_id: int
    interval: int
    leechers: int
    seeders: int
    peers: bytes = b""
    ipv6: bool = False

    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each peer, skipping port 0 (not connectable)."""
        width = 18 if self.ipv6 else 6
        out = []
        for at in range(0, len(self.peers) - width + 1, width):
            raw = self.peers[at : at + width]
            port = int.from_bytes(raw[-2:], "big")
            if port:
                ip = ipaddress.ip_address(raw[:-2])
                out.append((str(ip), port))
        return out


@dataclass(frozen=True, slots=True)
class ScrapeReply:
    """Tracker -> client: ``(seeders, completed, leechers)`` per requested hash, in order."""

    transaction_id: int
    stats: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    transaction_id: int
    message: str


Request = Connect | Announce | Scrape
Response = ConnectReply | AnnounceReply | ScrapeReply | ErrorReply


# --------------------------------------------------------------------------- encoding


def encode_url_data(url_data: bytes) -> bytes:
    """BEP 41 options carrying ``url_data``: chunks of at most 255 bytes, then end."""
    out = bytearray()
    for at in range(0, len(url_data), 255):
        chunk = url_data[at : at + 255]
        out += bytes((2, len(chunk))) + chunk
    if not url_data:
        out += b"\x02\x00"
    out += b"\x00"
    return bytes(out)


def encode_announce_reply(
    transaction_id: int, interval: int, leechers: int, seeders: int, peers: bytes
) -> bytes:
    """The announce reply as bytes (the server's hot path: no dataclass in between)."""
    return (
        _ANNOUNCE_REPLY.pack(
            ACTION_ANNOUNCE,
            transaction_id,
            min(interval, _U32),
            min(leechers, _U32),
            min(seeders, _U32),
        )
        + peers
    )


def encode(packet: Request | Response) -> bytes:
    """Bytes of any packet; out-of-range fields raise ``UdpPacketError`` (a caller bug)."""
    try:
        match packet:
            case Connect(tid):
                return _CONNECT.pack(PROTOCOL_ID, ACTION_CONNECT, tid)
            case Announce():
                p = packet
                _check_hash(p.info_hash, "info_hash")
                _check_hash(p.peer_id, "peer_id")
                head = _ANNOUNCE.pack(
                    p.connection_id, ACTION_ANNOUNCE, p.transaction_id, p.info_hash, p.peer_id,
                    p.downloaded, p.left, p.uploaded, p.event, p.ip, p.key, p.num_want, p.port,
                )
                return head if p.url_data is None else head + encode_url_data(p.url_data)
            case Scrape(cid, tid, hashes):
                for h in hashes:
                    _check_hash(h, "info_hash")
                return _SCRAPE_HEAD.pack(cid, ACTION_SCRAPE, tid) + b"".join(hashes)
            case ConnectReply(tid, cid):
                return _CONNECT_REPLY.pack(ACTION_CONNECT, tid, cid)
            case AnnounceReply(tid, interval, leechers, seeders, peers, _):
                return encode_announce_reply(tid, interval, leechers, seeders, peers)
            case ScrapeReply(tid, stats):
                body = b"".join(_TRIPLE.pack(*(min(v, _U32) for v in s)) for s in stats)
                return _HEAD.pack(ACTION_SCRAPE, tid) + body
            case ErrorReply(tid, message):
                return _HEAD.pack(ACTION_ERROR, tid) + message.encode("utf-8", "replace")
    except struct.error as exc:
        raise UdpPacketError(f"cannot encode {type(packet).__name__}: {exc}") from None
    raise UdpPacketError(f"not a UDP tracker packet: {packet!r}")  # pragma: no cover


def _check_hash(value: bytes, name: str) -> None:
    if len(value) != 20:
        raise UdpPacketError(f"{name} must be 20 bytes, got {len(value)}")


# --------------------------------------------------------------------------- parsing


def parse_url_data(options: bytes) -> bytes | None:
    """The URL data of BEP 41 options (``None`` when there is no URL data option)."""
    data: bytes | None = None
    at, end = 0, len(options)
    while at < end:
        kind = options[at]
        if kind == 0:  # EndOfOptions
            break
        if kind == 1:  # NOP
            at += 1
            continue
        if at + 1 >= end:
            raise UdpPacketError("BEP 41 option without its length byte")
        length = options[at + 1]
        if at + 2 + length > end:
            raise UdpPacketError("BEP 41 option longer than the packet")
        if kind == 2:
            data = (data or b"") + options[at + 2 : at + 2 + length]
            if len(data) > MAX_URL_DATA:
                raise UdpPacketError(f"BEP 41 URL data longer than {MAX_URL_DATA} bytes")
        at += 2 + length  # unknown option types carry a length: skip them
    return data


def parse_request(data: bytes) -> Request:
    """A client's datagram as a packet; anything else raises ``UdpPacketError``."""
    if len(data) < 16:
        raise UdpPacketError(f"a request is at least 16 bytes, got {len(data)}")
    cid, action, tid = _CONNECT.unpack_from(data)
    if action == ACTION_CONNECT:
        if cid != PROTOCOL_ID:
            raise UdpPacketError("connect request without the BEP 15 protocol id")
        return Connect(tid)
    if action == ACTION_ANNOUNCE:
        if len(data) < ANNOUNCE_SIZE:
            raise UdpPacketError(f"an announce is at least {ANNOUNCE_SIZE} bytes, got {len(data)}")
        f = _ANNOUNCE.unpack_from(data)
        if f[8] >= len(EVENTS):
            raise UdpPacketError(f"unknown announce event {f[8]}")
        url = parse_url_data(data[ANNOUNCE_SIZE:]) if len(data) > ANNOUNCE_SIZE else None
        return Announce(f[0], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11],
                        f[12], url)
    if action == ACTION_SCRAPE:
        count = (len(data) - 16) // 20
        if count == 0:
            raise UdpPacketError("scrape request without an info hash")
        if count > MAX_SCRAPE:
            raise UdpPacketError(f"too many info hashes: at most {MAX_SCRAPE} per scrape")
        hashes = tuple(data[at : at + 20] for at in range(16, 16 + 20 * count, 20))
        return Scrape(cid, tid, hashes)
    raise UdpPacketError(f"unknown request action {action}")


def parse_response(data: bytes, *, ipv6: bool = False) -> Response:
    """A tracker's datagram as a packet; ``ipv6``: peers are 18-byte entries."""
    if len(data) < 8:
        raise UdpPacketError(f"a response is at least 8 bytes, got {len(data)}")
    action, tid = _HEAD.unpack_from(data)
    if action == ACTION_CONNECT:
        if len(data) < 16:
            raise UdpPacketError(f"a connect response is 16 bytes, got {len(data)}")
        return ConnectReply(tid, _CONNECT_REPLY.unpack_from(data)[2])
    if action == ACTION_ANNOUNCE:
        if len(data) < 20:
            raise UdpPacketError(f"an announce response is at least 20 bytes, got {len(data)}")
        _, _, interval, leechers, seeders = _ANNOUNCE_REPLY.unpack_from(data)
        width = 18 if ipv6 else 6
        usable = 20 + (len(data) - 20) // width * width
        return AnnounceReply(tid, interval, leechers, seeders, bytes(data[20:usable]), ipv6)
    if action == ACTION_SCRAPE:
        count = (len(data) - 8) // 12
        stats = tuple(_TRIPLE.unpack_from(data, 8 + 12 * i) for i in range(count))
        return ScrapeReply(tid, stats)
    if action == ACTION_ERROR:
        return ErrorReply(tid, bytes(data[8:]).decode("utf-8", "replace"))
    raise UdpPacketError(f"unknown response action {action}")
