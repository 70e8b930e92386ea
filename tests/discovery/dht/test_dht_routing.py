"""Routing table: insertion, splitting, replacement cache, eviction, refresh."""

from __future__ import annotations

import random

from swarmhub.discovery.dht.routing import GOOD_FOR, RoutingTable


def nid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def addr(n: int) -> tuple[str, int]:
    return (f"127.0.{n // 250}.{n % 250 + 1}", 6881)


OWN = nid(0)  # our id sits at the bottom: buckets split towards it


def test_first_k_nodes_fill_one_bucket_and_the_next_splits_it() -> None:
    t = RoutingTable(OWN)
    for i in range(8):
        assert t.heard_from(nid((1 << 159) + i), addr(i), 0.0, response=True)
    assert len(t.buckets) == 1 and len(t) == 8
    assert t.heard_from(nid(5), addr(100), 0.0, response=True)  # near us: split
    assert len(t.buckets) == 2 and len(t) == 9
    t.check_invariant()


def test_far_bucket_does_not_split_and_keeps_answering_nodes_as_replacements() -> None:
    t = RoutingTable(OWN)
    far = [nid((1 << 159) + i) for i in range(10)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), 0.0, response=True)
    t.heard_from(nid(1), addr(50), 0.0, response=True)
    top = t.bucket_for(far[0])
    assert len(top.nodes) == 8 and list(top.replacements) == far[8:]
    t.check_invariant()


def test_a_node_that_fails_twice_is_replaced_by_the_freshest_replacement() -> None:
    t = RoutingTable(OWN)
    far = [nid((1 << 159) + i) for i in range(10)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), 0.0, response=True)
    t.heard_from(nid(1), addr(50), 0.0, response=True)
    t.failed(far[0])
    assert t.get(far[0]) is not None  # one failure: still there
    t.failed(far[0])
    assert t.get(far[0]) is None and t.get(far[9]) is not None
    t.check_invariant()


def test_bad_node_gives_way_to_a_new_one_without_replacements() -> None:
    t = RoutingTable(OWN)
    far = [nid((1 << 159) + i) for i in range(8)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), 0.0, response=True)
    t.heard_from(nid(1), addr(50), 0.0, response=True)  # split: far bucket is not ours
    t.failed(far[3])
    t.failed(far[3])
    assert t.get(far[3]) is not None  # no replacement waiting: kept, marked bad
    assert t.heard_from(nid((1 << 159) + 99), addr(99), 1.0, response=True)
    assert t.get(far[3]) is None
    t.check_invariant()


def test_questionable_node_is_named_for_a_ping_when_its_bucket_is_full() -> None:
    t = RoutingTable(OWN)
    far = [nid((1 << 159) + i) for i in range(8)]
    for i, f in enumerate(far):
        t.heard_from(f, addr(i), 0.0, response=True)
    t.heard_from(nid(1), addr(50), 0.0, response=True)
    assert t.ping_candidate(far[0], 10.0) is None  # all good
    later = GOOD_FOR + 1
    cand = t.ping_candidate(far[0], later)
    assert cand is not None and cand.id == far[0]  # least recently seen first


def test_an_address_keeps_its_id_while_healthy() -> None:
    t = RoutingTable(OWN)
    assert t.heard_from(nid(7), addr(1), 0.0, response=True)
    assert not t.heard_from(nid(8), addr(1), 0.0, response=True)  # spoofed / moved id
    assert t.get(nid(8)) is None and t.get(nid(7)) is not None
    t.check_invariant()


def test_closest_orders_by_xor_distance_and_skips_failing_nodes() -> None:
    rng = random.Random(3)
    own = rng.randbytes(20)
    t = RoutingTable(own)
    ids = [rng.randbytes(20) for _ in range(300)]
    for i, x in enumerate(ids):
        t.heard_from(x, addr(i), 0.0, response=True)
        t.check_invariant()
    target = rng.randbytes(20)
    got = t.closest(target)
    tint = int.from_bytes(target, "big")
    assert [e.id for e in got] == sorted((e.id for e in t), key=lambda x: int.from_bytes(
        x, "big") ^ tint)[:8]
    t.failed(got[0].id)
    assert got[0].id in [e.id for e in t.closest(target)]  # once: still asked
    t.failed(got[0].id)
    assert got[0].id not in [e.id for e in t.closest(target)]


def test_stale_buckets_yield_one_refresh_target_each_period() -> None:
    t = RoutingTable(OWN, now=0.0)
    for i in range(9):
        t.heard_from(nid((1 << 159) + i) if i < 8 else nid(3), addr(i), 0.0, response=True)
    rng = random.Random(1)
    assert t.refresh_targets(100.0, rng) == []
    targets = t.refresh_targets(16 * 60.0, rng)
    assert len(targets) == len(t.buckets)
    for target, b in zip(targets, t.buckets, strict=True):
        assert b.covers(int.from_bytes(target, "big"))
    assert t.refresh_targets(16 * 60.0 + 1, rng) == []  # refreshed: not again at once


def test_invariant_checker_catches_a_corrupt_address_index() -> None:
    t = RoutingTable(OWN)
    t.heard_from(nid(7), addr(1), 0.0, response=True)
    t._by_addr[addr(2)] = nid(9)
    try:
        t.check_invariant()
    except AssertionError:
        return
    raise AssertionError("the checker missed a corrupt index")


def test_a_node_that_never_answered_goes_at_its_first_failure() -> None:
    t = RoutingTable(OWN)
    assert t.heard_from(nid(7), addr(1), 0.0, response=False)  # it only queried us
    t.failed(nid(7))
    assert t.get(nid(7)) is None
    t.check_invariant()
