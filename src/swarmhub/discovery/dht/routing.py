"""The routing table: k-buckets over the 160-bit id space, a pure data structure (BEP 5).

No sockets and no clock: every method that cares about time takes ``now``. The table
starts as one bucket covering the whole space; a full bucket splits only when it covers
our own id, so we know our neighbourhood in detail and the far reaches coarsely.

Node health follows BEP 5: a node is *good* if it answered us within the last 15 minutes
(or answered once and queried us within 15 minutes), *questionable* when that lapses, and
*bad* after ``max_fails`` queries in a row failed. A new node for a full bucket takes a
bad node's place, else waits in the bucket's replacement cache (most recent first) and
:meth:`RoutingTable.ping_candidate` names the questionable node to ping: the caller pings
it and reports :meth:`failed` or :meth:`heard_from`, which evicts or keeps it. A bucket
nobody touched for 15 minutes is *stale*: :meth:`refresh_targets` returns one random id
inside each, for the caller to look up.

One entry per IP address and port: a second id claiming an address we already hold is
ignored (cheap defence against id spoofing), unless the holder went bad.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from swarmhub.discovery.dht.nodeid import ID_BITS

__all__ = ["Bucket", "K", "NodeEntry", "RoutingTable"]

Addr = tuple[str, int]

K = 8
GOOD_FOR = 15 * 60.0
REFRESH_AFTER = 15 * 60.0


@dataclass(slots=True)
class NodeEntry:
    id: bytes
    addr: Addr
    last_response: float | None = None
    last_query: float | None = None
    fails: int = 0

    def is_good(self, now: float) -> bool:
        if self.fails or self.last_response is None:
            return False
        if now - self.last_response < GOOD_FOR:
            return True
        return self.last_query is not None and now - self.last_query < GOOD_FOR


@dataclass(slots=True)
class Bucket:
    """Ids in ``[lo, hi)``; ``nodes`` and ``replacements`` keyed by id, oldest first."""

    lo: int
    hi: int
    nodes: OrderedDict[bytes, NodeEntry]
    replacements: OrderedDict[bytes, NodeEntry]
    last_changed: float

    def covers(self, n: int) -> bool:
        return self.lo <= n < self.hi


class RoutingTable:
    """k-buckets around ``own_id``. ``max_fails`` failed queries make a node bad."""

    def __init__(self, own_id: bytes, *, k: int = K, max_fails: int = 2,
                 now: float = 0.0) -> None:
        self.own_id = own_id
        self.k = k
        self.max_fails = max_fails
        self._own = int.from_bytes(own_id, "big")
        self.buckets: list[Bucket] = [
            Bucket(0, 1 << ID_BITS, OrderedDict(), OrderedDict(), now)]
        self._by_addr: dict[Addr, bytes] = {}

    # -- queries -----------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(b.nodes) for b in self.buckets)

    def __iter__(self) -> Iterator[NodeEntry]:
        for b in self.buckets:
            yield from b.nodes.values()

    def bucket_for(self, node_id: bytes) -> Bucket:
        n = int.from_bytes(node_id, "big")
        lo, hi = 0, len(self.buckets)
        while lo < hi:  # buckets are sorted by range
            mid = (lo + hi) // 2
            b = self.buckets[mid]
            if n < b.lo:
                hi = mid
            elif n >= b.hi:
                lo = mid + 1
            else:
                return b
        raise AssertionError("buckets do not cover the id space")

    def id_at(self, addr: Addr) -> bytes | None:
        """The id of the table's node at ``addr``, if any."""
        return self._by_addr.get(addr)

    def get(self, node_id: bytes) -> NodeEntry | None:
        return self.bucket_for(node_id).nodes.get(node_id)

    def closest(self, target: bytes, count: int | None = None, *,
                verified: bool = False) -> list[NodeEntry]:
        """Up to ``count`` (default k) nodes nearest ``target`` that are not bad, nearest
        first (a node that failed once is asked again: one lost datagram is not death).
        ``verified``: only nodes that answered us at least once (what we hand to others,
        so a spoofed query cannot make us advertise its victim)."""
        t = int.from_bytes(target, "big")
        nodes = [e for e in self if e.fails < self.max_fails
                 and (not verified or e.last_response is not None)]
        nodes.sort(key=lambda e: int.from_bytes(e.id, "big") ^ t)
        return nodes[:count or self.k]

    def ping_candidate(self, node_id: bytes, now: float) -> NodeEntry | None:
        """The least recently seen questionable node in ``node_id``'s full bucket."""
        b = self.bucket_for(node_id)
        if len(b.nodes) < self.k:
            return None
        for e in b.nodes.values():
            if not e.is_good(now):
                return e
        return None

    def refresh_targets(self, now: float, rng: random.Random,
                        after: float = REFRESH_AFTER) -> list[bytes]:
        """A random id inside every bucket unchanged for ``after`` seconds."""
        out = []
        for b in self.buckets:
            if now - b.last_changed >= after:
                out.append(rng.randrange(b.lo, b.hi).to_bytes(20, "big"))
                b.last_changed = now  # one refresh per period, answered or not
        return out

    def sizes(self) -> list[tuple[int, int, int]]:
        """``(prefix bits, nodes, replacements)`` per bucket, for ``dht status``."""
        return [(ID_BITS - (b.hi - b.lo).bit_length() + 1, len(b.nodes), len(b.replacements))
                for b in self.buckets]

    # -- events ------------------------------------------------------------------------

    def heard_from(self, node_id: bytes, addr: Addr, now: float, *,
                   response: bool) -> bool:
        """A node answered us (``response``) or queried us; returns whether it is in the
        table afterwards (not counting the replacement cache)."""
        if node_id == self.own_id or len(node_id) != 20:
            return False
        holder = self._by_addr.get(addr)
        if holder is not None and holder != node_id:
            old = self.get(holder)
            if old is not None and old.fails < self.max_fails:
                return False  # an address keeps its id while it is healthy
            self.remove(holder)
        b = self.bucket_for(node_id)
        e = b.nodes.get(node_id)
        if e is not None:
            if e.addr != addr:
                return False  # an id moving address: ignore until the old one fails
            self._touch(e, now, response)
            b.nodes.move_to_end(node_id)
            b.last_changed = now
            return True
        e = NodeEntry(node_id, addr)
        self._touch(e, now, response)
        while True:
            if len(b.nodes) < self.k:
                b.nodes[node_id] = e
                self._by_addr[addr] = node_id
                b.last_changed = now
                b.replacements.pop(node_id, None)
                return True
            bad = next((x for x in b.nodes.values() if x.fails >= self.max_fails), None)
            if bad is not None:
                self.remove(bad.id)
                continue
            if b.covers(self._own) and b.hi - b.lo > 1:
                self._split(b)
                b = self.bucket_for(node_id)
                continue
            if response:  # only nodes that answered us are worth waiting for
                b.replacements.pop(node_id, None)
                b.replacements[node_id] = e
                while len(b.replacements) > self.k:
                    b.replacements.popitem(last=False)
            return False

    def failed(self, node_id: bytes) -> None:
        """A query to ``node_id`` timed out; a node failing ``max_fails`` times in a row is
        replaced at once when the bucket has a replacement waiting. A node that never
        answered at all (it only queried us, perhaps from a spoofed address) goes at its
        first failure, so unverified nodes cannot crowd out real ones."""
        b = self.bucket_for(node_id)
        e = b.nodes.get(node_id)
        if e is None:
            b.replacements.pop(node_id, None)
            return
        if e.last_response is None:
            self.remove(node_id)
            return
        e.fails += 1
        if e.fails >= self.max_fails and b.replacements:
            self.remove(node_id)

    def remove(self, node_id: bytes) -> None:
        b = self.bucket_for(node_id)
        e = b.nodes.pop(node_id, None)
        if e is None:
            return
        self._by_addr.pop(e.addr, None)
        if b.replacements:
            _, r = b.replacements.popitem(last=True)  # most recently seen first
            b.nodes[r.id] = r
            self._by_addr[r.addr] = r.id

    def _touch(self, e: NodeEntry, now: float, response: bool) -> None:
        if response:
            e.last_response = now
            e.fails = 0
        else:
            e.last_query = now

    def _split(self, b: Bucket) -> None:
        mid = (b.lo + b.hi) // 2
        low = Bucket(b.lo, mid, OrderedDict(), OrderedDict(), b.last_changed)
        high = Bucket(mid, b.hi, OrderedDict(), OrderedDict(), b.last_changed)
        for src, attr in ((b.nodes, "nodes"), (b.replacements, "replacements")):
            for nid, e in src.items():
                side = low if int.from_bytes(nid, "big") < mid else high
                getattr(side, attr)[nid] = e
        i = self.buckets.index(b)
        self.buckets[i:i + 1] = [low, high]

    def check_invariant(self) -> None:
        """Buckets tile the space in order, each holds at most k nodes of its range, and
        the address index matches (tests call this after every step)."""
        assert self.buckets[0].lo == 0 and self.buckets[-1].hi == 1 << ID_BITS
        seen = {}
        for a, b in zip(self.buckets, self.buckets[1:], strict=False):
            assert a.hi == b.lo
        for b in self.buckets:
            assert len(b.nodes) <= self.k and len(b.replacements) <= self.k
            for nid, e in b.nodes.items():
                assert b.covers(int.from_bytes(nid, "big")) and e.id == nid
                seen[e.addr] = nid
        assert seen == self._by_addr, "address index out of step"


