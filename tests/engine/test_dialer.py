"""The dialer's candidate queue stays bounded however many addresses a swarm tells it."""

from __future__ import annotations

from swarmhub.engine.schedule import Dialer


def _addr(i: int) -> tuple[str, int]:
    return (f"10.0.{i >> 8}.{i & 255}", 6881)


def test_candidates_keep_the_newest_up_to_the_bound() -> None:
    d = Dialer([])
    d.MAX_CANDIDATES = 3
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
    assert len(d.candidates) == Dialer.MAX_CANDIDATES
    assert d.candidates[-1] == _addr(9999)
