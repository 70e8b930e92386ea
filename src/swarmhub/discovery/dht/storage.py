"""What a DHT node remembers for others: write tokens, announced peers, query budgets.

All three are pure and bounded, and take ``now`` instead of reading a clock.

- :class:`Tokens`: a token is a hash of the querier's IP and a secret. The secret rotates
  every ``rotate`` seconds and the previous one is still accepted, so a token lives 5 to
  10 minutes (BEP 5) and we store no per-querier state.
- :class:`PeerStore`: announced peers per info hash, each expiring after ``ttl``; at most
  ``max_per_hash`` peers per hash, ``max_hashes`` hashes and ``max_peers`` peers in all
  (the oldest entry goes first), so a flood of announces costs bounded memory.
- :class:`QueryLimiter`: a token bucket per source IP, for at most ``max_sources`` IPs.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections import OrderedDict

__all__ = ["PeerStore", "QueryLimiter", "Tokens"]

Addr = tuple[str, int]


class Tokens:
    def __init__(self, rng: random.Random, now: float, *, rotate: float = 300.0) -> None:
        self._rng = rng
        self.rotate = rotate
        self._secret = rng.randbytes(16)
        self._previous = rng.randbytes(16)
        self._rotated_at = now

    def tick(self, now: float) -> None:
        if now - self._rotated_at >= self.rotate:
            self._previous = self._secret if now - self._rotated_at < 2 * self.rotate \
                else self._rng.randbytes(16)
            self._secret = self._rng.randbytes(16)
            self._rotated_at = now

    def make(self, ip: str) -> bytes:
        return _token(self._secret, ip)

    def check(self, token: bytes, ip: str) -> bool:
        return token in (_token(self._secret, ip), _token(self._previous, ip))


def _token(secret: bytes, ip: str) -> bytes:
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    except OSError:
        packed = ip.encode()
    return hashlib.sha1(secret + packed).digest()[:8]


class PeerStore:
    def __init__(self, *, ttl: float = 30 * 60.0, max_per_hash: int = 200,
                 max_hashes: int = 2000, max_peers: int = 20000) -> None:
        self.ttl = ttl
        self.max_per_hash = max_per_hash
        self.max_hashes = max_hashes
        self.max_peers = max_peers
        self._peers: OrderedDict[bytes, OrderedDict[Addr, float]] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return self._total

    @property
    def num_hashes(self) -> int:
        return len(self._peers)

    def add(self, info_hash: bytes, addr: Addr, now: float) -> None:
        peers = self._peers.get(info_hash)
        if peers is None:
            if len(self._peers) >= self.max_hashes:
                _, gone = self._peers.popitem(last=False)  # the hash least recently announced
                self._total -= len(gone)
            peers = self._peers[info_hash] = OrderedDict()
        self._peers.move_to_end(info_hash)
        if peers.pop(addr, None) is not None:
            self._total -= 1
        peers[addr] = now + self.ttl
        self._total += 1
        while len(peers) > self.max_per_hash:
            peers.popitem(last=False)
            self._total -= 1
        while self._total > self.max_peers:  # oldest peer of the stalest hash
            h, oldest = next(iter(self._peers.items()))
            oldest.popitem(last=False)
            self._total -= 1
            if not oldest:
                del self._peers[h]

    def get(self, info_hash: bytes, now: float, rng: random.Random,
            limit: int = 50) -> list[Addr]:
        """Live peers for ``info_hash``: a random ``limit`` of them (fits one datagram)."""
        peers = self._peers.get(info_hash)
        if not peers:
            return []
        self._expire(info_hash, peers, now)
        live = list(peers)
        return live if len(live) <= limit else rng.sample(live, limit)

    def expire(self, now: float) -> None:
        for h in list(self._peers):
            self._expire(h, self._peers[h], now)

    def _expire(self, h: bytes, peers: OrderedDict[Addr, float], now: float) -> None:
        while peers:
            addr, until = next(iter(peers.items()))
            if until > now:
                break
            del peers[addr]
            self._total -= 1
        if not peers:
            self._peers.pop(h, None)


class QueryLimiter:
    """``rate`` queries/s per IP with bursts of ``burst``; the least recently seen IP is
    forgotten when more than ``max_sources`` are tracked."""

    def __init__(self, *, rate: float = 20.0, burst: float = 50.0,
                 max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.dropped = 0

    def allow(self, ip: str, now: float) -> bool:
        level, at = self._buckets.pop(ip, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        ok = level >= 1.0
        if ok:
            level -= 1.0
        else:
            self.dropped += 1
        self._buckets[ip] = (level, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return ok
