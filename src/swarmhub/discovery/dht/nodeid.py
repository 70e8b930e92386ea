"""Node ids: XOR distance and BEP 42's binding of a node id to its IP address.

BEP 42 makes a node id cost something: its first 21 bits are a CRC32-C of the node's
(masked) external IP and a 3-bit random ``r``, and its last byte is ``r``. A node can then
only sit near a target if it has an IP whose hash lands there, which bounds Sybil attacks.
Addresses on private or loopback networks are exempt (every lab node would collide).
"""

from __future__ import annotations

import ipaddress
import random

__all__ = [
    "ID_BITS",
    "crc32c",
    "distance",
    "is_local",
    "node_id_for_ip",
    "node_id_matches_ip",
    "random_id",
]

ID_BITS = 160

_V4_MASK = bytes((0x03, 0x0F, 0x3F, 0xFF))
_V6_MASK = bytes((0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF))


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32-C (Castagnoli), the checksum BEP 42 names; inputs are 4-8 bytes, so a table
    in Python is fast enough and saves a dependency."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def distance(a: bytes, b: bytes) -> int:
    """Kademlia's XOR metric between two 20-byte ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def random_id(rng: random.Random) -> bytes:
    return rng.getrandbits(ID_BITS).to_bytes(20, "big")


def is_local(ip: str) -> bool:
    """Private, loopback, link-local or otherwise non-global: exempt from BEP 42."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not addr.is_global


def _prefix(ip: str, r: int) -> int:
    packed = ipaddress.ip_address(ip).packed
    if len(packed) == 4:
        masked = bytearray(a & m for a, m in zip(packed, _V4_MASK, strict=True))
    else:
        masked = bytearray(a & m for a, m in zip(packed[:8], _V6_MASK, strict=True))
    masked[0] |= (r & 0x07) << 5
    return crc32c(bytes(masked))


def node_id_for_ip(ip: str, rng: random.Random, r: int | None = None) -> bytes:
    """A BEP 42 node id for external address ``ip`` (``r``: the 3 random bits, or drawn)."""
    if r is None:
        r = rng.randrange(256)
    crc = _prefix(ip, r)
    body = bytearray(rng.getrandbits(ID_BITS).to_bytes(20, "big"))
    body[0] = (crc >> 24) & 0xFF
    body[1] = (crc >> 16) & 0xFF
    body[2] = ((crc >> 8) & 0xF8) | (body[2] & 0x07)
    body[19] = r & 0xFF
    return bytes(body)


def node_id_matches_ip(node_id: bytes, ip: str) -> bool:
    """True when ``node_id`` is a valid BEP 42 id for ``ip`` (always, for local addresses)."""
    if is_local(ip):
        return True
    if len(node_id) != 20:
        return False
    try:
        crc = _prefix(ip, node_id[19])
    except ValueError:
        return False
    return (node_id[0] == (crc >> 24) & 0xFF and node_id[1] == (crc >> 16) & 0xFF
            and (node_id[2] & 0xF8) == ((crc >> 8) & 0xF8))
