"""The picker's run-at-a-time paths: ``pick`` takes runs of free blocks (slices, not a
search per block) and ``blocks_received`` handles a read's blocks in one call. Both must
give exactly what the block-at-a-time rules give: free blocks only, in order, the last
block of a short piece short, and the same news (piece complete, peers to cancel)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.engine.picker import Block, PiecePicker

BS = 16384


def picker(pads: list[tuple[int, int]] | None = None) -> PiecePicker:
    # 3 pieces of 8 blocks, the last one 2.5 blocks long
    p = PiecePicker(3, 8 * BS, 16 * BS + 2 * BS + 100, rng=random.Random(1),
                    pad_blocks=pads or [], random_first=0)
    p.peer_has_all("a")
    p.peer_has_all("b")
    return p


def test_a_pick_skips_pads_requested_and_received_blocks_and_keeps_order() -> None:
    p = picker(pads=[(0, 3 * BS)])
    p.set_sequential(True)
    first = p.pick("a", 2)
    assert first == [Block(0, 0, BS), Block(0, BS, BS)]
    assert p.block_received("b", Block(0, 5 * BS, BS)).piece_complete is False  # unasked
    p.request_failed("a", first[1])  # back to free, in the middle
    got = p.pick("b", 16)  # every free block (more would be end-game duplicates)
    want_0 = [Block(0, b * BS, BS) for b in (1, 2, 4, 6, 7)]
    assert got[:5] == want_0
    assert got[5:13] == [Block(1, b * BS, BS) for b in range(8)]
    assert got[13:] == [Block(2, 0, BS), Block(2, BS, BS), Block(2, 2 * BS, 100)]
    assert set(p.outstanding("b")) == set(got)
    p.check_invariant()


def test_a_run_of_received_blocks_gives_the_news_one_at_a_time_gives() -> None:
    rng = random.Random(7)
    for _ in range(20):
        one, run = picker(), picker()
        for q in (one, run):
            q.set_sequential(True)
        asked = one.pick("a", 30)
        assert run.pick("a", 30) == asked
        # end-game-like duplicates: "b" asked for some of the same blocks
        dup = rng.sample(asked, 5)
        for q in (one, run):
            reqs = q._reqs.setdefault("b", {})
            for blk in dup:
                j = blk.begin // BS
                q._downloading[blk.index].requesters[j].append("b")
                reqs[blk] = None
        got = asked[:]
        rng.shuffle(got)
        got += [Block(0, 0, BS), Block(9, 0, BS), Block(0, 3, BS)]  # a repeat, bad geometry
        singles = [(b, r) for b in got
                   if (r := one.block_received("a", b)).piece_complete or r.cancel_peers]
        assert run.blocks_received("a", got) == singles
        assert [run.have(i) for i in range(3)] == [one.have(i) for i in range(3)]
        assert run.outstanding("b") == one.outstanding("b")
        run.check_invariant()
        one.check_invariant()


def test_requester_lists_shared_by_a_pick_are_never_changed_for_other_blocks() -> None:
    """``_take`` gives the blocks of one run the same requester list; end-game duplicates
    and withdrawn requests must change only their own block's requesters."""
    p = PiecePicker(1, 4 * BS, 4 * BS, rng=random.Random(1), random_first=0)
    p.peer_has_all("a")
    p.peer_has_all("b")
    mine = p.pick("a", 4)
    assert len(mine) == 4 and p.in_endgame
    dup = p.pick("b", 1)  # end-game: "b" asks for one of "a"'s blocks too
    assert len(dup) == 1 and dup[0] in mine
    assert p.requesters(0) == {"a", "b"}
    p.check_invariant()
    p.request_failed("a", mine[-1] if mine[-1] != dup[0] else mine[-2])
    p.peer_choked("b")  # "b"'s duplicate is withdrawn, "a" still has it
    p.check_invariant()
    assert set(p.outstanding("a")) == set(mine) - {mine[-1] if mine[-1] != dup[0] else mine[-2]}
    assert p.outstanding("b") == []
    assert p.requesters(0) == {"a"}
    for blk in p.outstanding("a"):
        assert p.block_received("a", blk).cancel_peers == ()
    p.check_invariant()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_pick_takes_the_lowest_free_blocks_of_each_piece_whatever_came_before(
    data: st.DataObject,
) -> None:
    """``_take`` finds the free blocks from a per-piece tail (no search) when every free
    block is in it, and searches otherwise: either way each piece gives its free blocks
    lowest first, as a search from block 0 would, after any mix of picks, failed and
    withdrawn requests and received blocks (check_invariant checks the tail)."""
    pads = data.draw(st.sampled_from([[], [(0, 3 * BS)], [(1, 6 * BS), (1, 7 * BS)]]))
    p = picker(pads=pads)
    p.peer_has_all("c")
    for _ in range(data.draw(st.integers(1, 30))):
        op = data.draw(st.sampled_from(["pick", "pick", "fail", "recv", "choke"]))
        peer = data.draw(st.sampled_from(["a", "b", "c"]))
        out = p.outstanding(peer)
        if op == "pick":
            before = {i: bytes(piece.blocks) for i, piece in p._downloading.items()}
            got = p.pick(peer, data.draw(st.integers(1, 12)))
            for index in {blk.index for blk in got}:
                js = [blk.begin // BS for blk in got if blk.index == index]
                pad = p._pad.get(index, frozenset())  # a new piece: all free but pads
                states = before.get(index, bytes(2 if j in pad else 0 for j in range(8)))
                free = [j for j, s in enumerate(states) if s == 0]
                if not p.in_endgame:  # (end-game duplicates are requested blocks)
                    assert js == free[: len(js)]
        elif op == "fail" and out:
            p.request_failed(peer, data.draw(st.sampled_from(out)))
        elif op == "recv" and out:
            p.blocks_received(peer, data.draw(st.lists(st.sampled_from(out), max_size=4)))
        elif op == "choke":
            p.peer_choked(peer)
        p.check_invariant()


def test_a_pick_across_pieces_in_progress_skips_what_the_peer_lacks_and_finishes_each() -> None:
    # 4 pieces of 2 blocks, each in progress with one block requested from "a" (in this
    # order); "c" has pieces 1 and 3 only: it gets their free blocks, each piece in turn
    # leaving the in-progress set as its last free block goes (pick walks that set live)
    p = PiecePicker(4, 2 * BS, 8 * BS, rng=random.Random(1), random_first=0)
    p.peer_has_all("a")
    for i in range(4):
        assert p.pick_allowed("a", 1, [i]) == [Block(i, 0, BS)]
    p.peer_has_bitfield("c", bytes([0, 1, 0, 1]))
    assert p.pick("c", 3) == [Block(1, BS, BS), Block(3, BS, BS)]
    assert p.pick("a", 2) == [Block(0, BS, BS), Block(2, BS, BS)]
    p.check_invariant()
