"""BEP 6 Allowed Fast: the canonical set, and what each side keeps about it.

A peer may tell another "ask me for piece i even while I choke you" (``AllowedFast``);
the set it grants is computed so that every peer behind one /24 gets the same pieces,
and a larger set extends a smaller one. Sans-IO: plain functions over addresses and
counters, no clock.

Receiving: :class:`PeerState` ``allowed_in`` holds the pieces a peer granted us; the swarm
core asks it for blocks of those while it chokes us (see ``Swarm._fill``) and drops a
piece it rejects (BEP 6: never assume the set is honoured).

Sending: :func:`allowed_fast_set` for the peer's address; ``allowed_out`` maps each piece
we granted to the bytes we still serve of it while choking (one piece's worth each, so
the set cannot become a free unchoke; libtorrent counts requests per piece the same way).
"""

from __future__ import annotations

import hashlib
import ipaddress

__all__ = ["allowed_fast_set", "grant"]


def allowed_fast_set(ip: str, info_hash: bytes, num_pieces: int, k: int) -> list[int]:
    """BEP 6's canonical allowed-fast set: ``k`` distinct piece indices for the peer at
    ``ip`` (IPv4; an IPv4-mapped IPv6 address counts as its IPv4 one), in order.

    ``x = (ip & 0xFFFFFF00) ++ info_hash``; repeatedly ``x = SHA1(x)`` and take its five
    big-endian 32-bit words modulo ``num_pieces``, skipping repeats. Empty for ``k <= 0``
    or a torrent without pieces; every piece when ``k >= num_pieces``. BEP 6 has no
    provision for IPv6: there the set is empty (we send none; libtorrent hashes the whole
    address, which no other client can check either).
    """
    if k <= 0 or num_pieces <= 0:
        return []
    if k >= num_pieces:
        return list(range(num_pieces))
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return []
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return []
        addr = addr.ipv4_mapped
    x = (int(addr) & 0xFFFFFF00).to_bytes(4, "big") + info_hash
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < k:  # ends: k < num_pieces distinct values, SHA-1 output spreads
        x = hashlib.sha1(x).digest()
        for j in range(0, 20, 4):
            index = int.from_bytes(x[j:j + 4], "big") % num_pieces
            if index not in seen:
                seen.add(index)
                out.append(index)
                if len(out) == k:
                    break
    return out


def grant(ip: str, info_hash: bytes, num_pieces: int, k: int,
          peer_has: bytes | bytearray, piece_size: int) -> dict[int, int]:
    """The pieces to announce as AllowedFast to a peer at ``ip`` that holds ``peer_has``
    (one 0/1 byte per piece), each with its byte budget (``piece_size``; the last piece's
    shorter size is an upper bound there). The peer's own pieces are left out (no point
    offering them; libtorrent does the same)."""
    return {i: piece_size for i in allowed_fast_set(ip, info_hash, num_pieces, k)
            if not peer_has[i]}
