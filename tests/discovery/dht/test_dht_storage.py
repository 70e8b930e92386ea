"""Tokens rotate and expire, the peer store stays bounded, the limiter throttles."""

from __future__ import annotations

import random

from swarmhub.discovery.dht.storage import PeerStore, QueryLimiter, Tokens


def test_token_is_valid_for_its_ip_through_one_rotation_only() -> None:
    tok = Tokens(random.Random(1), 0.0)
    t = tok.make("127.0.0.2")
    assert tok.check(t, "127.0.0.2") and not tok.check(t, "127.0.0.3")
    tok.tick(301.0)
    assert tok.check(t, "127.0.0.2")  # previous secret still accepted
    tok.tick(602.0)
    assert not tok.check(t, "127.0.0.2")


def test_token_dies_when_the_node_slept_through_two_rotations() -> None:
    tok = Tokens(random.Random(1), 0.0)
    t = tok.make("127.0.0.2")
    tok.tick(1000.0)
    assert not tok.check(t, "127.0.0.2")


def test_peers_expire_after_thirty_minutes() -> None:
    s = PeerStore()
    rng = random.Random(0)
    s.add(b"h" * 20, ("127.0.0.2", 1), 0.0)
    s.add(b"h" * 20, ("127.0.0.3", 1), 100.0)
    assert len(s.get(b"h" * 20, 1799.0, rng)) == 2
    assert s.get(b"h" * 20, 1801.0, rng) == [("127.0.0.3", 1)]
    assert s.get(b"h" * 20, 1901.0, rng) == [] and s.num_hashes == 0


def test_store_caps_peers_per_hash_and_hashes_in_total() -> None:
    s = PeerStore(max_per_hash=5, max_hashes=3)
    for i in range(20):
        s.add(b"h" * 20, ("127.0.0.2", i + 1), 0.0)
    assert len(s) == 5
    for i in range(10):
        s.add(bytes([i]) * 20, ("127.0.0.2", 1), 0.0)
    assert s.num_hashes == 3 and len(s) == 3
    assert len(s.get(bytes([9]) * 20, 0.0, random.Random(0), limit=50)) == 1


def test_get_returns_a_bounded_sample() -> None:
    s = PeerStore(max_per_hash=500)
    for i in range(200):
        s.add(b"h" * 20, ("127.0.0.2", i + 1), 0.0)
    assert len(s.get(b"h" * 20, 0.0, random.Random(0), limit=50)) == 50


def test_limiter_allows_a_burst_then_the_rate() -> None:
    lim = QueryLimiter(rate=10.0, burst=5.0)
    assert sum(lim.allow("127.0.0.2", 0.0) for _ in range(20)) == 5
    assert lim.allow("127.0.0.3", 0.0)  # another address has its own bucket
    assert sum(lim.allow("127.0.0.2", 1.0) for _ in range(20)) == 5  # refilled to burst
    assert lim.dropped == 30


def test_limiter_forgets_the_oldest_sources() -> None:
    lim = QueryLimiter(max_sources=10)
    for i in range(100):
        lim.allow(f"127.0.1.{i}", 0.0)
    assert len(lim._buckets) == 10


def test_store_caps_peers_in_total_dropping_the_stalest_hash_first() -> None:
    s = PeerStore(max_per_hash=10, max_peers=15)
    for h in range(3):
        for i in range(10):
            s.add(bytes([h]) * 20, ("127.0.0.2", i + 1), float(h))
            assert len(s) <= 15
    rng = random.Random(0)
    assert len(s) == 15 and s.num_hashes == 2
    assert s.get(bytes([0]) * 20, 3.0, rng) == []  # the stalest hash went first
    assert len(s.get(bytes([2]) * 20, 3.0, rng)) == 10
    assert len(s.get(bytes([1]) * 20, 3.0, rng)) == 5
    s.expire(10_000.0)
    assert len(s) == 0 and s.num_hashes == 0
