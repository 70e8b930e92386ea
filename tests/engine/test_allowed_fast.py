"""BEP 6 Allowed Fast: the canonical set, and both sides in the sans-IO core with a
stepped clock (no sockets, no sleeps).

Receiving: a peer that chokes us but allows pieces gets requests for those only, and a
Reject of one while choked ends asking for it. Sending: a starting peer's first
Interested gets the canonical set of its address; we serve requests for those pieces while
choking it, one piece's bytes each, and reject the rest.
"""

from __future__ import annotations

import random

import pytest
from test_swarm import PIECE, QUIET, join, sent

from swarmhub.engine.allowedfast import allowed_fast_set
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.settings import ConfigError, Settings
from swarmhub.wire import messages as m

INFO_HASH = bytes.fromhex("aa" * 20)


# -- the canonical algorithm ------------------------------------------------------------------


def test_the_set_matches_bep6s_published_examples() -> None:
    """BEP 6's example: 1313 pieces, info hash aa..aa, peer 80.4.4.200."""
    assert allowed_fast_set("80.4.4.200", INFO_HASH, 1313, 7) == [
        1059, 431, 808, 1217, 287, 376, 1188]
    assert allowed_fast_set("80.4.4.200", INFO_HASH, 1313, 9) == [
        1059, 431, 808, 1217, 287, 376, 1188, 353, 508]


def test_the_set_is_per_slash_24_and_grows_by_extension() -> None:
    ours = allowed_fast_set("80.4.4.200", INFO_HASH, 1313, 9)
    assert allowed_fast_set("80.4.4.1", INFO_HASH, 1313, 9) == ours  # same /24
    assert allowed_fast_set("::ffff:80.4.4.7", INFO_HASH, 1313, 9) == ours  # v4-mapped
    assert allowed_fast_set("80.4.5.200", INFO_HASH, 1313, 9) != ours
    assert allowed_fast_set("80.4.4.200", b"\xbb" * 20, 1313, 9) != ours
    assert allowed_fast_set("80.4.4.200", INFO_HASH, 1313, 20)[:9] == ours
    assert allowed_fast_set("80.4.4.200", INFO_HASH, 8, 10) == list(range(8))  # k >= n
    assert allowed_fast_set("80.4.4.200", INFO_HASH, 1313, 0) == []
    assert allowed_fast_set("2001:db8::1", INFO_HASH, 1313, 5) == []  # no IPv6 rule
    many = allowed_fast_set("10.0.0.1", INFO_HASH, 40, 39)  # repeats skipped, ends
    assert len(many) == len(set(many)) == 39


# -- receiving: requests while choked -----------------------------------------------------------


def leecher(pieces: int = 8) -> Swarm:
    return Swarm(pieces, PIECE, pieces * PIECE, QUIET, rng=random.Random(7), now=0.0,
                 info_hash=INFO_HASH)


def test_a_choking_peer_gets_requests_only_for_the_pieces_it_allows() -> None:
    s = leecher()
    join(s, "seed", has_all=True)
    acts = s.take()
    assert sent(acts, "seed", m.Interested) and not sent(acts, "seed", m.Request)
    s.message("seed", m.AllowedFast(5), 1.0)
    reqs = sent(s.take(), "seed", m.Request)
    assert reqs == [m.Request(5, 0, BLOCK_SIZE), m.Request(5, BLOCK_SIZE, BLOCK_SIZE)]
    s.tick(2.0)  # the housekeeping refill asks for nothing else while choked
    assert not sent(s.take(), "seed", m.Request)
    for req in reqs:  # its blocks arrive while it still chokes us
        assert isinstance(req, m.Request)
        assert s.block("seed", req.index, req.begin, req.length, 3.0)
    s.take()
    s.piece_verified(5, True, 3.0)
    s.tick(4.0)
    assert not sent(s.take(), "seed", m.Request)  # piece 5 is ours: nothing allowed left
    s.message("seed", m.Unchoke(), 5.0)
    assert {r.index for r in sent(s.take(), "seed", m.Request)} - {5}  # unchoked: all


def test_a_reject_while_choked_ends_requests_for_that_allowed_piece() -> None:
    s = leecher()
    join(s, "seed", has_all=True)
    s.message("seed", m.AllowedFast(2), 1.0)
    s.message("seed", m.AllowedFast(6), 1.0)
    reqs = sent(s.take(), "seed", m.Request)
    assert {r.index for r in reqs} == {2, 6}
    for r in reqs:
        if r.index == 2:
            s.message("seed", m.RejectRequest(r.index, r.begin, r.length), 2.0)
    s.tick(3.0)
    assert not {r.index for r in sent(s.take(), "seed", m.Request)} & {2}


def test_allowed_pieces_the_peer_lacks_or_without_fast_are_not_requested() -> None:
    s = leecher()
    join(s, "half")
    for i in range(4):
        s.message("half", m.Have(i), 0.0)
    s.take()
    s.message("half", m.AllowedFast(6), 1.0)  # BEP 6: allowed does not mean it has it
    assert not sent(s.take(), "half", m.Request)
    s.message("half", m.Have(6), 2.0)
    assert [r.index for r in sent(s.take(), "half", m.Request)] == [6, 6]


# -- sending: the set we grant, and serving it while choking -----------------------------------


def seeder(k: int = 5, pieces: int = 64) -> Swarm:
    settings = QUIET.replace(unchoke_slots=0, allowed_fast_set_size=k)
    return Swarm(pieces, PIECE, pieces * PIECE, settings, rng=random.Random(7), now=0.0,
                 have=b"\x01" * pieces, info_hash=INFO_HASH)


def host_of(s: Swarm, name: str) -> str:
    return s.peer(name).addr[0]


def test_a_starting_peer_gets_the_canonical_set_on_its_first_interested() -> None:
    s = seeder()
    join(s, "new")
    s.message("new", m.HaveNone(), 0.0)
    s.take()
    s.message("new", m.Interested(), 1.0)
    acts = s.take()
    assert not sent(acts, "new", m.Unchoke)  # no unchoke slots: it stays choked
    want = allowed_fast_set(host_of(s, "new"), INFO_HASH, 64, 5)
    assert [a.index for a in sent(acts, "new", m.AllowedFast)] == want
    s.message("new", m.NotInterested(), 2.0)
    s.message("new", m.Interested(), 3.0)
    assert not sent(s.take(), "new", m.AllowedFast)  # once per connection
    assert s.churn()["allowed_fast"] == 5  # what get --json and the lab's trace show


@pytest.mark.parametrize("case", ["k=0", "has k pieces", "no fast extension"])
def test_no_set_for_a_peer_that_is_not_starting_or_when_off(case: str) -> None:
    s = seeder(k=0 if case == "k=0" else 5)
    join(s, "p", fast=case != "no fast extension")
    if case == "has k pieces":
        for i in range(5):
            s.message("p", m.Have(i), 0.0)
    s.message("p", m.Interested(), 1.0)
    assert not sent(s.take(), "p", m.AllowedFast)


def test_requests_while_choking_are_served_only_within_the_set_and_its_budget() -> None:
    s = seeder()
    join(s, "new")
    s.message("new", m.HaveNone(), 0.0)
    s.message("new", m.Interested(), 0.0)
    s.take()
    allowed = allowed_fast_set(host_of(s, "new"), INFO_HASH, 64, 5)
    other = next(i for i in range(64) if i not in allowed)
    piece = [m.Request(allowed[0], b, BLOCK_SIZE) for b in (0, BLOCK_SIZE)]
    for r in [*piece, m.Request(other, 0, BLOCK_SIZE)]:
        s.message("new", r, 1.0)
    acts = s.take()
    assert list(s.peer("new").incoming) == piece  # the allowed piece is served
    assert sent(acts, "new", m.RejectRequest) == [m.RejectRequest(other, 0, BLOCK_SIZE)]
    s.blocks_sent("new", [s.peer("new").incoming.popleft() for _ in piece], PIECE, 2.0)
    s.take()
    for r in piece:  # the same piece again: its budget (one piece) is spent
        s.message("new", r, 3.0)
    rejected = sent(s.take(), "new", m.RejectRequest)
    assert rejected == [m.RejectRequest(r.index, r.begin, r.length) for r in piece]
    assert not s.peer("new").incoming


def test_a_choke_keeps_requests_for_allowed_pieces_and_rejects_the_rest() -> None:
    s = Swarm(64, PIECE, 64 * PIECE, QUIET.replace(allowed_fast_set_size=5),
              rng=random.Random(7), now=0.0, have=b"\x01" * 64, info_hash=INFO_HASH)
    join(s, "new")
    s.message("new", m.HaveNone(), 0.0)
    s.message("new", m.Interested(), 0.0)  # a free slot: unchoked at once
    assert sent(s.take(), "new", m.Unchoke)
    allowed = allowed_fast_set(host_of(s, "new"), INFO_HASH, 64, 5)
    other = next(i for i in range(64) if i not in allowed)
    keep = m.Request(allowed[1], 0, BLOCK_SIZE)
    drop = m.Request(other, 0, BLOCK_SIZE)
    s.message("new", drop, 1.0)
    s.message("new", keep, 1.0)
    s.take()
    s._choke_peer(s.peer("new"), 2.0)
    acts = s.take()
    assert sent(acts, "new", m.Choke)
    assert sent(acts, "new", m.RejectRequest) == [m.RejectRequest(other, 0, BLOCK_SIZE)]
    assert list(s.peer("new").incoming) == [keep]


def test_the_setting_is_documented_and_checked() -> None:
    assert Settings().allowed_fast_set_size == 0  # off: lab simulate was no better
    assert any(row[0] == "allowed_fast_set_size" for row in Settings.describe())
    with pytest.raises(ConfigError):
        Settings.from_mapping({"allowed_fast_set_size": -1})


def test_no_unchoke_slots_means_nobody_is_unchoked_not_even_a_laggard() -> None:
    """``unchoke_slots=0``: only allowed-fast pieces leave us (no optimistic unchoke, no
    laggard bootstrap, no idle-slot reuse), the seeder the interop tests need."""
    s = seeder()
    join(s, "new")
    s.message("new", m.HaveNone(), 0.0)
    s.message("new", m.Interested(), 0.0)
    acts = s.take()
    for t in range(1, 40):
        s.tick(float(t))
        acts += s.take()
    assert not sent(acts, "new", m.Unchoke)
