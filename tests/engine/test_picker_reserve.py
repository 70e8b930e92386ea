"""A web seed's pieces are held whole in the picker, with no per-block state.

A lone downloader's web seed reserves every piece of the file; per-block requests made
for each and dropped again when it passed cost ~30 us a piece on the event loop. Peers
still leave a held piece alone (also in end-game), a peer's block for it keeps the rest
with its source, and :meth:`PiecePicker.release` gives back what was not delivered.
``check_invariant`` recomputes every count after each step.
"""

from __future__ import annotations

import random

from swarmhub.engine.picker import PiecePicker

BS = 16384
WS = ("web seed", "http://hub/f/x")


def _picker(n: int = 4, blocks: int = 4) -> PiecePicker:
    return PiecePicker(n, blocks * BS, n * blocks * BS, rng=random.Random(1), random_first=0)


def test_a_reserved_piece_is_held_whole_and_peers_pick_around_it() -> None:
    p = _picker()
    p.peer_has_all("a")
    assert p.reserve(WS, 0) and p.reserve(WS, 1)
    p.check_invariant()
    assert p.outstanding(WS) == []  # no per-block requests for the web seed
    assert p.in_progress(0) and not p.only_requested(0) and p.requesters(0) == set()
    assert not p.reserve(WS, 0)  # held already
    got = p.pick("a", 100)
    assert {b.index for b in got} == {2, 3}
    assert p.in_endgame
    assert p.pick("b", 100) == []  # unknown peer: nothing
    p.peer_has_all("b")
    dups = p.pick("b", 100)  # end-game duplicates: never of the held pieces
    assert dups and {b.index for b in dups} <= {2, 3}
    p.check_invariant()


def test_a_held_piece_that_passes_is_had_and_release_returns_the_rest() -> None:
    p = _picker()
    p.peer_has_all("a")
    for i in range(4):
        assert p.reserve(WS, i)
    assert p.pick("a", 100) == []
    p.piece_passed(0)  # the web seed delivered piece 0
    p.check_invariant()
    p.release(WS)  # it stopped: 1..3 go back to the peers
    p.check_invariant()
    assert not p.in_progress(1) and p.outstanding(WS) == []
    assert {b.index for b in p.pick("a", 100)} == {1, 2, 3}
    p.check_invariant()


def test_a_peers_block_for_a_held_piece_leaves_the_rest_with_its_source() -> None:
    p = _picker()
    p.peer_has_all("a")
    assert p.reserve(WS, 0)
    block = p.block_of(0, BS)
    assert block is not None
    result = p.block_received("a", block)  # sent unasked (a request cancelled too late)
    assert not result.piece_complete and result.cancel_peers == (WS,)
    p.check_invariant()
    assert len(p.outstanding(WS)) == 3  # now per-block requests of the web seed
    assert all(b.index != 0 for b in p.pick("a", 100))
    p.release(WS)  # piece 0 has a block: in progress, its other blocks free again
    p.check_invariant()
    assert {b.begin for b in p.pick("a", 100) if b.index == 0} == {0, 2 * BS, 3 * BS}
    p.check_invariant()


def test_a_failed_check_of_a_held_piece_keeps_it_held() -> None:
    p = _picker()
    p.peer_has_all("a")
    assert p.reserve(WS, 2)
    assert p.piece_failed(2) == set()
    p.check_invariant()
    assert all(b.index != 2 for b in p.pick("a", 100))
    p.release(WS)
    p.check_invariant()
    assert p.pick("a", 100) == [b for b in (p.block_of(2, j * BS) for j in range(4)) if b]
