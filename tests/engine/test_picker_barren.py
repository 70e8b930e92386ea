"""The picker remembers peers with nothing new to offer, and forgets at the right moments.

A pick that finds no untouched piece the peer has marks the peer *barren* (the next
picks skip the rarest-first walk); every event that could give it something again must
clear that: the peer gets a piece, a piece goes back to untouched, a priority changes.
``check_invariant`` recomputes the claim from scratch after each step.
"""

from __future__ import annotations

import random

from swarmhub.engine.picker import Block, PiecePicker

BS = 16384


def _picker(n: int = 4, blocks: int = 2) -> PiecePicker:
    return PiecePicker(n, blocks * BS, n * blocks * BS, rng=random.Random(1), random_first=0)


def test_a_peer_whose_pieces_are_all_in_progress_gets_them_again_when_one_is_free() -> None:
    p = _picker()
    p.peer_has("a", 0)
    p.peer_has("b", 0)
    p.peer_has("c", 1)  # something untouched elsewhere: not end-game
    got = p.pick("a", 2)  # both blocks of piece 0
    assert {b.index for b in got} == {0}
    assert p.pick("b", 2) == []  # piece 0 is a's: nothing untouched for b
    p.check_invariant()
    assert p.pick("b", 2) == []  # (the remembered answer)
    for block in got:  # a's requests time out: piece 0 is untouched again
        p.request_failed("a", block)
    p.check_invariant()
    assert {b.index for b in p.pick("b", 2)} == {0}
    p.check_invariant()


def test_a_have_for_an_untouched_piece_makes_a_barren_peer_useful() -> None:
    p = _picker()
    p.peer_has("a", 1)
    p.pick("a", 2)
    assert p.pick("a", 2) == []
    p.check_invariant()
    p.peer_has("a", 3)
    p.check_invariant()
    assert [b.index for b in p.pick("a", 2)] == [3, 3]
    p.check_invariant()


def test_a_bitfield_or_a_priority_change_clears_the_mark() -> None:
    p = _picker()
    p.set_piece_priority(2, 0)
    p.peer_has("a", 2)
    assert p.pick("a", 1) == []  # it has only a skipped piece
    p.check_invariant()
    p.set_piece_priority(2, 1)
    p.check_invariant()
    assert p.pick("a", 1) == [Block(2, 0, BS)]
    p.peer_has("c", 0)
    p.pick("c", 2)
    assert p.pick("c", 1) == []
    p.peer_has_bitfield("c", bytes([1, 1, 0, 0]))
    p.check_invariant()
    assert [b.index for b in p.pick("c", 1)] == [1]


def test_a_seed_is_barren_only_while_every_wanted_piece_is_taken() -> None:
    p = _picker(n=2)
    p.peer_has_all("s")
    first = p.pick("s", 4)  # everything
    assert len(first) == 4
    assert p.pick("s", 1) == []  # end-game aside: nothing left untouched
    p.check_invariant()
    p.request_failed("s", first[0])
    p.check_invariant()
    assert p.pick("s", 1) == [first[0]]
