"""KRPC, the DHT's wire format (BEP 5), sans-IO: bytes in, one message out, or an error.

A datagram is one bencoded dict: ``t`` (transaction id), ``y`` (``q``uery, ``r``esponse,
``e``rror), then ``q`` + ``a`` (method and arguments), ``r`` (return values) or ``e``
(``[code, message]``). :func:`decode` turns a datagram into one of the frozen message
classes below or raises :class:`KrpcError`; it never lets another exception escape, so a
hostile datagram costs one ``except`` in the driver. A :class:`KrpcError` that carries a
transaction id and ``reply=True`` deserves an error reply (203 for a malformed query, 204
for an unknown method); anything else is dropped silently (never answer garbage: that
would make us an amplifier).

Compact formats: a node is 26 bytes (id, IPv4, port), a peer 6 bytes (IPv4, port). Only
IPv4 is parsed; ``nodes6``/IPv6 values are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError, RemoteProtocolError

__all__ = [
    "ERROR_GENERIC",
    "ERROR_METHOD",
    "ERROR_PROTOCOL",
    "ERROR_SERVER",
    "MAX_DATAGRAM",
    "AnnouncePeer",
    "Error",
    "FindNode",
    "GetPeers",
    "KrpcError",
    "Message",
    "NodeInfo",
    "Ping",
    "Query",
    "Response",
    "decode",
    "encode",
    "pack_nodes",
    "pack_peer",
    "unpack_nodes",
    "unpack_peers",
]

Addr = tuple[str, int]

ERROR_GENERIC = 201
ERROR_SERVER = 202
ERROR_PROTOCOL = 203
ERROR_METHOD = 204

#: Larger datagrams are dropped unread (a full get_peers reply is ~1.5 KB; libtorrent caps
#: its own packets well below this).
MAX_DATAGRAM = 4096
MAX_TID = 16
MAX_NODES = 64
MAX_VALUES = 256
MAX_ERROR_TEXT = 256


class KrpcError(RemoteProtocolError):
    """A datagram we cannot use. ``reply`` says whether an error message is owed."""

    def __init__(self, message: str, *, code: int = ERROR_PROTOCOL, tid: bytes | None = None,
                 reply: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.tid = tid
        self.reply = reply and tid is not None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the network describes it: id and UDP address."""

    id: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class Query:
    """Base of the four queries. ``sender``: the querier's id; ``read_only``: BEP 43."""

    tid: bytes
    sender: bytes
    read_only: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Ping(Query):
    pass


@dataclass(frozen=True, slots=True)
class FindNode(Query):
    target: bytes = b""


@dataclass(frozen=True, slots=True)
class GetPeers(Query):
    info_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class AnnouncePeer(Query):
    """``port`` is already resolved: with ``implied_port`` the caller uses the UDP port."""

    info_hash: bytes = b""
    port: int = 0
    token: bytes = b""
    implied_port: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """Any response; fields a method does not return stay empty. ``ip``: our address as
    the responder saw it (BEP 42)."""

    tid: bytes
    sender: bytes
    nodes: tuple[NodeInfo, ...] = ()
    values: tuple[Addr, ...] = ()
    token: bytes | None = None
    ip: Addr | None = None


@dataclass(frozen=True, slots=True)
class Error:
    tid: bytes
    code: int
    message: str


Message = Query | Response | Error

_METHODS = {b"ping": Ping, b"find_node": FindNode, b"get_peers": GetPeers,
            b"announce_peer": AnnouncePeer}
_NAMES = {Ping: b"ping", FindNode: b"find_node", GetPeers: b"get_peers",
          AnnouncePeer: b"announce_peer"}


# -- compact formats ---------------------------------------------------------------------

def pack_peer(addr: Addr) -> bytes:
    return socket.inet_aton(addr[0]) + struct.pack(">H", addr[1])


def pack_nodes(nodes: list[NodeInfo] | tuple[NodeInfo, ...]) -> bytes:
    return b"".join(n.id + pack_peer(n.addr) for n in nodes
                    if len(n.id) == 20 and _is_v4(n.addr[0]))


def unpack_nodes(data: bytes) -> tuple[NodeInfo, ...]:
    """Compact node info; port-0 entries are skipped, a ragged tail is an error."""
    if len(data) % 26:
        raise KrpcError(f"compact nodes of {len(data)} bytes (not a multiple of 26)")
    out = []
    for i in range(0, min(len(data), 26 * MAX_NODES), 26):
        ip = socket.inet_ntoa(data[i + 20:i + 24])
        port = (data[i + 24] << 8) | data[i + 25]
        if port:
            out.append(NodeInfo(bytes(data[i:i + 20]), (ip, port)))
    return tuple(out)


def unpack_peers(values: Any) -> tuple[Addr, ...]:
    if not isinstance(values, list):
        raise KrpcError("'values' is not a list")
    out = []
    for v in values[:MAX_VALUES]:
        if isinstance(v, bytes) and len(v) == 6:
            port = (v[4] << 8) | v[5]
            if port:
                out.append((socket.inet_ntoa(v[:4]), port))
    return tuple(out)


def _is_v4(ip: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address)
    except ValueError:
        return False


# -- encoding -----------------------------------------------------------------------------

def encode(msg: Message, *, our_id: bytes = b"", version: bytes | None = None,
           read_only: bool = False) -> bytes:
    """Bytes for ``msg``. Queries and responses carry ``our_id``, not their ``sender``
    field (which is only meaningful for decoded messages)."""
    d: dict[bytes, Any] = {b"t": msg.tid}
    if version:
        d[b"v"] = version
    if isinstance(msg, Error):
        d[b"y"] = b"e"
        d[b"e"] = [msg.code, msg.message.encode()]
    elif isinstance(msg, Response):
        d[b"y"] = b"r"
        r: dict[bytes, Any] = {b"id": our_id}
        if msg.nodes:
            r[b"nodes"] = pack_nodes(msg.nodes)
        if msg.values:
            r[b"values"] = [pack_peer(a) for a in msg.values if _is_v4(a[0])]
        if msg.token is not None:
            r[b"token"] = msg.token
        d[b"r"] = r
        if msg.ip is not None and _is_v4(msg.ip[0]):
            d[b"ip"] = pack_peer(msg.ip)
    else:
        d[b"y"] = b"q"
        d[b"q"] = _NAMES[type(msg)]
        a: dict[bytes, Any] = {b"id": our_id}
        if isinstance(msg, FindNode):
            a[b"target"] = msg.target
        elif isinstance(msg, GetPeers):
            a[b"info_hash"] = msg.info_hash
        elif isinstance(msg, AnnouncePeer):
            a[b"info_hash"] = msg.info_hash
            a[b"port"] = msg.port
            a[b"token"] = msg.token
            a[b"implied_port"] = int(msg.implied_port)
        d[b"a"] = a
        if read_only:
            d[b"ro"] = 1
    return bencode(d)


# -- decoding -----------------------------------------------------------------------------

def decode(data: bytes, source: Addr) -> Message:
    """Parse one datagram from ``source``; raise :class:`KrpcError` for anything unusable."""
    if len(data) > MAX_DATAGRAM:
        raise KrpcError(f"datagram of {len(data)} bytes (limit {MAX_DATAGRAM})")
    try:
        d = bdecode(data)
    except BencodeError as exc:
        raise KrpcError(str(exc)) from None
    if not isinstance(d, dict):
        raise KrpcError("a KRPC message must be a dict")
    tid = d.get(b"t")
    if not isinstance(tid, bytes) or not 0 < len(tid) <= MAX_TID:
        raise KrpcError("missing or oversized transaction id")
    kind = d.get(b"y")
    try:
        if kind == b"q":
            return _query(d, tid, source)
        if kind == b"r":
            return _response(d, tid)
        if kind == b"e":
            return _error(d, tid)
    except KrpcError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:  # defensive
        raise KrpcError(f"malformed message: {exc}", tid=tid, reply=kind == b"q") from None
    raise KrpcError(f"unknown message type {kind!r}", tid=tid)


def _id(d: Any, tid: bytes, reply: bool) -> bytes:
    if not isinstance(d, dict):
        raise KrpcError("arguments are not a dict", tid=tid, reply=reply)
    node_id = d.get(b"id")
    if not isinstance(node_id, bytes) or len(node_id) != 20:
        raise KrpcError("missing or malformed node id", tid=tid, reply=reply)
    return node_id


def _hash20(a: dict[bytes, Any], key: bytes, tid: bytes) -> bytes:
    value = a.get(key)
    if not isinstance(value, bytes) or len(value) != 20:
        raise KrpcError(f"missing or malformed {key.decode()}", tid=tid, reply=True)
    return value


def _query(d: dict[bytes, Any], tid: bytes, source: Addr) -> Query:
    method = d.get(b"q")
    a: Any = d.get(b"a")
    sender = _id(a, tid, True)
    ro = d.get(b"ro") == 1
    cls = _METHODS.get(method) if isinstance(method, bytes) else None
    if cls is None:
        raise KrpcError(f"unknown method {method!r}", code=ERROR_METHOD, tid=tid, reply=True)
    if cls is Ping:
        return Ping(tid, sender, read_only=ro)
    if cls is FindNode:
        return FindNode(tid, sender, _hash20(a, b"target", tid), read_only=ro)
    if cls is GetPeers:
        return GetPeers(tid, sender, _hash20(a, b"info_hash", tid), read_only=ro)
    info_hash = _hash20(a, b"info_hash", tid)
    token = a.get(b"token")
    if not isinstance(token, bytes) or not 0 < len(token) <= 64:
        raise KrpcError("missing or malformed token", tid=tid, reply=True)
    implied = a.get(b"implied_port", 0) == 1
    port = a.get(b"port")
    if implied:
        port = source[1]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise KrpcError("missing or invalid port", tid=tid, reply=True)
    return AnnouncePeer(tid, sender, info_hash, port, token, implied, read_only=ro)


def _response(d: dict[bytes, Any], tid: bytes) -> Response:
    r: Any = d.get(b"r")
    sender = _id(r, tid, False)
    nodes: tuple[NodeInfo, ...] = ()
    raw = r.get(b"nodes")
    if raw is not None:
        if not isinstance(raw, bytes):
            raise KrpcError("'nodes' is not a string", tid=tid)
        nodes = unpack_nodes(raw)
    values: tuple[Addr, ...] = ()
    if b"values" in r:
        values = unpack_peers(r[b"values"])
    token = r.get(b"token")
    if token is not None and (not isinstance(token, bytes) or len(token) > 64):
        raise KrpcError("malformed token", tid=tid)
    ip: Addr | None = None
    raw_ip = d.get(b"ip")
    if isinstance(raw_ip, bytes) and len(raw_ip) == 6:
        ip = (socket.inet_ntoa(raw_ip[:4]), (raw_ip[4] << 8) | raw_ip[5])
    return Response(tid, sender, nodes, values, token, ip)


def _error(d: dict[bytes, Any], tid: bytes) -> Error:
    e = d.get(b"e")
    if not isinstance(e, list) or len(e) < 2 or not isinstance(e[0], int) \
            or not isinstance(e[1], bytes):
        raise KrpcError("malformed error message", tid=tid)
    return Error(tid, e[0], e[1][:MAX_ERROR_TEXT].decode("utf-8", "replace"))
