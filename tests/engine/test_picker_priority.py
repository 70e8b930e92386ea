"""Piece priorities and the sequential window, with state drawn as strings.

``make_picker(avail="2213", have=" *  ", prio="1017")``: one character per piece.
``avail`` digit k means peers ``p0 .. p{k-1}`` have that piece; ``have`` ``*`` means we
have it; ``prio`` is each piece's priority (0 skip, 1 normal, up to 7 sooner).
"""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest

from swarmhub.engine.picker import Block, PiecePicker
from swarmhub.errors import LocalProtocolError

BS = 16384


def make_picker(avail: str, have: str = "", prio: str = "", *, blocks_per_piece: int = 4,
                seed: int = 0, **kw: object) -> PiecePicker:
    n = len(avail)
    picker = PiecePicker(n, blocks_per_piece * BS, n * blocks_per_piece * BS,
                         rng=random.Random(seed), random_first=0,
                         **kw)  # type: ignore[arg-type]
    if prio:
        picker.set_priorities(int(c) for c in prio)
    for i, ch in enumerate(avail):
        for k in range(int(ch)):
            picker.peer_has(f"p{k}", i)
    for i, ch in enumerate(have.ljust(n)):
        if ch == "*":
            picker.we_have(i)
    picker.check_invariant()
    return picker


def new_pieces(picker: PiecePicker, peer: Hashable, times: int) -> list[int]:
    """The order in which ``peer`` gets whole new pieces (4 blocks per pick)."""
    out = []
    for _ in range(times):
        blocks = picker.pick(peer, 4)
        if not blocks:
            break
        assert len({b.index for b in blocks}) == 1
        out.append(blocks[0].index)
        picker.check_invariant()
    return out


def finish(picker: PiecePicker, peer: Hashable, index: int) -> None:
    for j in range(picker.num_blocks(index)):
        picker.block_received(peer, Block(index, j * BS, BS))
    picker.piece_passed(index)


# ------------------------------------------------------------------ priority 0


@pytest.mark.parametrize("seed", range(8))
def test_priority_zero_is_never_picked(seed: int) -> None:
    picker = make_picker("2222222", prio="0101100", seed=seed)
    got = new_pieces(picker, "p0", 10)
    assert sorted(got) == [1, 3, 4]
    assert picker.in_endgame  # priority-0 pieces do not hold end-game back
    assert {b.index for b in picker.pick("p1", 100)} == {1, 3, 4}  # duplicates only
    for i in got:
        finish(picker, "p0", i)
    assert picker.is_finished and not picker.is_complete
    assert picker.wanted_missing == 0 and picker.pick("p0", 100) == []
    picker.check_invariant()


def test_priority_zero_is_never_picked_from_a_seed() -> None:
    picker = make_picker("0000", prio="0010", seed=3)
    picker.peer_has_all("seed")
    assert new_pieces(picker, "seed", 5) == [2]


def test_a_peer_with_only_skipped_pieces_is_not_interesting() -> None:
    picker = make_picker("2100", prio="0111")
    assert not picker.interesting("p1")  # p1 has piece 0 only, which we skip
    assert picker.interesting("p0")
    picker.set_piece_priority(0, 1)
    assert picker.interesting("p1")
    picker.check_invariant()


def test_bitfield_interest_counts_wanted_pieces_only() -> None:
    picker = make_picker("0000", prio="1100")
    picker.peer_has_bitfield("x", bytearray([0, 0, 1, 1]))
    assert not picker.interesting("x")
    picker.peer_has_bitfield("y", bytearray([0, 1, 1, 0]))
    assert picker.interesting("y")
    picker.check_invariant()


def test_skipping_a_piece_in_progress_stops_picking_its_blocks() -> None:
    picker = make_picker("1111", prio="1000")
    assert picker.pick("p0", 2) == [Block(0, 0, BS), Block(0, BS, BS)]
    picker.set_piece_priority(0, 0)
    assert picker.pick("p0", 10) == []
    picker.set_piece_priority(0, 1)
    assert picker.pick("p0", 10) == [Block(0, 2 * BS, BS), Block(0, 3 * BS, BS)]
    picker.check_invariant()


def test_end_game_ignores_skipped_pieces() -> None:
    picker = make_picker("1111", prio="1100")
    picker.peer_has_all("s")
    picker.pick("p0", 8)
    assert picker.in_endgame
    assert {b.index for b in picker.pick("s", 8)} == {0, 1}  # duplicates, not piece 2/3


def test_priorities_are_checked() -> None:
    picker = make_picker("11")
    with pytest.raises(LocalProtocolError):
        picker.set_piece_priority(0, 8)
    with pytest.raises(LocalProtocolError):
        picker.set_priorities([1])


# ------------------------------------------------------------------ higher priorities


def test_highest_priority_first_then_rarest_among_it() -> None:
    #                       piece: 0123456
    picker = make_picker("3332111", prio="1177111")
    order = new_pieces(picker, "p0", 3)
    assert order[:2] == [3, 2]  # both priority 7; piece 3 is rarer
    assert order[2] in (4, 5, 6)  # then rarest-first among the normal ones


def test_boosted_ties_go_to_the_lowest_index() -> None:
    picker = make_picker("2222", prio="1555")
    assert new_pieces(picker, "p0", 4) == [1, 2, 3, 0]


# ------------------------------------------------------------------ sequential


def test_sequential_takes_critical_pieces_in_order_then_rarest_in_window() -> None:
    #                       piece: 01234567
    picker = make_picker("33312111", sequential=True, critical=2, window=5)
    order = new_pieces(picker, "p0", 8)
    # 0, 1: critical, in order; 3, 4, 2: the window (pieces 0-4) rarest first;
    # then the rest (outside the window) rarest-first
    assert order[:5] == [0, 1, 3, 4, 2]
    assert sorted(order[5:]) == [5, 6, 7]


def test_sequential_window_slides_with_the_first_missing_piece() -> None:
    picker = make_picker("1111111111", "***", sequential=True, critical=2, window=3)
    assert new_pieces(picker, "p0", 3) == [3, 4, 5]


def test_sequential_skips_priority_zero_pieces() -> None:
    picker = make_picker("111111", prio="010101", sequential=True, critical=3, window=3)
    assert new_pieces(picker, "p0", 6) == [1, 3, 5]


def test_sequential_can_be_switched_on_later() -> None:
    picker = make_picker("12345678", seed=1)
    picker.set_sequential(True)
    assert new_pieces(picker, "p0", 2) == [0, 1]
    picker.set_sequential(False)
    assert picker.sequential is False
    assert new_pieces(picker, "p0", 1) == [2]  # rarest again (piece 2 has 3 peers)


def test_a_seek_boosts_pieces_past_the_window() -> None:
    picker = make_picker("1" * 20, sequential=True, critical=2, window=4)
    for i in (17, 18):
        picker.set_piece_priority(i, 7)
    assert new_pieces(picker, "p0", 3) == [17, 18, 0]
    picker.check_invariant()


@pytest.mark.parametrize("seed", range(4))
def test_mostly_skipped_torrents_pick_rarest_among_the_wanted_few(seed: int) -> None:
    # 40 pieces, 3 wanted: rarest-first scans the wanted list, not the buckets
    avail = ["3"] * 40
    avail[25] = "1"
    prio = ["0"] * 40
    for i in (5, 25, 35):
        prio[i] = "1"
    picker = make_picker("".join(avail), prio="".join(prio), seed=seed)
    order = new_pieces(picker, "p0", 5)
    assert order[0] == 25 and sorted(order) == [5, 25, 35]
    picker.check_invariant()


def test_mostly_skipped_from_a_seed() -> None:
    picker = make_picker("0" * 20, prio="0" * 17 + "111", seed=5)
    picker.peer_has_all("s")
    assert sorted(new_pieces(picker, "s", 10)) == [17, 18, 19]
