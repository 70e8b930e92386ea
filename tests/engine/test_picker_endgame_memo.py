"""The picker remembers peers whose end-game scan found nothing, and forgets in time.

In end-game every block received asks the picker for more; with one peer holding every
outstanding request the scan finds nothing each time, so it is skipped until something
could give that peer a block again: another peer requests a block, a request goes back
to the pool, the peer gets a piece, a priority changes. ``check_invariant`` recomputes
the claim from scratch after each step.
"""

from __future__ import annotations

import random

from swarmhub.engine.picker import Block, PiecePicker

BS = 16384


def _picker(n: int = 2, blocks: int = 2) -> PiecePicker:
    return PiecePicker(n, blocks * BS, n * blocks * BS, rng=random.Random(1), random_first=0)


def test_a_lone_peer_in_end_game_is_not_rescanned_until_something_changes() -> None:
    p = _picker()
    p.peer_has_all("a")
    got = p.pick("a", 4)
    assert len(got) == 4 and p.in_endgame
    assert p.pick("a", 4) == []  # all its own: nothing to duplicate
    p.check_invariant()
    p.block_received("a", got[0])  # a block arriving gives it nothing new
    p.check_invariant()
    assert p.pick("a", 4) == []
    p.request_failed("a", got[1])  # back in the pool: picked again at once
    p.check_invariant()
    assert p.pick("a", 4) == [got[1]]
    p.check_invariant()


def test_another_peers_requests_become_duplicates_for_a_dry_peer() -> None:
    p = _picker(n=3)
    p.peer_has("a", 0)
    p.peer_has("b", 0)
    p.peer_has("b", 1)
    a = p.pick("a", 2)  # piece 0
    p.peer_has("c", 2)
    p.pick("c", 2)  # piece 2: only c has it
    assert p.in_endgame is False  # piece 1 is untouched and b has it
    assert p.pick("a", 2) == []  # nothing untouched for a, not end-game yet
    b = p.pick("b", 4)  # piece 1's two blocks, then duplicates of a's piece 0
    assert {x.index for x in b} == {0, 1} and p.in_endgame
    p.check_invariant()
    assert p.pick("a", 4) == []  # a lacks piece 1; piece 0 already has two requesters
    p.check_invariant()
    for blk in a:  # duplicates go only to a peer with nothing outstanding (strict end-game)
        p.block_received("a", blk)
    p.check_invariant()
    assert p.pick("a", 4) == []  # idle now, but still lacks piece 1
    p.peer_has("a", 1)  # now it has piece 1: b's requests there are fair game
    p.check_invariant()
    assert {x.index for x in p.pick("a", 4)} == {1}
    p.check_invariant()
    assert a


def test_a_request_withdrawn_by_another_peer_clears_the_mark() -> None:
    p = _picker(n=1)
    p.peer_has_all("a")
    p.peer_has_all("b")
    a = p.pick("a", 2)
    b = p.pick("b", 2)  # end-game duplicates of both
    assert sorted(b) == sorted(a)
    assert p.pick("b", 2) == [] and p.pick("a", 2) == []
    p.check_invariant()
    p.peer_choked("a")  # a's requests void: b holds both alone, a may duplicate them
    p.check_invariant()
    assert sorted(p.pick("a", 2)) == sorted(a)
    p.check_invariant()


def test_a_priority_change_clears_the_mark() -> None:
    p = _picker()
    p.peer_has_all("a")
    p.set_piece_priority(1, 0)
    got = p.pick("a", 4)
    assert {x.index for x in got} == {0}
    p.peer_has_all("b")
    p.set_piece_priority(1, 1)
    p.pick("b", 2)  # piece 1, fresh
    p.set_piece_priority(1, 0)
    assert p.pick("a", 4) == []  # piece 1 skipped; piece 0 is its own
    p.check_invariant()
    for blk in got:  # duplicates go only to a peer with nothing outstanding
        p.block_received("a", blk)
    assert p.pick("a", 4) == []  # idle, and piece 1 still skipped
    p.check_invariant()
    p.set_piece_priority(1, 1)
    p.check_invariant()
    assert [x for x in p.pick("a", 4) if x.index == 1] == [Block(1, 0, BS), Block(1, BS, BS)]
    p.check_invariant()


def test_random_swarm_events_never_leave_a_stale_mark() -> None:
    """Picks, arrivals, timeouts, chokes, Haves, priority changes and departures in a
    random order: after each one the mark must match a scan from scratch."""
    rng = random.Random(11)
    for _ in range(40):
        n = rng.randrange(1, 4)
        p = _picker(n=n, blocks=rng.randrange(1, 4))
        peers = ["a", "b", "c"]
        for _ in range(120):
            peer = rng.choice(peers)
            op = rng.randrange(8)
            if op == 0:
                p.peer_has(peer, rng.randrange(n))
            elif op == 1 and rng.random() < 0.3:
                p.peer_has_all(peer)
            elif op == 1:
                p.peer_has_bitfield(peer, bytes(rng.randrange(2) for _ in range(n)))
            elif op in (2, 3):
                p.pick(peer, rng.randrange(1, 6))
            elif op == 4:
                out = p.outstanding(peer)
                if out:
                    block = rng.choice(out)
                    if p.block_received(peer, block).piece_complete:
                        if rng.random() < 0.8:
                            p.piece_passed(block.index)
                        else:
                            p.piece_failed(block.index)
            elif op == 5:
                out = p.outstanding(peer)
                if out:
                    p.request_failed(peer, rng.choice(out))
            elif op == 6:
                p.set_piece_priority(rng.randrange(n), rng.choice([0, 1, 2]))
            elif rng.random() < 0.5:
                p.peer_choked(peer)
            else:
                p.peer_gone(peer)
            p.check_invariant()
