"""The dialer's candidate queue stays bounded however many addresses a swarm tells it."""

from __future__ import annotations

from swarmhub.engine.schedule import MAX_CANDIDATES, Dialer


def _addr(i: int) -> tuple[str, int]:
    return (f"10.0.{i >> 8}.{i & 255}", 6881)


def test_candidates_keep_the_newest_up_to_the_bound() -> None:
    d = Dialer([], max_candidates=3)
    d.add([_addr(i) for i in range(5)])
    assert list(d.candidates) == [_addr(2), _addr(3), _addr(4)]
    d.add([_addr(4), _addr(0)])  # one still queued (no change), one dropped earlier (again)
    assert list(d.candidates) == [_addr(3), _addr(4), _addr(0)]
    assert d.next(0.0, set(), room=10) == [_addr(3), _addr(4), _addr(0)]
    assert not d.candidates


def test_the_default_bound_holds_a_thousand_peer_swarm() -> None:
    """Every other peer of a 1,000-peer swarm fits (the bound changes nothing there),
    while a 10,000-peer swarm's addresses do not pile up."""
    d = Dialer([])
    d.add([_addr(i) for i in range(1000)])
    assert len(d.candidates) == 1000
    d.add([_addr(i) for i in range(1000, 10_000)])
    assert len(d.candidates) == MAX_CANDIDATES
    assert d.candidates[-1] == _addr(9999)


def test_retry_times_are_kept_for_direct_peers_only() -> None:
    """A long session dials many tracker/PEX peers: the retry book must not keep one
    entry per address ever dialled (only direct peers are ever requeued)."""
    direct = ("192.0.2.1", 6881)
    d = Dialer([direct])
    d.add([_addr(i) for i in range(500)])
    dialled = d.next(0.0, set(), room=1000)
    assert len(dialled) == 501 and dialled[0] == direct
    assert len(d._retry_at) == 1
    for addr in dialled:
        d.done(addr)
    d.requeue_direct(1.0, set())  # within the retry time: not yet
    assert not d.candidates
    d.requeue_direct(5.0, set())
    assert list(d.candidates) == [direct]


def test_held_hosts_stay_queued_in_order_until_a_call_without_them() -> None:
    d = Dialer([])
    hub = ("10.9.9.9", 6881)
    d.add([hub, _addr(1), ("10.9.9.9", 7000), _addr(2)])
    assert d.next(0.0, set(), room=10, hold=frozenset({"10.9.9.9"})) == [_addr(1), _addr(2)]
    assert list(d.candidates) == [hub, ("10.9.9.9", 7000)]
    d.add([hub])  # already queued: not twice
    assert d.next(0.1, set(), room=10, hold=frozenset({"10.9.9.9"})) == []
    assert d.next(0.2, set(), room=1) == [hub]
    assert list(d.candidates) == [("10.9.9.9", 7000)]


def test_the_queue_keeps_the_address_objects_it_was_given() -> None:
    """One tuple per address, however many dialers queue it (``lab simulate`` shares them
    among 10,000 peers): compiled, an address typed as a tuple is unpacked and packed into
    a new tuple where it is stored (+250 MB at N=3,000)."""
    given = [_addr(i) for i in range(4)]
    d = Dialer([], max_candidates=3)
    d.add(given)
    assert all(a is b for a, b in zip(d.candidates, given[1:], strict=True))
    dialled = d.next(0.0, set(), room=2)
    assert dialled[0] is given[1] and dialled[1] is given[2]
    assert d.candidates[0] is given[3]
