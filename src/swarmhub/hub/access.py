"""Who may reach a private file's bytes over BitTorrent: peers that proved a live passkey.

The hub has one access rule for every path to a private file: the caller holds a live
credential of a reader. HTTP downloads show a token, the web seed URL and the tracker
announce show a passkey. A peer connecting to the embedded seeder shows neither: the
BitTorrent handshake carries only an info hash and a peer id, which anyone in a swarm
learns. So the seeder admits a private torrent's peer only after that peer announced to
our tracker with a live passkey from the address it connects from, and either

- connects with the peer id it announced with (most clients keep one peer id), or
- is the peer the seeder dialed at the address it announced: the connection's IP and
  the announced listening port. libtorrent sends a fresh random peer id on every
  connection, so for it (and for peers behind one address, as on loopback or a NAT)
  the address it can be reached at is the proof; the hub dials each such peer as soon
  as it announces.

:class:`SwarmAccess` remembers those announces for one announce interval plus the minimum
interval (a client re-announcing a little late keeps its access). Revoking a token forgets
its announces at once and returns the tracker entries they made, so the hub can drop them
from the tracker and close the seeder's connections to those peers. It is sans-IO: every
method takes the time, nothing touches a socket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["SwarmAccess", "TrackerEntry", "normalize_ip"]

#: What the tracker holds for one announcing peer: (info hash, ip, port, peer id).
TrackerEntry = tuple[bytes, str, int, bytes]
#: A proven peer: (file id, ip, peer id).
_Key = tuple[str, str, bytes]


def normalize_ip(text: str) -> str:
    """Canonical text of an address (IPv4-mapped IPv6 -> IPv4); the text itself if not an IP.

    Announces and peer connections must compare equal when they come from one host, and a
    dual-stack socket reports IPv4 peers as ``::ffff:a.b.c.d``.
    """
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(slots=True)
class _Grant:
    token_id: str
    expires: float
    #: The tracker entries this peer made with the token's passkey.
    entries: set[TrackerEntry] = field(default_factory=set)
    #: Where it listens: (connection IP, announced port).
    listen: set[tuple[str, int]] = field(default_factory=set)


class SwarmAccess:
    """Peers (file, ip, peer id) that announced with a live passkey, until ``now + ttl``."""

    def __init__(self, ttl: float = 1800.0 + 60.0, *, max_per_token: int = 256) -> None:
        if ttl <= 0 or max_per_token <= 0:
            raise ValueError("ttl and max_per_token must be positive")
        self.ttl = ttl
        #: Peers one token can have proven at once: announces with ever new peer ids must
        #: not grow the hub's memory (the oldest proof goes first).
        self.max_per_token = max_per_token
        self._grants: dict[_Key, _Grant] = {}
        self._by_token: dict[str, set[_Key]] = {}
        #: (file id, ip, listening port) -> the grant that announced it.
        self._listening: dict[tuple[str, str, int], _Key] = {}

    def record(
        self, *, file_id: str, ip: str, port: int, peer_id: bytes, token_id: str,
        entry: TrackerEntry, now: float,
    ) -> None:
        """A peer announced for ``file_id`` with ``token_id``'s live passkey.

        ``ip`` is the address the announce came from (never a claimed ``ip=``), ``port``
        the listening port it announced.
        """
        ip = normalize_ip(ip)
        key = (file_id, ip, peer_id)
        grant = self._grants.get(key)
        if grant is not None and grant.token_id != token_id:  # now with another's passkey
            self._forget(key)
            grant = None
        if grant is None:
            keys = self._by_token.setdefault(token_id, set())
            if len(keys) >= self.max_per_token:
                self._forget(min(keys, key=lambda k: self._grants[k].expires))
                keys = self._by_token.setdefault(token_id, set())
            grant = self._grants[key] = _Grant(token_id, now + self.ttl)
            keys.add(key)
        grant.expires = now + self.ttl
        grant.entries.add(entry)
        grant.listen.add((ip, port))
        self._listening[(file_id, ip, port)] = key

    def allows(
        self, file_id: str, addr: tuple[str, int], peer_id: bytes, now: float,
        *, outgoing: bool = False,
    ) -> bool:
        """Whether this connection may exchange ``file_id``'s pieces with the seeder now.

        ``outgoing``: the seeder dialed ``addr``, so its port is the peer's listening port.
        """
        ip = normalize_ip(addr[0])
        grant = self._grants.get((file_id, ip, peer_id))
        if grant is None and outgoing:
            key = self._listening.get((file_id, ip, addr[1]))
            grant = None if key is None else self._grants.get(key)
        return grant is not None and grant.expires > now

    def revoke(self, token_id: str) -> list[TrackerEntry]:
        """Forget every peer admitted by ``token_id``; returns their tracker entries."""
        entries: list[TrackerEntry] = []
        for key in list(self._by_token.get(token_id, ())):
            entries += self._forget(key)
        return entries

    def expire(self, now: float) -> int:
        """Drop grants whose peer stopped announcing; returns how many went."""
        stale = [key for key, g in self._grants.items() if g.expires <= now]
        for key in stale:
            self._forget(key)
        return len(stale)

    def _forget(self, key: _Key) -> set[TrackerEntry]:
        grant = self._grants.pop(key)
        keys = self._by_token[grant.token_id]
        keys.discard(key)
        if not keys:
            del self._by_token[grant.token_id]
        for ip, port in grant.listen:
            if self._listening.get((key[0], ip, port)) == key:
                del self._listening[(key[0], ip, port)]
        return grant.entries

    def __len__(self) -> int:
        return len(self._grants)
