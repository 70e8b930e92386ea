"""The hub's count of gets between their file info and their announce (sans-IO)."""

from __future__ import annotations

from swarmhub.hub.pending import PendingGets

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


def test_each_get_sees_the_others_until_they_announce() -> None:
    p = PendingGets(ttl=5.0)
    assert p.arrive("f", A, 0.0) == 0  # alone
    assert p.arrive("f", B, 0.1) == 1
    assert p.arrive("f", A, 0.2) == 1  # asking again is not a second get
    assert p.arrive("g", C, 0.2) == 0  # per file
    p.announced("f", A)
    assert p.arrive("f", C, 0.3) == 1  # B only
    p.announced("f", B)
    p.announced("f", C)
    p.announced("f", C)  # twice, or never pending: nothing happens
    assert p.arrive("f", A, 0.4) == 0


def test_a_get_that_never_announces_stops_counting_after_the_ttl() -> None:
    p = PendingGets(ttl=5.0)
    p.arrive("f", A, 0.0)
    assert p.arrive("f", B, 4.9) == 1
    assert p.arrive("f", C, 5.0) == 1  # A expired; B still counts


def test_the_count_per_file_is_capped() -> None:
    p = PendingGets(ttl=5.0, cap=2)
    for i in range(5):
        p.arrive("f", bytes([i]) * 20, 0.0)
    assert p.arrive("f", A, 0.0) == 2  # crowded either way: no more kept


def test_others_counts_without_joining() -> None:
    """What an announce adds to the tracker's leechers: the other gets on their way."""
    p = PendingGets(ttl=5.0)
    assert p.others("f", A, 0.0) == 0
    p.arrive("f", A, 0.0)
    p.arrive("f", B, 0.1)
    assert p.others("f", A, 0.2) == 1  # B; A is the one asking
    assert p.others("f", C, 0.2) == 2  # not pending itself: both
    assert p.others("f", C, 5.05) == 1  # A expired
    assert p.arrive("f", C, 5.06) == 1  # B: asking did not make C pending
